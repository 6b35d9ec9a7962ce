/* sim_chacha.c - ChaCha20 keystream as the simulator's random source (D. J. Bernstein, "ChaCha, a
 * variant of Salsa20", 2008; quarter round and block function as in RFC 8439 section 2.1-2.3, with the
 * original 64-bit counter / 64-bit nonce split so a stream never wraps in practice).
 *
 * Several blocks are computed at once, lane i holding block counter + i, in GCC/Clang vector types:
 * four lanes map to SSE2 (baseline x86-64) or NEON; eight lanes are compiled for AVX2 and sixteen for AVX-512F
 * (whose rotations are one instruction), chosen at run time (qkd_cpu_features). All produce the same keystream. */
#include "sim_internal.h"

#include <string.h>

#define ROTL_LANES(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

#define ROTL16_SHIFTS(x) ROTL_LANES(x, 16)
#define ROTL8_SHIFTS(x) ROTL_LANES(x, 8)

/* ROT16, ROT8: how the lanes are rotated by 16 and 8 bits (two shifts and an or, or one byte shuffle). */
#define QUARTER_ROUND(a, b, c, d, ROT16, ROT8)        \
    do {                                              \
        a += b; d ^= a; d = ROT16(d);                 \
        c += d; b ^= c; b = ROTL_LANES(b, 12);        \
        a += b; d ^= a; d = ROT8(d);                  \
        c += d; b ^= c; b = ROTL_LANES(b, 7);         \
    } while (0)

/* The block function over N lanes of type T; fills rng->block with N blocks in counter order. */
#define CHACHA_BLOCKS_BODY(T, N, ROT16, ROT8)                                                                      \
    do {                                                                                                \
        static const uint32_t sigma[4] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u};         \
        T in[16], x[16];                                                                                \
        for (int w = 0; w < 4; w++)                                                                     \
            for (int l = 0; l < (N); l++)                                                               \
                in[w][l] = sigma[w];                                                                    \
        for (int w = 0; w < 8; w++)                                                                     \
            for (int l = 0; l < (N); l++)                                                               \
                in[4 + w][l] = rng->key[w];                                                             \
        for (int l = 0; l < (N); l++) {                                                                 \
            uint64_t counter = rng->counter + (uint64_t)l;                                              \
            in[12][l] = (uint32_t)counter;                                                              \
            in[13][l] = (uint32_t)(counter >> 32);                                                      \
            in[14][l] = (uint32_t)rng->stream;                                                          \
            in[15][l] = (uint32_t)(rng->stream >> 32);                                                  \
        }                                                                                               \
        memcpy(x, in, sizeof x);                                                                        \
        for (int i = 0; i < 10; i++) {                                                                  \
            QUARTER_ROUND(x[0], x[4], x[8], x[12], ROT16, ROT8);                                         \
            QUARTER_ROUND(x[1], x[5], x[9], x[13], ROT16, ROT8);                                         \
            QUARTER_ROUND(x[2], x[6], x[10], x[14], ROT16, ROT8);                                        \
            QUARTER_ROUND(x[3], x[7], x[11], x[15], ROT16, ROT8);                                        \
            QUARTER_ROUND(x[0], x[5], x[10], x[15], ROT16, ROT8);                                        \
            QUARTER_ROUND(x[1], x[6], x[11], x[12], ROT16, ROT8);                                        \
            QUARTER_ROUND(x[2], x[7], x[8], x[13], ROT16, ROT8);                                         \
            QUARTER_ROUND(x[3], x[4], x[9], x[14], ROT16, ROT8);                                         \
        }                                                                                               \
        for (int w = 0; w < 16; w++)                                                                    \
            x[w] += in[w];                                                                              \
        /* keystream order: block by block, each block's 16 words little-endian, paired into uint64 */  \
        for (int l = 0; l < (N); l++)                                                                   \
            for (int i = 0; i < 8; i++)                                                                 \
                rng->block[8 * l + i] = (uint64_t)x[2 * i][l] | ((uint64_t)x[2 * i + 1][l] << 32);      \
        rng->counter += (N);                                                                            \
        rng->used = 0;                                                                                  \
        rng->avail = 8 * (N);                                                                           \
    } while (0)

