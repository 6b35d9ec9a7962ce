/* qkd_bits.h - bit-packed arrays: the buffer layout every qkdd kernel shares.
 *
 * Layout: bit i of an array lives in word i / 64 at position i % 64 (least significant bit first),
 * in little-endian uint64_t words. Unused high bits of the last word are zero on output and ignored
 * on input. Every buffer is passed with its length; no function allocates or keeps state.
 */
#ifndef QKD_BITS_H
#define QKD_BITS_H

#include <stddef.h>
#include <stdint.h>

/* cffi:begin */
#define QKD_OK 0
#define QKD_EINVAL -1     /* a length or index argument is inconsistent */
#define QKD_ERANGE -2     /* an index or range lies outside the buffer */
#define QKD_ENOMEM -3     /* a caller-provided scratch buffer is too small */
#define QKD_EPROTO -4     /* a peer message is malformed or out of sequence */

#define QKD_CPU_POPCNT 1
#define QKD_CPU_AVX2 2
#define QKD_CPU_AVX512F 4
#define QKD_CPU_PCLMUL 8
#define QKD_CPU_VPCLMUL 16
#define QKD_CPU_BMI2 32

size_t qkd_words_for_bits(size_t nbits);
uint32_t qkd_cpu_features(void);

int qkd_bits_pack(const uint8_t *bits, size_t nbits, uint64_t *out, size_t out_words);
int qkd_bits_unpack(const uint64_t *words, size_t nwords, size_t nbits, uint8_t *out, size_t out_len);
int qkd_bits_xor(uint64_t *dst, const uint64_t *src, size_t nwords);
int64_t qkd_bits_popcount_range(const uint64_t *words, size_t nwords, size_t start, size_t stop);
int qkd_bits_parity_range(const uint64_t *words, size_t nwords, size_t start, size_t stop);
int qkd_bits_gather(const uint64_t *words, size_t nwords, size_t nbits,
                    const uint64_t *index, size_t nindex, uint64_t *out, size_t out_words);
/* Deal n bytes round robin to k rows, written one row after the other: row j holds in[j], in[j + k],
 * in[j + 2k], ... (rows j < n % k one byte longer). qkd_undeal is the inverse. In and out must not
 * overlap; k >= 1 (else QKD_EINVAL). Blocked, so that neither side is walked with a stride of k. */
int qkd_bytes_deal(const uint8_t *in, size_t n, size_t k, uint8_t *out);
int qkd_bytes_undeal(const uint8_t *in, size_t n, size_t k, uint8_t *out);
/* The same deal with the frame side bit-packed: qkd_bits_deal deals the first n bits of words (0/1 bytes out,
 * out_len >= n), qkd_bits_undeal packs the low bits of n dealt bytes back in frame order into out (all
 * out_words written: bits past n zero). No frame-sized unpacked copy on either side. */
int qkd_bits_deal(const uint64_t *words, size_t nwords, size_t n, size_t k, uint8_t *out, size_t out_len);
int qkd_bits_undeal(const uint8_t *in, size_t n, size_t k, uint64_t *out, size_t out_words);
/* cffi:end */

/* Inline helpers for other kernels (not exported to Python). */
static inline int qkd_bit_get(const uint64_t *words, size_t i)
{
    return (int)((words[i >> 6] >> (i & 63)) & 1u);
}

static inline void qkd_bit_flip(uint64_t *words, size_t i)
{
    words[i >> 6] ^= (uint64_t)1 << (i & 63);
}

static inline void qkd_bit_set(uint64_t *words, size_t i, int value)
{
    uint64_t mask = (uint64_t)1 << (i & 63);
    if (value)
        words[i >> 6] |= mask;
    else
        words[i >> 6] &= ~mask;
}

#endif
