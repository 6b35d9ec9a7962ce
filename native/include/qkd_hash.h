/* qkd_hash.h - polynomial hashing over GF(2^64) for key verification (epsilon_cor).
 *
 * The frame (n bits, qkd_bits.h layout) is cut into d = ceil(n/64) 64-bit blocks m_1..m_d (unused
 * high bits of the last one read as zero), followed by the length block m_{d+1} = n. Under key k,
 *     h_k = m_1 k^(d+1) + m_2 k^d + ... + m_{d+1} k      (Horner: acc = (acc + m_i) k)
 * in GF(2^64) = GF(2)[x] / (x^64 + x^4 + x^3 + x + 1). Two different frames of equal length collide
 * for at most d + 1 of the 2^64 keys (a nonzero polynomial of degree <= d + 1 in k), so one tag
 * collides with probability <= (d + 1) / 2^64; `nkeys` independent keys give a tag of 64 * nkeys
 * bits and probability <= ((d + 1) / 2^64)^nkeys. See qkdd/postprocess/verification.py for the
 * references.
 */
#ifndef QKD_HASH_H
#define QKD_HASH_H

#include <stddef.h>
#include <stdint.h>

/* cffi:begin */
#define QKD_HASH_MAX_KEYS 4

/* tags[i] = h_{keys[i]}(frame) for i < nkeys. features: qkd_cpu_features() or a subset (0 = portable). */
int qkd_hash_poly64(const uint64_t *frame, size_t frame_words, size_t n_bits, const uint64_t *keys, size_t nkeys,
                    uint64_t *tags, size_t tags_len, uint32_t features);

/* a * b in GF(2^64) (exposed for tests). */
uint64_t qkd_gf64_mul(uint64_t a, uint64_t b, uint32_t features);
/* cffi:end */

#endif
