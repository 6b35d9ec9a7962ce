/* test_crc.c - CRC-32C against the catalogue check value and a bit-at-a-time reference. */
#include "check.h"
#include "qkd_crc.h"

#include <string.h>

static uint32_t crc32c_bitwise(const uint8_t *data, size_t len)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void test_check_value(void)
{
    const char *text = "123456789";
    CHECK_EQ(qkd_crc32c(0, (const uint8_t *)text, 9), 0xE3069283u);     /* RFC 3720 B.4 / catalogue */
    CHECK_EQ(qkd_crc32c(0, NULL, 0), 0u);
}

static void test_against_reference_and_continuation(void)
{
    uint8_t data[1000];
    uint64_t state = 7;
    for (size_t i = 0; i < sizeof data; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        data[i] = (uint8_t)(state >> 56);
    }
    for (size_t len = 0; len <= sizeof data; len += 37) {
        uint32_t whole = qkd_crc32c(0, data, len);
        CHECK_EQ(whole, crc32c_bitwise(data, len));
        size_t cut = len / 3;
        CHECK_EQ(qkd_crc32c(qkd_crc32c(0, data, cut), data + cut, len - cut), whole);
    }
}

int main(void)
{
    test_check_value();
    test_against_reference_and_continuation();
    return check_report("test_crc");
}
