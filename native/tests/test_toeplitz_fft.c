/* test_toeplitz_fft.c - the additive-FFT Toeplitz hash gives the same bits as the carry-less path
 * (itself checked against the definition in test_toeplitz.c), at edge sizes and with garbage in the
 * unused high bits; bad sizes and missing PCLMUL are refused. */
#include "check.h"
#include "qkd_bits.h"
#include "qkd_toeplitz.h"
#include "qkd_toeplitz_fft.h"

#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint64_t next_u64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
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
    size_t kw = qkd_toeplitz_scratch_words(n, m), fw = qkd_toeplitz_fft_scratch_words(n, m);
    CHECK(kw > 0 && fw > 0);
    uint64_t *scratch = malloc((kw > fw ? kw : fw) * 8);
    CHECK_EQ(qkd_toeplitz_hash(s, sw, x, xw, n, m, ref, yw, scratch, kw, features), QKD_OK);
    memset(y, 0xA5, yw * 8);
    CHECK_EQ(qkd_toeplitz_hash_fft(s, sw, x, xw, n, m, y, yw, scratch, fw, features), QKD_OK);
    int same = memcmp(y, ref, yw * 8) == 0;
    if (!same)
        fprintf(stderr, "fft mismatch n=%zu m=%zu\n", n, m);
    CHECK(same);
    free(s), free(x), free(y), free(ref), free(scratch);
}

int main(void)
{
    uint32_t features = qkd_cpu_features();
    if (!(features & QKD_CPU_PCLMUL)) {
        uint64_t w[4] = {0};
        CHECK_EQ(qkd_toeplitz_hash_fft(w, 4, w, 4, 64, 64, w, 4, w, 4, features), QKD_EINVAL);
        printf("test_toeplitz_fft: no PCLMUL, only the refusal checked\n");
        return check_report("test_toeplitz_fft");
    }
    static const size_t sizes[][2] = {{1, 1},       {2, 1},       {31, 2},      {32, 32},     {33, 1},
                                      {64, 64},     {65, 2},      {100, 99},    {333, 17},    {1000, 500},
                                      {4097, 1031}, {20011, 10007}, {65536, 32768}, {100003, 1},
                                      {1 << 20, 1 << 19}, {1000003, 999983}, {1 << 21, 1 << 20}, {3000017, 5}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        check_size(sizes[i][0], sizes[i][1], features);
    /* the 128-bit PCLMULQDQ instance (no AVX-512), on sizes that reach every level kind */
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i += 3)
        check_size(sizes[i][0], sizes[i][1], QKD_CPU_PCLMUL);
    CHECK_EQ(qkd_toeplitz_fft_scratch_words(0, 1), 0);
    CHECK_EQ(qkd_toeplitz_fft_scratch_words(10, 11), 0);
    CHECK_EQ(qkd_toeplitz_fft_scratch_words((size_t)1 << 31, (size_t)1 << 30), 0); /* past 2^25 points */
    /* the input split into blocks (toeplitz_fft.c, step 4): 2^27 -> 2^26 bits in four blocks of 2^22-point transforms
     * (three arrays of 2^22 words and the rotated seed), where one block needs arrays of 2^24; and n + n + m past 2^30
     * bits fits in blocks */
    CHECK(qkd_toeplitz_fft_scratch_words((size_t)1 << 27, (size_t)1 << 26) < ((size_t)1 << 24));
    CHECK(qkd_toeplitz_fft_scratch_words((size_t)1 << 30, (size_t)1 << 20) > 0);
    uint64_t w[8] = {0};
    CHECK_EQ(qkd_toeplitz_hash_fft(w, 8, w, 8, 64, 64, w, 8, w, 1, features), QKD_ENOMEM);
    size_t fw = qkd_toeplitz_fft_scratch_words(64, 64);
    uint64_t *scratch = calloc(fw, 8);
    CHECK_EQ(qkd_toeplitz_hash_fft(w, 8, w, 8, 64, 64, w, 8, scratch, fw, 0), QKD_EINVAL);
    free(scratch);
    return check_report("test_toeplitz_fft");
}
