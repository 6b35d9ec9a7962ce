/* qkd_ldpc_bp.h - the low-rate QC-LDPC codes of CV-QKD reconciliation and their floating-point layered
 * sum-product (belief propagation) decoder.
 *
 * Codes come from src/ldpc_cv_codes.c (written by native/tools/ldpc_cv_codes.py): multi-edge-type (MET)
 * ensembles with many degree-1 variable nodes, lifted to quasi-cyclic matrices in the layout of qkd_ldpc.h
 * (base matrix of mb x nb circulants of size Z; bit c*Z + o, check r*Z + i). They have their own index space
 * (0 .. qkd_ldpc_cv_code_count() - 1), separate from the BB84 codes of qkd_ldpc.h.
 *
 * The decoder (Hocevar's layered schedule, SiPS 2004: one base row per layer) runs the exact tanh-rule check
 * update in single precision, R_e = 2 atanh((-1)^s prod_{e' != e} tanh(Q_e'/2)) with Q_e = L_e - R_e, because
 * at the SNRs of CV-QKD (0.01-0.2) the messages are small and min-sum's approximation of this rule is coarse
 * (Jouguet, Kunz-Jacques & Leverrier, PRA 84, 062317 (2011) decode their codes with belief propagation).
 * LLRs are float nats, positive meaning "bit 0". exp/log are branch-free polynomial
 * approximations (relative error < 1e-6), so results are deterministic for a given build and input.
 *
 * qkd_ldpc_bp_new_bb84 builds the same decoder over BB84 code `code` of qkd_ldpc.h (its index space): BB84
 * reconciliation decodes a codeword min-sum fails with it before revealing bits (qkdd/postprocess/ldpc.py).
 *
 * A qkd_ldpc_bp owns its scratch: one per thread; decoding holds no global state.
 */
#ifndef QKD_LDPC_BP_H
#define QKD_LDPC_BP_H

#include <stddef.h>
#include <stdint.h>

#include "qkd_ldpc.h"

/* cffi:begin */
#define QKD_LDPC_BP_MAX_ITERATIONS 5000

typedef struct qkd_ldpc_bp qkd_ldpc_bp;

int qkd_ldpc_cv_code_count(void);
int qkd_ldpc_cv_code_get_info(uint32_t code, qkd_ldpc_code_info *out);
int qkd_ldpc_cv_code_get_entries(uint32_t code, uint32_t *rows, uint32_t *cols, uint32_t *shifts, size_t len);
int qkd_ldpc_cv_syndrome(uint32_t code, const uint8_t *bits, size_t n_bits, uint8_t *syndrome, size_t m_bits);
int qkd_ldpc_bp_new(qkd_ldpc_bp **out, uint32_t code);
int qkd_ldpc_bp_new_bb84(qkd_ldpc_bp **out, uint32_t code);
void qkd_ldpc_bp_free(qkd_ldpc_bp *d);
int64_t qkd_ldpc_bp_decode(qkd_ldpc_bp *d, const float *llr, size_t n_bits, const uint8_t *syndrome, size_t m_bits,
                           uint8_t *bits_out, size_t out_len, uint32_t max_iterations,
                           uint32_t stall_iterations);
/* cffi:end */

/* qkd_ldpc_bp_decode returns the iterations used (>= 1) when the hard decisions have the target syndrome, 0 when
 * max_iterations ran out or decoding stalled (bits_out then holds the last hard decisions), or a negative QKD_E*
 * code (bad lengths, non-finite LLRs, max_iterations out of 1..QKD_LDPC_BP_MAX_ITERATIONS). stall_iterations > 0
 * gives up after that many iterations in a row without fewer unsatisfied checks than before (0: never). */

#endif
