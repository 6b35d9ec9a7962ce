/* hash.c - GF(2^64) polynomial hash (Horner) of a bit-packed frame, PCLMUL or portable multiply. */
#include "qkd_hash.h"

#include "clmul.h"
#include "qkd_bits.h"

/* Field polynomial x^64 + x^4 + x^3 + x + 1, irreducible: the lowest-weight degree-64 entry of Seroussi,
 * "Table of low-weight binary irreducible polynomials" (HP Labs HPL-98-135, 1998), and the R_64 constant
 * of NIST SP 800-38B (CMAC) section 5.3. So x^64 = x^4 + x^3 + x + 1. */
#define GF64_POLY_LOW 0x1Bull

/* Reduce hi * x^64 + lo: hi * x^64 = hi * 0x1B; hi * 0x1B has at most 68 bits, its top 4 bits fold
 * once more (and 0x1B * (4 bits) fits in 64 bits). */
static inline uint64_t gf64_reduce(uint64_t lo, uint64_t hi)
{
    uint64_t top = hi >> 60; /* bits of hi * 0x1B that pass 2^64: from hi's top 4 bits times x^4 */
    uint64_t fold = hi ^ (hi << 1) ^ (hi << 3) ^ (hi << 4);
    uint64_t over = (hi >> 63) ^ (hi >> 61) ^ top; /* (hi*x)>>64, (hi*x^3)>>64, (hi*x^4)>>64 */
    fold ^= over ^ (over << 1) ^ (over << 3) ^ (over << 4);
    return lo ^ fold;
}

static uint64_t gf64_mul_soft(uint64_t a, uint64_t b)
{
    uint64_t lo, hi;
    qkd_clmul64_soft(a, b, &lo, &hi);
    return gf64_reduce(lo, hi);
}

static uint64_t horner_soft(const uint64_t *frame, size_t full, uint64_t last, int has_last, uint64_t n_bits,
                            uint64_t key)
{
    uint64_t acc = 0;
    for (size_t i = 0; i < full; i++)
        acc = gf64_mul_soft(acc ^ frame[i], key);
    if (has_last)
        acc = gf64_mul_soft(acc ^ last, key);
    return gf64_mul_soft(acc ^ n_bits, key);
}

#ifdef QKD_HAVE_X86
__attribute__((target("pclmul,sse4.1"))) static inline uint64_t gf64_mul_pclmul(uint64_t a, uint64_t b)
{
    uint64_t lo, hi;
    qkd_clmul64_pclmul(a, b, &lo, &hi);
    return gf64_reduce(lo, hi);
}

__attribute__((target("pclmul,sse4.1"))) static uint64_t horner_pclmul(const uint64_t *frame, size_t full,
                                                                       uint64_t last, int has_last,
                                                                       uint64_t n_bits, uint64_t key)
{
    uint64_t acc = 0;
    for (size_t i = 0; i < full; i++)
        acc = gf64_mul_pclmul(acc ^ frame[i], key);
    if (has_last)
        acc = gf64_mul_pclmul(acc ^ last, key);
    return gf64_mul_pclmul(acc ^ n_bits, key);
}
#endif

uint64_t qkd_gf64_mul(uint64_t a, uint64_t b, uint32_t features)
{
#ifdef QKD_HAVE_X86
    if (features & QKD_CPU_PCLMUL)
        return gf64_mul_pclmul(a, b);
#endif
    return gf64_mul_soft(a, b);
}

int qkd_hash_poly64(const uint64_t *frame, size_t frame_words, size_t n_bits, const uint64_t *keys, size_t nkeys,
                    uint64_t *tags, size_t tags_len, uint32_t features)
{
    if (nkeys == 0 || nkeys > QKD_HASH_MAX_KEYS)
        return QKD_EINVAL;
    if (frame_words < qkd_words_for_bits(n_bits))
        return QKD_ERANGE;
    if (tags_len < nkeys)
        return QKD_ENOMEM;
    size_t full = n_bits / 64;
    int has_last = n_bits % 64 != 0;
    uint64_t last = has_last ? frame[full] & (((uint64_t)1 << (n_bits % 64)) - 1) : 0;
    for (size_t k = 0; k < nkeys; k++) {
#ifdef QKD_HAVE_X86
        if (features & QKD_CPU_PCLMUL) {
            tags[k] = horner_pclmul(frame, full, last, has_last, (uint64_t)n_bits, keys[k]);
            continue;
        }
#endif
        tags[k] = horner_soft(frame, full, last, has_last, (uint64_t)n_bits, keys[k]);
    }
    return QKD_OK;
}
