/* sim_chacha.c - ChaCha20 keystream as the simulator's random source (D. J. Bernstein, "ChaCha, a
 * variant of Salsa20", 2008; quarter round and block function as in RFC 8439 section 2.1-2.3, with the
 * original 64-bit counter / 64-bit nonce split so a stream never wraps in practice). */
#include "sim_internal.h"

#include <string.h>

static inline uint32_t rotl32(uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}

#define QUARTER_ROUND(a, b, c, d)                     \
    do {                                              \
        a += b; d ^= a; d = rotl32(d, 16);            \
        c += d; b ^= c; b = rotl32(b, 12);            \
        a += b; d ^= a; d = rotl32(d, 8);             \
        c += d; b ^= c; b = rotl32(b, 7);             \
    } while (0)

static void chacha_block(qkd_chacha *rng)
{
    uint32_t in[16] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u};  /* "expand 32-byte k" */
    memcpy(in + 4, rng->key, sizeof rng->key);
    in[12] = (uint32_t)rng->counter;
    in[13] = (uint32_t)(rng->counter >> 32);
    in[14] = (uint32_t)rng->stream;
    in[15] = (uint32_t)(rng->stream >> 32);
    uint32_t x[16];
    memcpy(x, in, sizeof x);
    for (int i = 0; i < 10; i++) {
        QUARTER_ROUND(x[0], x[4], x[8], x[12]);
        QUARTER_ROUND(x[1], x[5], x[9], x[13]);
        QUARTER_ROUND(x[2], x[6], x[10], x[14]);
        QUARTER_ROUND(x[3], x[7], x[11], x[15]);
        QUARTER_ROUND(x[0], x[5], x[10], x[15]);
        QUARTER_ROUND(x[1], x[6], x[11], x[12]);
        QUARTER_ROUND(x[2], x[7], x[8], x[13]);
        QUARTER_ROUND(x[3], x[4], x[9], x[14]);
    }
    for (int i = 0; i < 8; i++)
        rng->block[i] = (uint64_t)(x[2 * i] + in[2 * i]) | ((uint64_t)(x[2 * i + 1] + in[2 * i + 1]) << 32);
    rng->counter++;
    rng->used = 0;
}

void qkd_chacha_init(qkd_chacha *rng, const uint8_t seed[32], uint64_t stream)
{
    for (int i = 0; i < 8; i++)
        rng->key[i] = (uint32_t)seed[4 * i] | (uint32_t)seed[4 * i + 1] << 8 | (uint32_t)seed[4 * i + 2] << 16 |
                      (uint32_t)seed[4 * i + 3] << 24;
    rng->counter = 0;
    rng->stream = stream;
    rng->used = 8;
}

uint64_t qkd_chacha_u64(qkd_chacha *rng)
{
    if (rng->used == 8)
        chacha_block(rng);
    return rng->block[rng->used++];
}
