/* crc.c - CRC-32C, table-driven slicing-by-8 (8 tables of 256 entries computed at compile time would be
 * long to list; they are built once on first use, read-only afterwards, from the polynomial alone). */
#include "qkd_crc.h"

#include <stdatomic.h>

#define CRC32C_POLY 0x82F63B78u

static uint32_t table[8][256];
static atomic_int table_ready;

static void build_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = n;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (CRC32C_POLY & (0u - (crc & 1u)));
        table[0][n] = crc;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int t = 1; t < 8; t++) table[t][n] = (table[t - 1][n] >> 8) ^ table[0][table[t - 1][n] & 0xFF];
    atomic_store_explicit(&table_ready, 1, memory_order_release);
}

uint32_t qkd_crc32c(uint32_t crc, const uint8_t *data, size_t len) {
    /* two threads may both build the table at first use: they write identical values */
    if (!atomic_load_explicit(&table_ready, memory_order_acquire)) build_table();
    crc = ~crc;
    while (len >= 8) {
        uint32_t lo = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 24;
        uint32_t hi = (uint32_t)data[4] | (uint32_t)data[5] << 8 | (uint32_t)data[6] << 16 | (uint32_t)data[7] << 24;
        lo ^= crc;
        crc = table[7][lo & 0xFF] ^ table[6][(lo >> 8) & 0xFF] ^ table[5][(lo >> 16) & 0xFF] ^ table[4][lo >> 24] ^
              table[3][hi & 0xFF] ^ table[2][(hi >> 8) & 0xFF] ^ table[1][(hi >> 16) & 0xFF] ^ table[0][hi >> 24];
        data += 8;
        len -= 8;
    }
    while (len--) crc = (crc >> 8) ^ table[0][(crc ^ *data++) & 0xFF];
    return ~crc;
}
