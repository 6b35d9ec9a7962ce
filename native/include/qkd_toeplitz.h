/* qkd_toeplitz.h - Toeplitz hashing for privacy amplification, in O(n^1.58) by carry-less
 * (GF(2)[x]) Karatsuba multiplication: AVX-512 VPCLMULQDQ or PCLMULQDQ when the CPU has them,
 * portable C otherwise (the caller passes the feature bits, see qkd_cpu_features()).
 *
 * Convention (bit-exact with randextract's ToeplitzHashing, seed_mode="default"): for input bits
 * x[0..n), seed bits s[0..n+m-1) and output bits y[0..m),
 *     y[i] = XOR over j in [0, n) of  s[(i - j) mod (n + m - 1)] & x[j],
 * i.e. the m x n Toeplitz matrix T[i][j] = s[i - j] with negative indices counted from the end of
 * the seed (Python indexing): the first column is s[0..m) top to bottom, the first row is s[0]
 * followed by s[n+m-2], s[n+m-3], ... All three arrays use the qkd_bits.h layout (bit i in word
 * i/64 at position i%64); unused high bits of the inputs are ignored, those of the output are zero.
 */
#ifndef QKD_TOEPLITZ_H
#define QKD_TOEPLITZ_H

#include <stddef.h>
#include <stdint.h>

/* cffi:begin */
#define QKD_TOEPLITZ_MAX_BITS 2147483648 /* 2^31: largest n accepted (the issue asks for 2^27) */

/* Words of scratch qkd_toeplitz_hash needs for n input and m output bits; 0 if the sizes are invalid
 * (n or m zero, m > n, n > QKD_TOEPLITZ_MAX_BITS). */
size_t qkd_toeplitz_scratch_words(size_t n_bits, size_t m_bits);

/* out[0, m) = T(seed) x. features: qkd_cpu_features() or any subset of it (0 = portable code). */
int qkd_toeplitz_hash(const uint64_t *seed, size_t seed_words, const uint64_t *input, size_t input_words,
                      size_t n_bits, size_t m_bits, uint64_t *out, size_t out_words, uint64_t *scratch,
                      size_t scratch_words, uint32_t features);
/* cffi:end */

#endif
