/* qkd_crc.h - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78; RFC 3720 appendix B.4) of byte
 * strings: the frame check of the serial device protocol (docs/serial-protocol.md).
 * qkd_crc32c(0, "123456789", 9) == 0xE3069283 (the catalogue check value).
 */
#ifndef QKD_CRC_H
#define QKD_CRC_H

#include <stddef.h>
#include <stdint.h>

/* cffi:begin */
/* The CRC-32C of data[0..len) continuing from `crc` (0 to start; the result of a previous call to go on). */
uint32_t qkd_crc32c(uint32_t crc, const uint8_t *data, size_t len);
/* cffi:end */

#endif
