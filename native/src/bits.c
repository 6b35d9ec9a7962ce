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

/* The words of a non-empty bit range [start, stop): first..last, and the masks that keep the range's
 * bits in the end words (when first == last, first_mask alone covers the range). */
struct word_span {
    size_t first, last;
    uint64_t first_mask, last_mask;
};

/* QKD_OK when [start, stop) is a range of the nwords-word buffer, else QKD_EINVAL or QKD_ERANGE. */
static int check_bit_range(size_t nwords, size_t start, size_t stop)
{
    if (start > stop)
        return QKD_EINVAL;
    if (stop > nwords * 64)
        return QKD_ERANGE;
    return QKD_OK;
}

static struct word_span span_of(size_t start, size_t stop)
{
    struct word_span span = {
        .first = start >> 6,
        .last = (stop - 1) >> 6,
        .first_mask = mask_from((unsigned)(start & 63)),
        .last_mask = mask_below((unsigned)((stop - 1) & 63) + 1),
    };
    if (span.first == span.last)
        span.first_mask &= span.last_mask;
    return span;
}

int64_t qkd_bits_popcount_range(const uint64_t *words, size_t nwords, size_t start, size_t stop)
{
    int rc = check_bit_range(nwords, start, stop);
    if (rc != QKD_OK || start == stop)
        return rc;
    struct word_span span = span_of(start, stop);
    int64_t count = __builtin_popcountll(words[span.first] & span.first_mask);
    if (span.first == span.last)
        return count;
    for (size_t w = span.first + 1; w < span.last; w++)
        count += __builtin_popcountll(words[w]);
    return count + __builtin_popcountll(words[span.last] & span.last_mask);
}

int qkd_bits_parity_range(const uint64_t *words, size_t nwords, size_t start, size_t stop)
{
    int rc = check_bit_range(nwords, start, stop);
    if (rc != QKD_OK || start == stop)
        return rc;
    struct word_span span = span_of(start, stop);
    uint64_t acc = words[span.first] & span.first_mask;
    if (span.first != span.last) {
        for (size_t w = span.first + 1; w < span.last; w++)
            acc ^= words[w];
        acc ^= words[span.last] & span.last_mask;
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

/* Rows of the deal: row j starts at j * base + min(j, extra) and holds base + (j < extra) bytes. Tiles of
 * DEAL_TILE rows by DEAL_TILE positions keep both the strided side and the row side within a few cache
 * lines per step. The frame side is bytes, or for the undeal bits of packed words (qkd_bits_undeal; the packed
 * deal is deal_bits_blocked). */
#define DEAL_TILE 64

enum deal_mode { DEAL_BYTES, UNDEAL_BYTES, UNDEAL_BITS };

static int deal_blocked(const void *in, size_t n, size_t k, void *out, enum deal_mode mode)
{
    if (k == 0)
        return QKD_EINVAL;
    const uint8_t *in_bytes = in;
    uint8_t *out_bytes = out;
    uint64_t *out_words = out;
    size_t base = n / k, extra = n % k, positions = base + (extra > 0);
    for (size_t t0 = 0; t0 < positions; t0 += DEAL_TILE) {
        size_t t1 = t0 + DEAL_TILE < positions ? t0 + DEAL_TILE : positions;
        for (size_t j0 = 0; j0 < k; j0 += DEAL_TILE) {
            size_t j1 = j0 + DEAL_TILE < k ? j0 + DEAL_TILE : k;
            for (size_t j = j0; j < j1; j++) {
                size_t row = j * base + (j < extra ? j : extra);
                size_t len = base + (j < extra);
                size_t stop = t1 < len ? t1 : len;
                switch (mode) {
                case DEAL_BYTES:
                    for (size_t t = t0; t < stop; t++)
                        out_bytes[row + t] = in_bytes[t * k + j];
                    break;
                case UNDEAL_BYTES:
                    for (size_t t = t0; t < stop; t++)
                        out_bytes[t * k + j] = in_bytes[row + t];
                    break;
                case UNDEAL_BITS:
                    for (size_t t = t0; t < stop; t++) {
                        size_t i = t * k + j;
                        out_words[i >> 6] |= (uint64_t)(in_bytes[row + t] & 1u) << (i & 63);
                    }
                    break;
                }
            }
        }
    }
    return QKD_OK;
}

int qkd_bytes_deal(const uint8_t *in, size_t n, size_t k, uint8_t *out)
{
    return deal_blocked(in, n, k, out, DEAL_BYTES);
}

int qkd_bytes_undeal(const uint8_t *in, size_t n, size_t k, uint8_t *out)
{
    return deal_blocked(in, n, k, out, UNDEAL_BYTES);
}

/* The bit-packed deal by tiles as deal_blocked: a tile's DEAL_TILE rows of position t are the DEAL_TILE bits from
 * t * k + j0 on, read once as one 64-bit window (two words), then spread over the rows. */
static void deal_bits_blocked(const uint64_t *words, size_t nwords, size_t n, size_t k, uint8_t *out)
{
    size_t base = n / k, extra = n % k, positions = base + (extra > 0);
    uint64_t window[DEAL_TILE];
    for (size_t t0 = 0; t0 < positions; t0 += DEAL_TILE) {
        size_t t1 = t0 + DEAL_TILE < positions ? t0 + DEAL_TILE : positions;
        for (size_t j0 = 0; j0 < k; j0 += DEAL_TILE) {
            size_t j1 = j0 + DEAL_TILE < k ? j0 + DEAL_TILE : k;
            for (size_t t = t0; t < t1; t++) {
                size_t i = t * k + j0, w = i >> 6, shift = i & 63;
                uint64_t bits = 0;
                if (i < n) {    /* bits past n in the window are never dealt (below, t < len) */
                    bits = words[w] >> shift;
                    if (shift && w + 1 < nwords)
                        bits |= words[w + 1] << (64 - shift);
                }
                window[t - t0] = bits;
            }
            for (size_t j = j0; j < j1; j++) {
                size_t row = j * base + (j < extra ? j : extra);
                size_t len = base + (j < extra);
                size_t stop = t1 < len ? t1 : len;
                for (size_t t = t0; t < stop; t++)
                    out[row + t] = (uint8_t)((window[t - t0] >> (j - j0)) & 1u);
            }
        }
    }
}

int qkd_bits_deal(const uint64_t *words, size_t nwords, size_t n, size_t k, uint8_t *out, size_t out_len)
{
    if (k == 0)
        return QKD_EINVAL;
    if (qkd_words_for_bits(n) > nwords)
        return QKD_ERANGE;
    if (out_len < n)
        return QKD_ENOMEM;
    deal_bits_blocked(words, nwords, n, k, out);
    return QKD_OK;
}

int qkd_bits_undeal(const uint8_t *in, size_t n, size_t k, uint64_t *out, size_t out_words)
{
    if (k == 0)
        return QKD_EINVAL;
    if (qkd_words_for_bits(n) > out_words)
        return QKD_ENOMEM;
    memset(out, 0, out_words * sizeof(uint64_t));
    return deal_blocked(in, n, k, out, UNDEAL_BITS);
}
