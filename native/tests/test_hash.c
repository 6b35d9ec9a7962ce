/* test_hash.c - GF(2^64) multiply against a bit-serial reference, the polynomial hash against its
 * definition, agreement of the portable and PCLMUL paths, and argument checks. */
#include "check.h"
#include "qkd_bits.h"
#include "qkd_hash.h"

#include <string.h>

static uint64_t rng_state = 12345;

static uint64_t next_u64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Shift-and-add multiply modulo x^64 + x^4 + x^3 + x + 1, one bit at a time. */
static uint64_t gf64_mul_ref(uint64_t a, uint64_t b)
{
    uint64_t r = 0;
    for (int i = 63; i >= 0; i--) {
        uint64_t carry = r >> 63;
        r = (r << 1) ^ (carry ? 0x1Bull : 0);
        if ((b >> i) & 1)
            r ^= a;
    }
    return r;
}

static uint64_t hash_ref(const uint64_t *frame, size_t n_bits, uint64_t key)
{
    uint64_t acc = 0;
    size_t d = qkd_words_for_bits(n_bits);
    for (size_t i = 0; i < d; i++) {
        uint64_t block = frame[i];
        if (i == d - 1 && n_bits % 64)
            block &= ((uint64_t)1 << (n_bits % 64)) - 1;
        acc = gf64_mul_ref(acc ^ block, key);
    }
    return gf64_mul_ref(acc ^ (uint64_t)n_bits, key);
}

int main(void)
{
    uint32_t hw = qkd_cpu_features();
    for (int i = 0; i < 5000; i++) {
        uint64_t a = next_u64(), b = next_u64();
        if (i < 10)
            a = ~(uint64_t)0, b = i == 0 ? ~(uint64_t)0 : (uint64_t)1 << (63 - i);
        uint64_t r = gf64_mul_ref(a, b);
        CHECK_EQ(qkd_gf64_mul(a, b, 0), r);
        CHECK_EQ(qkd_gf64_mul(a, b, hw), r);
    }
    /* field sanity: x * x^63 = x^64 = x^4 + x^3 + x + 1 */
    CHECK_EQ(qkd_gf64_mul(2, (uint64_t)1 << 63, hw), 0x1Bull);

    uint64_t frame[40], keys[2] = {next_u64(), next_u64()}, tags[2], tags_soft[2];
    for (size_t i = 0; i < 40; i++)
        frame[i] = next_u64();
    size_t lengths[] = {0, 1, 63, 64, 65, 1000, 2560};
    for (size_t k = 0; k < sizeof lengths / sizeof lengths[0]; k++) {
        size_t n = lengths[k];
        CHECK_EQ(qkd_hash_poly64(frame, 40, n, keys, 2, tags, 2, hw), QKD_OK);
        CHECK_EQ(qkd_hash_poly64(frame, 40, n, keys, 2, tags_soft, 2, 0), QKD_OK);
        CHECK_EQ(tags[0], hash_ref(frame, n, keys[0]));
        CHECK_EQ(tags[1], hash_ref(frame, n, keys[1]));
        CHECK(memcmp(tags, tags_soft, sizeof tags) == 0);
    }
    /* bits past n do not count; every single-bit flip inside changes the tag for these keys */
    uint64_t base[2];
    CHECK_EQ(qkd_hash_poly64(frame, 40, 1000, keys, 2, base, 2, hw), QKD_OK);
    frame[15] ^= (uint64_t)1 << 50; /* bit 1010 > 1000 */
    CHECK_EQ(qkd_hash_poly64(frame, 40, 1000, keys, 2, tags, 2, hw), QKD_OK);
    CHECK(tags[0] == base[0] && tags[1] == base[1]);
    for (size_t bit = 0; bit < 1000; bit += 7) {
        qkd_bit_flip(frame, bit);
        CHECK_EQ(qkd_hash_poly64(frame, 40, 1000, keys, 2, tags, 2, hw), QKD_OK);
        CHECK(tags[0] != base[0] && tags[1] != base[1]);
        qkd_bit_flip(frame, bit);
    }
    CHECK_EQ(qkd_hash_poly64(frame, 40, 1000, keys, 0, tags, 2, hw), QKD_EINVAL);
    CHECK_EQ(qkd_hash_poly64(frame, 40, 1000, keys, QKD_HASH_MAX_KEYS + 1, tags, 8, hw), QKD_EINVAL);
    CHECK_EQ(qkd_hash_poly64(frame, 15, 1000, keys, 2, tags, 2, hw), QKD_ERANGE);
    CHECK_EQ(qkd_hash_poly64(frame, 40, 1000, keys, 2, tags, 1, hw), QKD_ENOMEM);
    return check_report("test_hash");
}
