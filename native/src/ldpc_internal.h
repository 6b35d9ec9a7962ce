/* ldpc_internal.h - the shipped code tables (ldpc_codes.c, generated) as the decoder reads them. */
#ifndef QKD_LDPC_INTERNAL_H
#define QKD_LDPC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct qkd_ldpc_table {
    uint32_t z, mb, nb, edges;
    const uint16_t *row_start; /* mb + 1 offsets into cols/shifts, row-major */
    const uint16_t *cols;      /* base column of each entry, ascending within a row */
    const uint16_t *shifts;    /* circulant shift of each entry, < z */
} qkd_ldpc_table;

extern const qkd_ldpc_table qkd_ldpc_tables[];
extern const size_t qkd_ldpc_table_count;

#endif
