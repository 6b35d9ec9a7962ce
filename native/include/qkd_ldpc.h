/* qkd_ldpc.h - quasi-cyclic LDPC codes for syndrome-based reconciliation: syndromes and a layered
 * offset min-sum decoder (or, per decoder, a fixed-point sum-product one: qkd_ldpc_decoder_set_sum_product).
 *
 * Codes come from the tables in src/ldpc_codes.c (written by native/tools/ldpc_codes.py): a base
 * matrix of mb x nb entries, each empty or a Z x Z circulant permutation with shift s, whose row i
 * has its one in column (i + s) mod Z. Code bit j of base column c and offset o is bit c*Z + o of a
 * codeword of n = nb*Z bits; check r*Z + i is row i of base row r; m = mb*Z syndrome bits.
 *
 * Bits are one byte each (0 or 1). Log-likelihood ratios are int8 in [-127, 127], positive meaning
 * "bit 0": the caller scales them (bindings use 4 units per nat). The decoder processes one base row
 * per layer (Hocevar, "A reduced complexity decoder architecture via layered decoding of LDPC codes",
 * SiPS 2004) with normalised offset min-sum check updates (Chen & Fossorier, "Density evolution for two improved
 * BP-based decoding algorithms of LDPC codes", IEEE Commun. Lett. 6(5), 2002) and stops as soon as
 * the hard decisions have the target syndrome. The Z checks of a layer touch disjoint bits, so the
 * lane path (all Z checks of a layer at once, auto-vectorised; AVX2 and AVX-512BW intrinsics chosen at run time)
 * and the portable path (one check at a time) compute identical results, iteration for iteration.
 *
 * A qkd_ldpc_decoder owns its scratch: one per thread; decoding holds no global state.
 */
#ifndef QKD_LDPC_H
#define QKD_LDPC_H

#include <stddef.h>
#include <stdint.h>

/* cffi:begin */
#define QKD_LDPC_PATH_AUTO 0
#define QKD_LDPC_PATH_PORTABLE 1
#define QKD_LDPC_PATH_LANES 2
#define QKD_LDPC_PATH_AVX2 3
#define QKD_LDPC_PATH_AVX512 4
#define QKD_LDPC_PATH_AVX512VBMI 5     /* AVX-512BW and VBMI: sum-product's table by vpermb; min-sum as AVX512 */
#define QKD_LDPC_LLR_MAX 127
#define QKD_LDPC_MAX_ITERATIONS 1000
#define QKD_LDPC_STALL_ITERATIONS 12   /* give up after this many iterations without progress */
#define QKD_LDPC_SELF_CORRECTING 1     /* decoder flag: self-corrected min-sum (see below) */
#define QKD_LDPC_ENSEMBLE_MIN_SUM 0     /* degree profile by density evolution of the int8 min-sum decoder */
#define QKD_LDPC_ENSEMBLE_SUM_PRODUCT 1 /* ... of belief propagation (the sum-product decoder) */
#define QKD_LDPC_SPA_MAX_UNITS 8       /* sum-product: LLR units per nat at most (see below) */

typedef struct qkd_ldpc_code_info {
    uint32_t z;        /* circulant size */
    uint32_t mb;       /* base rows */
    uint32_t nb;       /* base columns */
    uint32_t edges;    /* non-empty base entries */
    uint32_t n_bits;   /* codeword length nb*z */
    uint32_t m_bits;   /* syndrome length mb*z */
    uint32_t ensemble; /* QKD_LDPC_ENSEMBLE_*: the decoder its degree profile was chosen for */
} qkd_ldpc_code_info;

typedef struct qkd_ldpc_decoder qkd_ldpc_decoder;

int qkd_ldpc_code_count(void);
int qkd_ldpc_code_get_info(uint32_t code, qkd_ldpc_code_info *out);
int qkd_ldpc_code_get_entries(uint32_t code, uint32_t *rows, uint32_t *cols, uint32_t *shifts, size_t len);
int qkd_ldpc_syndrome(uint32_t code, const uint8_t *bits, size_t n_bits, uint8_t *syndrome, size_t m_bits);
int qkd_ldpc_decoder_new(qkd_ldpc_decoder **out, uint32_t code);
void qkd_ldpc_decoder_free(qkd_ldpc_decoder *d);
int qkd_ldpc_path_available(uint32_t path);
int64_t qkd_ldpc_decode(qkd_ldpc_decoder *d, const int8_t *llr, size_t n_bits, const uint8_t *syndrome,
                        size_t m_bits, uint8_t *bits_out, size_t out_len, uint32_t max_iterations,
                        uint32_t scale_eighths, uint32_t offset, uint32_t path);
int qkd_ldpc_decoder_set_flags(qkd_ldpc_decoder *d, uint32_t flags);
int qkd_ldpc_decoder_set_sum_product(qkd_ldpc_decoder *d, uint32_t units_per_nat);
int64_t qkd_ldpc_decode_resume(qkd_ldpc_decoder *d, const int8_t *llr, size_t n_bits, const uint8_t *syndrome,
                               size_t m_bits, uint8_t *bits_out, size_t out_len, uint32_t max_iterations,
                               uint32_t scale_eighths, uint32_t offset, uint32_t path);
/* cffi:end */

/* qkd_ldpc_decode returns the iterations used (>= 1) when the hard decisions match the syndrome, 0 when
 * max_iterations ran out or decoding stalled (bits_out then holds the last hard decisions), or a negative
 * QKD_E* code.
 *
 * qkd_ldpc_decode_resume continues the last decode (or resume) call on the same decoder instead of starting
 * afresh: it keeps the check-to-bit messages and moves each posterior by the change of its channel LLR (bits
 * revealed since, now +-LLR_MAX), then iterates as qkd_ldpc_decode does and returns the same way. It refuses
 * (QKD_EINVAL) a decoder that has not decoded yet. Every path resumes identically.
 *
 * qkd_ldpc_decoder_set_flags(d, QKD_LDPC_SELF_CORRECTING) makes later decode/resume calls on d use self-corrected
 * min-sum (Savin, "Self-corrected min-sum decoding of LDPC codes", ISIT 2008): a bit-to-check message whose sign
 * differs from the one last sent on that edge (unless that was erased) is erased (sent as 0) for this update;
 * the posterior still moves by the check's new message. 0 (the default) is plain normalised offset min-sum.
 *
 * qkd_ldpc_decoder_set_sum_product(d, u), u = 1..QKD_LDPC_SPA_MAX_UNITS, makes later decode/resume calls on d run
 * layered sum-product (belief propagation) in int8 fixed point instead of min-sum, for LLRs of u units per nat: each
 * check's messages by forward/backward pairwise box-plus, min plus a correction read from a 32-entry table of
 * round(u ln(1 + e^(-x/u))) (ldpc.c). scale_eighths and offset are checked but not used; self-correction does not
 * apply. Paths: portable (also for LANES), AVX2, AVX-512BW and AVX-512 VBMI (AUTO: the widest available), bit-exact.
 * u = 0 returns to min-sum. QKD_EINVAL for u above the maximum (or a check of degree below 2). */

#endif
