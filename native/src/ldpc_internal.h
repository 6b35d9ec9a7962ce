/* ldpc_internal.h - the shipped code tables (ldpc_codes.c, generated) as the decoder reads them. */
#ifndef QKD_LDPC_INTERNAL_H
#define QKD_LDPC_INTERNAL_H

#include "qkd_ldpc.h"

#include <stddef.h>
#include <stdint.h>

typedef struct qkd_ldpc_table {
    uint32_t z, mb, nb, edges;
    const uint16_t *row_start; /* mb + 1 offsets into cols/shifts, row-major */
    const uint16_t *cols;      /* base column of each entry, ascending within a row */
    const uint16_t *shifts;    /* circulant shift of each entry, < z */
    uint32_t ensemble;         /* QKD_LDPC_ENSEMBLE_*: the decoder the degree profile was chosen for (0 if unset) */
} qkd_ldpc_table;

extern const qkd_ldpc_table qkd_ldpc_tables[];
extern const size_t qkd_ldpc_table_count;

/* ldpc_table.c: a table's sizes, entries and syndromes (QKD_EINVAL for a missing table or wrong lengths) */
int qkd_ldpc_table_info(const qkd_ldpc_table *t, qkd_ldpc_code_info *out);
int qkd_ldpc_table_entries(const qkd_ldpc_table *t, uint32_t *rows, uint32_t *cols, uint32_t *shifts, size_t len);
uint32_t qkd_ldpc_table_max_row_degree(const qkd_ldpc_table *t);   /* the decoders size their layer buffers by it */
int qkd_ldpc_table_syndrome(const qkd_ldpc_table *t, const uint8_t *bits, size_t n_bits, uint8_t *syndrome,
                            size_t m_bits);

#endif
