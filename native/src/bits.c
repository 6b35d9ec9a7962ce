/* bits.c - pack/unpack, xor, popcount, parity and gather over bit-packed uint64 arrays. */
#include "qkd_bits.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

size_t qkd_words_for_bits(size_t nbits)
{
    return nbits / 64 + (nbits % 64 != 0);
}

uint32_t qkd_cpu_features(void)
{
    uint32_t features = 0;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("popcnt"))
        features |= QKD_CPU_POPCNT;
    if (__builtin_cpu_supports("avx2"))
        features |= QKD_CPU_AVX2;
    if (__builtin_cpu_supports("avx512f"))
        features |= QKD_CPU_AVX512F;
    if (__builtin_cpu_supports("bmi2"))
        features |= QKD_CPU_BMI2;
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_PCLMUL))
        features |= QKD_CPU_PCLMUL;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 10)))
        features |= QKD_CPU_VPCLMUL;
#endif
    return features;
}

int qkd_bits_pack(const uint8_t *bits, size_t nbits, uint64_t *out, size_t out_words)
{
    size_t nwords = qkd_words_for_bits(nbits);
    if (out_words < nwords)
        return QKD_ENOMEM;
    size_t full = nbits / 64;
    for (size_t w = 0; w < full; w++) {
        const uint8_t *src = bits + w * 64;
        uint64_t word = 0;
        for (unsigned j = 0; j < 64; j++)
            word |= (uint64_t)(src[j] & 1u) << j;
        out[w] = word;
    }
    if (full < nwords) {
        uint64_t word = 0;
        for (size_t j = 0; j < nbits - full * 64; j++)
            word |= (uint64_t)(bits[full * 64 + j] & 1u) << j;
        out[full] = word;
    }
    for (size_t w = nwords; w < out_words; w++)
        out[w] = 0;
    return QKD_OK;
}

int qkd_bits_unpack(const uint64_t *words, size_t nwords, size_t nbits, uint8_t *out, size_t out_len)
{
    if (qkd_words_for_bits(nbits) > nwords)
        return QKD_ERANGE;
    if (out_len < nbits)
        return QKD_ENOMEM;
    for (size_t i = 0; i < nbits; i++)
        out[i] = (uint8_t)qkd_bit_get(words, i);
    return QKD_OK;
}

int qkd_bits_xor(uint64_t *dst, const uint64_t *src, size_t nwords)
{
    for (size_t w = 0; w < nwords; w++)
        dst[w] ^= src[w];
    return QKD_OK;
}

/* Mask of bits [lo, 64) in a word; lo in [0, 63]. */
static inline uint64_t mask_from(unsigned lo)
{
    return ~(uint64_t)0 << lo;
}

/* Mask of bits [0, hi) in a word; hi in [1, 64]. */
static inline uint64_t mask_below(unsigned hi)
{
    return hi == 64 ? ~(uint64_t)0 : (((uint64_t)1 << hi) - 1);
}

int64_t qkd_bits_popcount_range(const uint64_t *words, size_t nwords, size_t start, size_t stop)
{
    if (start > stop)
        return QKD_EINVAL;
    if (stop > nwords * 64)
        return QKD_ERANGE;
    if (start == stop)
        return 0;
    size_t first = start >> 6, last = (stop - 1) >> 6;
    if (first == last) {
        uint64_t m = mask_from((unsigned)(start & 63)) & mask_below((unsigned)((stop - 1) & 63) + 1);
        return __builtin_popcountll(words[first] & m);
    }
    int64_t count = __builtin_popcountll(words[first] & mask_from((unsigned)(start & 63)));
    for (size_t w = first + 1; w < last; w++)
        count += __builtin_popcountll(words[w]);
    count += __builtin_popcountll(words[last] & mask_below((unsigned)((stop - 1) & 63) + 1));
    return count;
}

int qkd_bits_parity_range(const uint64_t *words, size_t nwords, size_t start, size_t stop)
{
    if (start > stop)
        return QKD_EINVAL;
    if (stop > nwords * 64)
        return QKD_ERANGE;
    if (start == stop)
        return 0;
    size_t first = start >> 6, last = (stop - 1) >> 6;
    uint64_t acc;
    if (first == last) {
        acc = words[first] & mask_from((unsigned)(start & 63)) & mask_below((unsigned)((stop - 1) & 63) + 1);
    } else {
        acc = words[first] & mask_from((unsigned)(start & 63));
        for (size_t w = first + 1; w < last; w++)
            acc ^= words[w];
        acc ^= words[last] & mask_below((unsigned)((stop - 1) & 63) + 1);
    }
    return __builtin_parityll(acc);
}

int qkd_bits_gather(const uint64_t *words, size_t nwords, size_t nbits,
                    const uint64_t *index, size_t nindex, uint64_t *out, size_t out_words)
{
    if (qkd_words_for_bits(nbits) > nwords)
        return QKD_ERANGE;
    if (qkd_words_for_bits(nindex) > out_words)
        return QKD_ENOMEM;
    for (size_t i = 0; i < nindex; i++)
        if (index[i] >= nbits)
            return QKD_ERANGE;
    memset(out, 0, out_words * sizeof(uint64_t));
    for (size_t i = 0; i < nindex; i++)
        out[i >> 6] |= (uint64_t)qkd_bit_get(words, (size_t)index[i]) << (i & 63);
    return QKD_OK;
}
