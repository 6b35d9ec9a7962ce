/* qkd_toeplitz_fft.h - Toeplitz hashing in O(n log^2 n) word operations by an additive FFT over GF(2^64),
 * for large blocks (n in the tens of millions of bits), bit-exact with qkd_toeplitz_hash (same seed
 * convention, see qkd_toeplitz.h). Needs the PCLMULQDQ instruction: without it the call returns
 * QKD_EINVAL and the caller keeps to qkd_toeplitz_hash. The method is described in toeplitz_fft.c.
 */
#ifndef QKD_TOEPLITZ_FFT_H
#define QKD_TOEPLITZ_FFT_H

#include <stddef.h>
#include <stdint.h>

/* cffi:begin */
/* The transform's length, at most 2^25 points of 32 bits: m + 2b up to 2^30 bits for input blocks of b = n / r bits
 * (1 <= r <= 16; toeplitz_fft.c, step 4). */
#define QKD_TOEPLITZ_FFT_MAX_LOG 25

/* Words of scratch qkd_toeplitz_hash_fft needs; 0 if the sizes are invalid or too large for the transform. */
size_t qkd_toeplitz_fft_scratch_words(size_t n_bits, size_t m_bits);

/* out[0, m) = T(seed) x, the same bits as qkd_toeplitz_hash. features: qkd_cpu_features() or a subset;
 * QKD_CPU_PCLMUL is required. */
int qkd_toeplitz_hash_fft(const uint64_t *seed, size_t seed_words, const uint64_t *input, size_t input_words,
                          size_t n_bits, size_t m_bits, uint64_t *out, size_t out_words, uint64_t *scratch,
                          size_t scratch_words, uint32_t features);
/* cffi:end */

#endif
