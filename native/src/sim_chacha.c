/* sim_chacha.c - ChaCha20 keystream as the simulator's random source (D. J. Bernstein, "ChaCha, a
 * variant of Salsa20", 2008; quarter round and block function as in RFC 8439 section 2.1-2.3, with the
 * original 64-bit counter / 64-bit nonce split so a stream never wraps in practice). */
#include "sim_internal.h"

#include <string.h>

/* Eight blocks at a time, lane i holding block counter + i, in GCC/Clang vector types: the compiler
 * maps them to SSE2 (baseline x86-64) or NEON without any run-time dispatch. */
typedef uint32_t lanes __attribute__((vector_size(4 * QKD_CHACHA_LANES)));

#define ROTL_LANES(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

#define QUARTER_ROUND(a, b, c, d)                     \
    do {                                              \
        a += b; d ^= a; d = ROTL_LANES(d, 16);        \
        c += d; b ^= c; b = ROTL_LANES(b, 12);        \
        a += b; d ^= a; d = ROTL_LANES(d, 8);         \
        c += d; b ^= c; b = ROTL_LANES(b, 7);         \
    } while (0)

static void chacha_blocks(qkd_chacha *rng)
{
    static const uint32_t sigma[4] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u};  /* "expand 32-byte k" */
    lanes in[16], x[16];
    for (int w = 0; w < 4; w++)
        for (int l = 0; l < QKD_CHACHA_LANES; l++)
            in[w][l] = sigma[w];
    for (int w = 0; w < 8; w++)
        for (int l = 0; l < QKD_CHACHA_LANES; l++)
            in[4 + w][l] = rng->key[w];
    for (int l = 0; l < QKD_CHACHA_LANES; l++) {
        uint64_t counter = rng->counter + (uint64_t)l;
        in[12][l] = (uint32_t)counter;
        in[13][l] = (uint32_t)(counter >> 32);
        in[14][l] = (uint32_t)rng->stream;
        in[15][l] = (uint32_t)(rng->stream >> 32);
    }
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
    for (int w = 0; w < 16; w++)
        x[w] += in[w];
    /* keystream order: block by block, each block's 16 words little-endian, paired into uint64 */
    for (int l = 0; l < QKD_CHACHA_LANES; l++)
        for (int i = 0; i < 8; i++)
            rng->block[8 * l + i] = (uint64_t)x[2 * i][l] | ((uint64_t)x[2 * i + 1][l] << 32);
    rng->counter += QKD_CHACHA_LANES;
    rng->used = 0;
}

void qkd_chacha_init(qkd_chacha *rng, const uint8_t seed[32], uint64_t stream)
{
    for (int i = 0; i < 8; i++)
        rng->key[i] = (uint32_t)seed[4 * i] | (uint32_t)seed[4 * i + 1] << 8 | (uint32_t)seed[4 * i + 2] << 16 |
                      (uint32_t)seed[4 * i + 3] << 24;
    rng->counter = 0;
    rng->stream = stream;
    rng->used = QKD_CHACHA_WORDS;
}

uint64_t qkd_chacha_u64(qkd_chacha *rng)
{
    if (rng->used == QKD_CHACHA_WORDS)
        chacha_blocks(rng);
    return rng->block[rng->used++];
}
