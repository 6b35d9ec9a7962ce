/* test_bits.c - bit-array primitives against a byte-per-bit reference. */
#include "check.h"
#include "qkd_bits.h"

#include <stdlib.h>
#include <string.h>

static uint64_t lcg(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return *state >> 33;
}

static void test_pack_unpack_roundtrip(void)
{
    uint64_t rng = 1;
    for (size_t nbits = 0; nbits < 300; nbits += 7) {
        uint8_t bits[300], back[300];
        uint64_t words[5] = {~0ull, ~0ull, ~0ull, ~0ull, ~0ull};
        for (size_t i = 0; i < nbits; i++)
            bits[i] = (uint8_t)(lcg(&rng) & 1);
        CHECK_EQ(qkd_bits_pack(bits, nbits, words, 5), QKD_OK);
        if (nbits % 64)
            CHECK_EQ(words[nbits / 64] >> (nbits % 64), 0u); /* tail bits zeroed */
        CHECK_EQ(qkd_bits_unpack(words, 5, nbits, back, sizeof back), QKD_OK);
        CHECK(memcmp(bits, back, nbits) == 0);
    }
    uint64_t one[1];
    uint8_t bits[65] = {0};
    CHECK_EQ(qkd_bits_pack(bits, 65, one, 1), QKD_ENOMEM);
    CHECK_EQ(qkd_bits_unpack(one, 1, 65, bits, sizeof bits), QKD_ERANGE);
}

static void test_ranges_against_reference(void)
{
    enum { NBITS = 1000 };
    uint8_t bits[NBITS];
    uint64_t words[16];
    uint64_t rng = 7;
    for (size_t i = 0; i < NBITS; i++)
        bits[i] = (uint8_t)(lcg(&rng) & 1);
    qkd_bits_pack(bits, NBITS, words, 16);
    for (int trial = 0; trial < 2000; trial++) {
        size_t a = lcg(&rng) % (NBITS + 1), b = lcg(&rng) % (NBITS + 1);
        size_t start = a < b ? a : b, stop = a < b ? b : a;
        int64_t ones = 0;
        for (size_t i = start; i < stop; i++)
            ones += bits[i];
        CHECK_EQ(qkd_bits_popcount_range(words, 16, start, stop), ones);
        CHECK_EQ(qkd_bits_parity_range(words, 16, start, stop), (int)(ones & 1));
    }
    CHECK_EQ(qkd_bits_popcount_range(words, 16, 5, 4), QKD_EINVAL);
    CHECK_EQ(qkd_bits_popcount_range(words, 16, 0, 16 * 64 + 1), QKD_ERANGE);
    CHECK_EQ(qkd_bits_parity_range(words, 16, 0, 16 * 64 + 1), QKD_ERANGE);
}

static void test_xor_and_gather(void)
{
    uint64_t a[3] = {0xF0F0, 0x1, 0xFFFF}, b[3] = {0xFF00, 0x1, 0x0};
    qkd_bits_xor(a, b, 3);
    CHECK_EQ(a[0], 0x0FF0u);
    CHECK_EQ(a[1], 0u);
    CHECK_EQ(a[2], 0xFFFFu);

    uint64_t src[2] = {0, 0};
    qkd_bit_set(src, 3, 1);
    qkd_bit_set(src, 70, 1);
    uint64_t index[4] = {70, 0, 3, 127};
    uint64_t out[1];
    CHECK_EQ(qkd_bits_gather(src, 2, 128, index, 4, out, 1), QKD_OK);
    CHECK_EQ(out[0], 0x5u); /* bits 0 (from 70) and 2 (from 3) */
    index[3] = 128;
    CHECK_EQ(qkd_bits_gather(src, 2, 128, index, 4, out, 1), QKD_ERANGE);
}