typedef uint32_t lanes4 __attribute__((vector_size(16)));

static void chacha_blocks4(qkd_chacha *rng)
{
    CHACHA_BLOCKS_BODY(lanes4, 4, ROTL16_SHIFTS, ROTL8_SHIFTS);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
typedef uint32_t lanes8 __attribute__((vector_size(32)));
typedef uint8_t bytes32 __attribute__((vector_size(32)));

/* Rotations by whole bytes as one byte shuffle within each 32-bit word (vpshufb): byte j of a rotated
 * little-endian word is byte (j - 2) mod 4, resp. (j - 1) mod 4, of the original. GCC 12 keeps the
 * shifts otherwise; clang finds the shuffle itself. */
#if defined(__clang__)
#define ROTL16_BYTES(x) ROTL16_SHIFTS(x)
#define ROTL8_BYTES(x) ROTL8_SHIFTS(x)
#else
#define BYTE_ROTATE(x, i0, i1, i2, i3)                                                                  \
    ((lanes8)__builtin_shuffle((bytes32)(x),                                                            \
                               (bytes32){i0, i1, i2, i3, 4 + i0, 4 + i1, 4 + i2, 4 + i3, 8 + i0, 8 + i1, \
                                         8 + i2, 8 + i3, 12 + i0, 12 + i1, 12 + i2, 12 + i3, 16 + i0,     \
                                         16 + i1, 16 + i2, 16 + i3, 20 + i0, 20 + i1, 20 + i2, 20 + i3,   \
                                         24 + i0, 24 + i1, 24 + i2, 24 + i3, 28 + i0, 28 + i1, 28 + i2,   \
                                         28 + i3}))
#define ROTL16_BYTES(x) BYTE_ROTATE(x, 2, 3, 0, 1)
#define ROTL8_BYTES(x) BYTE_ROTATE(x, 3, 0, 1, 2)
#endif

__attribute__((target("avx2"))) static void chacha_blocks8(qkd_chacha *rng)
{
    CHACHA_BLOCKS_BODY(lanes8, 8, ROTL16_BYTES, ROTL8_BYTES);
}
#define HAVE_CHACHA_BLOCKS8 1

typedef uint32_t lanes16 __attribute__((vector_size(64)));

__attribute__((target("avx512f"))) static void chacha_blocks16(qkd_chacha *rng)
{
    CHACHA_BLOCKS_BODY(lanes16, 16, ROTL16_SHIFTS, ROTL8_SHIFTS);
}
#endif

void qkd_chacha_init(qkd_chacha *rng, const uint8_t seed[32], uint64_t stream)
{
    for (int i = 0; i < 8; i++)
        rng->key[i] = (uint32_t)seed[4 * i] | (uint32_t)seed[4 * i + 1] << 8 | (uint32_t)seed[4 * i + 2] << 16 |
                      (uint32_t)seed[4 * i + 3] << 24;
    rng->counter = 0;
    rng->stream = stream;
    rng->used = 0;
    rng->avail = 0;
    uint32_t features = qkd_cpu_features();
    rng->lanes = features & QKD_CPU_AVX512F ? 16 : features & QKD_CPU_AVX2 ? 8 : 4;
}

void qkd_chacha_refill(qkd_chacha *rng)
{
#ifdef HAVE_CHACHA_BLOCKS8
    if (rng->lanes == 16) {
        chacha_blocks16(rng);
        return;
    }
    if (rng->lanes == 8) {
        chacha_blocks8(rng);
        return;
    }
#endif
    chacha_blocks4(rng);
}
