/* test_toeplitz.c - Toeplitz hashing against the definition y[i] = XOR_j s[(i-j) mod L] x[j], on both
 * the portable and the PCLMUL path, plus the soft carry-less multiply against PCLMUL and bad sizes. */
#include "check.h"
#include "clmul.h"
#include "qkd_bits.h"
#include "qkd_toeplitz.h"

#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t next_u64(void)
{
    /* splitmix64: deterministic test data */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void reference(const uint64_t *s, const uint64_t *x, size_t n, size_t m, uint64_t *y)
{
    size_t l = n + m - 1;
    memset(y, 0, qkd_words_for_bits(m) * 8);
    for (size_t i = 0; i < m; i++) {
        int acc = 0;
        for (size_t j = 0; j < n; j++)
            acc ^= qkd_bit_get(s, (i + l - j) % l) & qkd_bit_get(x, j);
        qkd_bit_set(y, i, acc);
    }
}

static void check_size(size_t n, size_t m, uint32_t features)
{
    size_t l = n + m - 1;
    size_t sw = qkd_words_for_bits(l), xw = qkd_words_for_bits(n), yw = qkd_words_for_bits(m);
    uint64_t *s = malloc(sw * 8), *x = malloc(xw * 8), *y = malloc(yw * 8), *ref = malloc(yw * 8);
    for (size_t i = 0; i < sw; i++)
        s[i] = next_u64();
    for (size_t i = 0; i < xw; i++)
        x[i] = next_u64();
    /* unused high bits hold garbage: the kernel must ignore them */
    size_t scratch_words = qkd_toeplitz_scratch_words(n, m);
    CHECK(scratch_words > 0);
    uint64_t *scratch = malloc(scratch_words * 8);
    CHECK_EQ(qkd_toeplitz_hash(s, sw, x, xw, n, m, y, yw, scratch, scratch_words, features), QKD_OK);
    if (l % 64)
        s[sw - 1] &= ((uint64_t)1 << (l % 64)) - 1;
    if (n % 64)
        x[xw - 1] &= ((uint64_t)1 << (n % 64)) - 1;
    reference(s, x, n, m, ref);
    int same = memcmp(y, ref, yw * 8) == 0;
    if (!same)
        fprintf(stderr, "mismatch n=%zu m=%zu features=%u\n", n, m, features);
    CHECK(same);
    free(s), free(x), free(y), free(ref), free(scratch);
}

int main(void)
{
    for (int i = 0; i < 2000; i++) {
        uint64_t a = next_u64(), b = next_u64();
        if (i < 64)
            a = ~(uint64_t)0 >> (i % 64), b = (uint64_t)1 << (i % 64) | b;
        uint64_t lo1, hi1, lo2 = 0, hi2 = 0;
        qkd_clmul64_soft(a, b, &lo1, &hi1);
        for (unsigned k = 0; k < 64; k++)
            if ((b >> k) & 1) {
                lo2 ^= a << k;
                hi2 ^= k ? a >> (64 - k) : 0;
            }
        CHECK(lo1 == lo2 && hi1 == hi2);
    }
    /* portable, PCLMUL only (if present), everything the CPU has (VPCLMUL if present) */
    uint32_t features[] = {0, qkd_cpu_features() & QKD_CPU_PCLMUL, qkd_cpu_features()};
    size_t sizes[][2] = {{1, 1}, {2, 1}, {5, 3}, {64, 64}, {65, 1}, {100, 37}, {127, 64}, {1000, 999},
                         {1025, 513}, {3000, 200}, {4097, 4097}, {5000, 1}, {20000, 7001}, {12345, 6789}, {70001, 40000}};
    for (size_t f = 0; f < 3; f++)
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
            check_size(sizes[k][0], sizes[k][1], features[f]);

    uint64_t w[4] = {0}, scratch[4096];
    CHECK_EQ(qkd_toeplitz_scratch_words(0, 0), 0);
    CHECK_EQ(qkd_toeplitz_scratch_words(10, 11), 0);
    CHECK_EQ(qkd_toeplitz_scratch_words((size_t)QKD_TOEPLITZ_MAX_BITS + 1, 1), 0);
    CHECK_EQ(qkd_toeplitz_hash(w, 4, w, 4, 10, 11, w, 4, scratch, 4096, 0), QKD_EINVAL);
    CHECK_EQ(qkd_toeplitz_hash(w, 1, w, 4, 100, 50, w, 4, scratch, 4096, 0), QKD_ERANGE);
    CHECK_EQ(qkd_toeplitz_hash(w, 4, w, 1, 100, 50, w, 4, scratch, 4096, 0), QKD_ERANGE);
    CHECK_EQ(qkd_toeplitz_hash(w, 4, w, 4, 100, 80, w, 1, scratch, 4096, 0), QKD_ENOMEM);
    CHECK_EQ(qkd_toeplitz_hash(w, 4, w, 4, 100, 50, w, 4, scratch, 1, 0), QKD_ENOMEM);
    return check_report("test_toeplitz");
}
