/* ldpc_table.c - what both LDPC decoders ask of a quasi-cyclic code table (ldpc_internal.h): its sizes, its
 * entries as (base row, base column, circulant shift), its largest row degree, and the syndrome H x of a word.
 * ldpc.c serves the BB84 codes through it, ldpc_bp.c the CV-QKD codes. */
#include "ldpc_internal.h"
#include "qkd_bits.h"

#include <string.h>

int qkd_ldpc_table_info(const qkd_ldpc_table *t, qkd_ldpc_code_info *out)
{
    if (!t || !out)
        return QKD_EINVAL;
    out->z = t->z;
    out->mb = t->mb;
    out->nb = t->nb;
    out->edges = t->edges;
    out->n_bits = t->nb * t->z;
    out->m_bits = t->mb * t->z;
    out->ensemble = t->ensemble;
    return QKD_OK;
}

int qkd_ldpc_table_entries(const qkd_ldpc_table *t, uint32_t *rows, uint32_t *cols, uint32_t *shifts, size_t len)
{
    if (!t || !rows || !cols || !shifts || len != t->edges)
        return QKD_EINVAL;
    for (uint32_t r = 0; r < t->mb; r++) {
        for (uint32_t e = t->row_start[r]; e < t->row_start[r + 1]; e++) {
            rows[e] = r;
            cols[e] = t->cols[e];
            shifts[e] = t->shifts[e];
        }
    }
    return QKD_OK;
}

uint32_t qkd_ldpc_table_max_row_degree(const qkd_ldpc_table *t)
{
    uint32_t most = 0;
    for (uint32_t r = 0; r < t->mb; r++) {
        uint32_t degree = (uint32_t)(t->row_start[r + 1] - t->row_start[r]);
        if (degree > most)
            most = degree;
    }
    return most;
}

int qkd_ldpc_table_syndrome(const qkd_ldpc_table *t, const uint8_t *bits, size_t n_bits, uint8_t *syndrome,
                            size_t m_bits)
{
    if (!t || !bits || !syndrome || n_bits != (size_t)t->nb * t->z || m_bits != (size_t)t->mb * t->z)
        return QKD_EINVAL;
    const uint32_t z = t->z;
    memset(syndrome, 0, m_bits);
    for (uint32_t r = 0; r < t->mb; r++) {
        uint8_t *s = syndrome + (size_t)r * z;
        for (uint32_t e = t->row_start[r]; e < t->row_start[r + 1]; e++) {
            const uint8_t *b = bits + (size_t)t->cols[e] * z;
            uint32_t shift = t->shifts[e];
            for (uint32_t i = 0; i < z - shift; i++)
                s[i] ^= b[i + shift] & 1u;
            for (uint32_t i = z - shift; i < z; i++)
                s[i] ^= b[i + shift - z] & 1u;
        }
    }
    return QKD_OK;
}
