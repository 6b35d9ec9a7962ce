/* ldpc_cv_internal.h - the shipped CV-QKD code tables (ldpc_cv_codes.c, generated) as the BP decoder reads them. */
#ifndef QKD_LDPC_CV_INTERNAL_H
#define QKD_LDPC_CV_INTERNAL_H

#include "ldpc_internal.h"

extern const qkd_ldpc_table qkd_ldpc_cv_tables[];
extern const size_t qkd_ldpc_cv_table_count;

#endif
