/* qkd_prng.h - deterministic keyed generator for values both ends of a link must derive alike.
 *
 * xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number generators", ACM TOMS 47(4),
 * 2021) keyed by a 256-bit seed and a 64-bit stream number through SplitMix64. It is NOT a secret
 * generator: it expands a public seed (drawn by one end from the OS CSPRNG and announced) into
 * shuffles both ends must agree on. Never seed it from rand() or the clock.
 */
#ifndef QKD_PRNG_H
#define QKD_PRNG_H

#include <stddef.h>
#include <stdint.h>

/* cffi:begin */
#define QKD_PRNG_SEED_BYTES 32

typedef struct qkd_prng {
    uint64_t s[4];
} qkd_prng;

int qkd_prng_init(qkd_prng *g, const uint8_t *seed, size_t seed_len, uint64_t stream);
uint64_t qkd_prng_next(qkd_prng *g);
uint32_t qkd_prng_below(qkd_prng *g, uint32_t bound);
int qkd_prng_permutation(qkd_prng *g, uint32_t *out, size_t n);
/* cffi:end */

#endif
