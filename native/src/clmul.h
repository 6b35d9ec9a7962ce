/* clmul.h - carry-less 64x64 -> 128-bit multiplication: a portable version and a PCLMULQDQ version.
 *
 * Internal to native/src (not part of the cffi API). Callers pick the version at run time from
 * qkd_cpu_features(); the PCLMUL version is compiled with a target attribute, so the library itself
 * builds without -march flags and runs on any x86-64 (or non-x86) machine.
 */
#ifndef QKD_CLMUL_H
#define QKD_CLMUL_H

#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#define QKD_HAVE_X86 1
#include <immintrin.h>
#endif

/* Portable carry-less multiply by a fixed a: the 16 products a * w for 4-bit w, each up to 67 bits
 * (lo word, hi word). Build once per a, then qkd_clmul64_table per b: 16 windows of 4 bits. */
struct qkd_clmul_table {
    uint64_t lo[16], hi[16];
};

static inline void qkd_clmul_table_init(struct qkd_clmul_table *t, uint64_t a)
{
    t->lo[0] = t->hi[0] = 0;
    t->lo[1] = a;
    t->hi[1] = 0;
    for (unsigned w = 2; w < 16; w += 2) {
        t->lo[w] = t->lo[w / 2] << 1;
        t->hi[w] = (t->hi[w / 2] << 1) | (t->lo[w / 2] >> 63);
        t->lo[w + 1] = t->lo[w] ^ a;
        t->hi[w + 1] = t->hi[w];
    }
}

static inline void qkd_clmul64_table(const struct qkd_clmul_table *t, uint64_t b, uint64_t *lo, uint64_t *hi)
{
    uint64_t l = t->lo[b & 15], h = t->hi[b & 15];
    for (unsigned k = 4; k < 64; k += 4) {
        unsigned w = (unsigned)(b >> k) & 15u;
        l ^= t->lo[w] << k;
        h ^= (t->lo[w] >> (64 - k)) ^ (t->hi[w] << k);
    }
    *lo = l;
    *hi = h;
}

/* Portable carry-less product of a and b: bits [0,64) in *lo, [64,128) in *hi. */
static inline void qkd_clmul64_soft(uint64_t a, uint64_t b, uint64_t *lo, uint64_t *hi)
{
    struct qkd_clmul_table t;
    qkd_clmul_table_init(&t, a);
    qkd_clmul64_table(&t, b, lo, hi);
}

#ifdef QKD_HAVE_X86
__attribute__((target("pclmul,sse4.1"))) static inline void qkd_clmul64_pclmul(uint64_t a, uint64_t b, uint64_t *lo,
                                                                               uint64_t *hi)
{
    __m128i p = _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)a), _mm_cvtsi64_si128((long long)b), 0x00);
    *lo = (uint64_t)_mm_cvtsi128_si64(p);
    *hi = (uint64_t)_mm_extract_epi64(p, 1);
}
#endif

#endif
