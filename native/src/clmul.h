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

/* Portable carry-less product of a and b: bits [0,64) in *lo, [64,128) in *hi. A 4-bit window
 * over b (16-entry table of multiples of a), then a fix-up for the top 3 bits of a lost by shifting. */
static inline void qkd_clmul64_soft(uint64_t a, uint64_t b, uint64_t *lo, uint64_t *hi)
{
    uint64_t table[16];
    table[0] = 0;
    for (unsigned i = 1; i < 16; i++)
        table[i] = (i & 1 ? table[i - 1] ^ a : table[i >> 1] << 1);
    /* table[i] is the low 64 bits of a * i; table[i] for odd i built from table[i-1] = a*(i-1). */
    uint64_t l = 0, h = 0;
    for (int shift = 60; shift >= 0; shift -= 4) {
        h = (h << 4) | (l >> 60);
        l <<= 4;
        l ^= table[(b >> shift) & 15];
    }
    /* Bits of a*i that overflowed 64 bits inside the table (a's top 3 bits times i's high bits). */
    for (unsigned bit = 1; bit < 4; bit++) {
        if (!((a >> (64 - bit)) & 1))
            continue;
        /* a has bit (64-bit) set: for every window value with bit `bit` or higher set, the product
         * spills; recompute the spill directly: sum over b's bits j with (j % 4) >= bit of
         * 2^(64-bit+j) contributes to hi at j - bit. */
        for (unsigned j = bit; j < 64; j++)
            if ((j & 3) >= bit && ((b >> j) & 1))
                h ^= (uint64_t)1 << (j - bit);
    }
    *lo = l;
    *hi = h;
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