/* The deal against its definition (row j is in[j], in[j + k], ...), across tile edges, and back. */
static void test_deal_and_undeal(void)
{
    static const size_t cases[][2] = {{0, 3}, {5, 1}, {7, 7}, {3, 8}, {130, 129}, {64 * 64 * 3 + 5, 64}, {100003, 25},
                                      {200000, 700}};
    uint64_t state = 7;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = cases[c][0], k = cases[c][1];
        uint8_t *in = malloc(n + 1), *dealt = malloc(n + 1), *back = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            in[i] = (uint8_t)lcg(&state);
        CHECK_EQ(qkd_bytes_deal(in, n, k, dealt), QKD_OK);
        size_t at = 0;
        int same = 1;
        for (size_t j = 0; j < k; j++)
            for (size_t i = j; i < n; i += k)
                same &= dealt[at++] == in[i];
        CHECK(same && at == n);
        CHECK_EQ(qkd_bytes_undeal(dealt, n, k, back), QKD_OK);
        CHECK(n == 0 || memcmp(back, in, n) == 0);
        free(in);
        free(dealt);
        free(back);
    }
    uint8_t one = 0;
    CHECK_EQ(qkd_bytes_deal(&one, 1, 0, &one), QKD_EINVAL);
}

/* The bit-packed deal against the byte deal of the unpacked frame, and its inverse back to the packed words
 * (with the tail past n cleared even where out held ones). */
static void test_bits_deal_and_undeal(void)
{
    static const size_t cases[][2] = {{0, 3}, {5, 1}, {7, 7}, {3, 8}, {130, 129}, {64 * 64 * 3 + 5, 64}, {100003, 25},
                                      {200000, 700}};
    uint64_t state = 11;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = cases[c][0], k = cases[c][1], nw = qkd_words_for_bits(n) + 1;
        uint64_t *words = malloc(nw * 8), *back = malloc(nw * 8);
        uint8_t *bits = malloc(n + 1), *dealt = malloc(n + 1), *expected = malloc(n + 1);
        for (size_t w = 0; w < nw; w++)
            words[w] = lcg(&state) << 31 ^ lcg(&state);
        if (n % 64)
            words[n / 64] &= ((uint64_t)1 << (n % 64)) - 1;
        words[nw - 1] = 0;
        CHECK_EQ(qkd_bits_unpack(words, nw, n, bits, n + 1), QKD_OK);
        CHECK_EQ(qkd_bytes_deal(bits, n, k, expected), QKD_OK);
        CHECK_EQ(qkd_bits_deal(words, nw, n, k, dealt, n), QKD_OK);
        CHECK(n == 0 || memcmp(dealt, expected, n) == 0);
        for (size_t w = 0; w < nw; w++)
            back[w] = ~0ull;
        CHECK_EQ(qkd_bits_undeal(dealt, n, k, back, nw), QKD_OK);
        CHECK(memcmp(back, words, nw * 8) == 0);
        CHECK_EQ(qkd_bits_deal(words, qkd_words_for_bits(n + 65) - 2, n + 65, k, dealt, n + 65), QKD_ERANGE);
        CHECK_EQ(qkd_bits_undeal(dealt, n + 65, k, back, qkd_words_for_bits(n + 65) - 1), QKD_ENOMEM);
        free(words);
        free(back);
        free(bits);
        free(dealt);
        free(expected);
    }
    uint64_t word = 0;
    uint8_t one = 0;
    CHECK_EQ(qkd_bits_deal(&word, 1, 1, 0, &one, 1), QKD_EINVAL);
    CHECK_EQ(qkd_bits_undeal(&one, 1, 0, &word, 1), QKD_EINVAL);
    CHECK_EQ(qkd_bits_deal(&word, 1, 2, 1, &one, 1), QKD_ENOMEM);
}

int main(void)
{
    test_pack_unpack_roundtrip();
    test_ranges_against_reference();
    test_xor_and_gather();
    test_deal_and_undeal();
    test_bits_deal_and_undeal();
    return check_report("test_bits");
}
