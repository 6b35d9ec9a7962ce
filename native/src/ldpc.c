/* ldpc.c - syndromes and the layered offset min-sum decoder of the shipped QC-LDPC codes (qkd_ldpc.h), and its
 * int8 sum-product variant (the "sum-product" sections below).
 *
 * Message arithmetic (both paths, identical): a posterior L (int8, |L| <= 127) per code bit and a
 * check-to-bit message R (int8) per edge. Per layer and check: Q_e = clamp(L_e - R_e); with min1, min2
 * the two smallest |Q_e| and P = syndrome bit xor (parity of the signs of all Q_e),
 *   R_e' = (-1)^(P xor [Q_e < 0]) * max(0, floor((|Q_e| == min1 ? min2 : min1) * scale / 8) - offset)
 *   L_e' = clamp(Q_e + R_e').
 * (|Q_e| == min1 picks min2 for the edge holding the minimum; on a tie min2 == min1, so it is exact.)
 * After the update the parity of the new hard decisions of the layer's bits is compared with the
 * syndrome; an iteration in which every layer held is confirmed with a full syndrome check, and only
 * then does decoding stop. The count of checks failing at their layer is the progress measure: when it
 * has not reached a new minimum for QKD_LDPC_STALL_ITERATIONS iterations, decoding gives up.
 *
 * Paths: portable (one check at a time), lanes (the Z checks of a layer at once, plain C the compiler
 * vectorises) and AVX2 / AVX-512BW (int8 intrinsics, 32 / 64 checks per chunk, min1/min2/parity in registers;
 * about 3x the auto-vectorised lanes). All compute the same numbers. qkd_ldpc_decode_resume keeps the messages
 * of the previous call and adds the change of the channel LLRs to the posteriors (blind reveals).
 *
 * Self-corrected variant (decoder flag QKD_LDPC_SELF_CORRECTING; Savin, ISIT 2008): the check sees
 * Q'_e = 0 instead of Q_e when Q_e's sign differs from that of the Q'_e it was sent last (if that was not 0);
 * min1, min2, P and the sign of R_e' use Q', the posterior is still clamp(Q_e + R_e').
 */
#include "qkd_ldpc.h"
#include "qkd_bits.h"
#include "ldpc_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define QKD_LDPC_PAD 64   /* bytes after each posterior column repeating its start (one SIMD load wide) */

struct qkd_ldpc_decoder {
    const qkd_ldpc_table *t;
    uint32_t max_row_degree;
    uint32_t stride;      /* bytes per base column in posterior: z, then QKD_LDPC_PAD copied from its start */
    int8_t *posterior;    /* nb * stride */
    int8_t *channel;      /* n_bits: the LLRs of the last decode/resume call (resume adds the difference) */
    int primed;           /* a decode call has set posterior, channel and messages */
    int8_t *messages;     /* edges * z */
    int8_t *sent;         /* edges * z: bit-to-check messages as last sent (self-correcting rule), else unused */
    uint32_t flags;       /* QKD_LDPC_SELF_CORRECTING */
    int8_t *q;            /* max_row_degree * z */
    uint32_t spa_units;   /* 0: min-sum; else sum-product with LLRs of this many units per nat */
    uint8_t spa_cap;      /* sum-product: check-to-bit magnitudes at most, spa_message_cap(spa_units) (see below) */
    uint8_t corr[64];     /* sum-product: round(units * ln(1 + exp(-x / units))), x = 0..31; 32..63 zero */
    uint8_t *fwd;         /* sum-product: forward box-plus partial results, max_row_degree * max(z, 64) */
    uint8_t *bwd;         /* sum-product, SIMD paths: backward partial results, 3 * max(z, 64) */
    unsigned long long *masks; /* sum-product, AVX-512 paths: parity and hard-decision masks, 2 per 64 checks */
    uint8_t *min1, *min2, *parity; /* z each */
};

static int8_t clamp8(int v)
{
    return (int8_t)(v > QKD_LDPC_LLR_MAX ? QKD_LDPC_LLR_MAX : (v < -QKD_LDPC_LLR_MAX ? -QKD_LDPC_LLR_MAX : v));
}

int qkd_ldpc_code_count(void)
{
    return (int)qkd_ldpc_table_count;
}

static const qkd_ldpc_table *table(uint32_t code)
{
    return code < qkd_ldpc_table_count ? &qkd_ldpc_tables[code] : NULL;
}

int qkd_ldpc_code_get_info(uint32_t code, qkd_ldpc_code_info *out)
{
    return qkd_ldpc_table_info(table(code), out);
}

int qkd_ldpc_code_get_entries(uint32_t code, uint32_t *rows, uint32_t *cols, uint32_t *shifts, size_t len)
{
    return qkd_ldpc_table_entries(table(code), rows, cols, shifts, len);
}

int qkd_ldpc_syndrome(uint32_t code, const uint8_t *bits, size_t n_bits, uint8_t *syndrome, size_t m_bits)
{
    return qkd_ldpc_table_syndrome(table(code), bits, n_bits, syndrome, m_bits);
}

void qkd_ldpc_decoder_free(qkd_ldpc_decoder *d)
{
    if (!d)
        return;
    free(d->posterior);
    free(d->channel);
    free(d->messages);
    free(d->sent);
    free(d->q);
    free(d->fwd);
    free(d->bwd);
    free(d->masks);
    free(d->min1);
    free(d->min2);
    free(d->parity);

    free(d);
}

int qkd_ldpc_decoder_new(qkd_ldpc_decoder **out, uint32_t code)
{
    const qkd_ldpc_table *t = table(code);
    if (!out || !t)
        return QKD_EINVAL;
    qkd_ldpc_decoder *d = calloc(1, sizeof *d);
    if (!d)
        return QKD_ENOMEM;
    d->t = t;
    d->max_row_degree = qkd_ldpc_table_max_row_degree(t);
    const size_t z = t->z;
    d->stride = (uint32_t)z + QKD_LDPC_PAD;
    d->posterior = aligned_alloc(64, ((size_t)t->nb * d->stride + 63) / 64 * 64);
    d->channel = malloc((size_t)t->nb * z);
    d->messages = aligned_alloc(64, (size_t)t->edges * z);
    d->sent = aligned_alloc(64, (size_t)t->edges * z);
    d->q = aligned_alloc(64, (size_t)d->max_row_degree * z);
    const size_t lanes = z > 64 ? (z + 63) / 64 * 64 : 64;
    d->fwd = aligned_alloc(64, (size_t)d->max_row_degree * lanes);
    d->bwd = aligned_alloc(64, 3 * lanes);   /* AVX2: backward results, parities, hard decisions */
    if (d->bwd)
        memset(d->bwd, 0, 3 * lanes);   /* read (not used) before the first write of a layer */
    d->masks = malloc(2 * (lanes / 64) * sizeof *d->masks);
    d->min1 = malloc(z);
    d->min2 = malloc(z);
    d->parity = malloc(z);

    if (!d->posterior || !d->channel || !d->messages || !d->sent || !d->q || !d->fwd || !d->bwd || !d->masks ||
        !d->min1 || !d->min2 || !d->parity) {
        qkd_ldpc_decoder_free(d);
        return QKD_ENOMEM;
    }
    *out = d;
    return QKD_OK;
}

/* ---- lane path: the Z checks of a layer at once, on contiguous rotated copies ---- */

/* One layer; returns how many checks of the layer the updated hard decisions leave unsatisfied.
 * Inlined into a default-target and an AVX2-target wrapper, so GCC/Clang vectorise it for each. */
static inline __attribute__((always_inline)) uint32_t layer_lanes(qkd_ldpc_decoder *d, uint32_t r,
                                                             const uint8_t *syndrome, int scale, int offset)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    const uint32_t first = t->row_start[r], degree = (uint32_t)(t->row_start[r + 1] - first);
    uint8_t *restrict min1 = d->min1, *restrict min2 = d->min2, *restrict parity = d->parity;
    const uint8_t *restrict s = syndrome + (size_t)r * z;
    for (uint32_t i = 0; i < z; i++) {
        min1[i] = QKD_LDPC_LLR_MAX;
        min2[i] = QKD_LDPC_LLR_MAX;
        parity[i] = s[i] & 1u;
    }
    const int sc = (d->flags & QKD_LDPC_SELF_CORRECTING) != 0;
    for (uint32_t e = 0; e < degree; e++) {
        int8_t *restrict q = d->q + (size_t)e * z;
        int8_t *restrict sent = d->sent + (size_t)(first + e) * z;
        const int8_t *restrict msg = d->messages + (size_t)(first + e) * z;
        const int8_t *l = d->posterior + (size_t)t->cols[first + e] * d->stride;
        const uint32_t shift = t->shifts[first + e];
        memcpy(q, l + shift, z - shift);
        memcpy(q + (z - shift), l, shift);
        for (uint32_t i = 0; i < z; i++) {
            int v = q[i] - msg[i];
            v = v > QKD_LDPC_LLR_MAX ? QKD_LDPC_LLR_MAX : v;
            v = v < -QKD_LDPC_LLR_MAX ? -QKD_LDPC_LLR_MAX : v;
            q[i] = (int8_t)v;
            if (sc) { /* erase a message whose sign flipped since it was last sent (unless that one was erased) */
                int prev = sent[i];
                v = (prev != 0 && ((prev ^ v) < 0)) ? 0 : v;
                sent[i] = (int8_t)v;
            }
            uint8_t a = (uint8_t)(v < 0 ? -v : v);
            uint8_t lo = min1[i] < a ? min1[i] : a;
            uint8_t hi = min1[i] < a ? a : min1[i];
            min2[i] = min2[i] < hi ? min2[i] : hi;
            min1[i] = lo;
            parity[i] ^= (uint8_t)(v < 0);
        }
    }
    uint32_t unsat = 0;
    for (uint32_t e = 0; e < degree; e++) {
        int8_t *restrict q = d->q + (size_t)e * z;
        int8_t *restrict msg = d->messages + (size_t)(first + e) * z;
        const int8_t *restrict sent = d->sent + (size_t)(first + e) * z;
        for (uint32_t i = 0; i < z; i++) { /* branch-free, so that it vectorises */
            int16_t v = sc ? sent[i] : q[i];  /* the message as the check used it */
            int16_t vneg = (int16_t)-(v < 0);
            int16_t a = (int16_t)((v ^ vneg) - vneg);
            int16_t pick = (int16_t)-(a == min1[i]);
            int16_t m = (int16_t)((min2[i] & pick) | (min1[i] & ~pick));
            m = (int16_t)(((m * scale) >> 3) - offset);
            m = (int16_t)(m & ~(m >> 15));
            int16_t neg = (int16_t)-(int16_t)(parity[i] ^ (uint8_t)(v < 0));
            int16_t rn = (int16_t)((m ^ neg) - neg);
            msg[i] = (int8_t)rn;
            int16_t w = (int16_t)(q[i] + rn);
            w = w > QKD_LDPC_LLR_MAX ? QKD_LDPC_LLR_MAX : w;
            w = w < -QKD_LDPC_LLR_MAX ? -QKD_LDPC_LLR_MAX : w;
            q[i] = (int8_t)w;
        }
    }
    /* Hard-decision parity of the updated layer against the syndrome (min1 reused as accumulator). */
    for (uint32_t i = 0; i < z; i++)
        min1[i] = s[i] & 1u;
    for (uint32_t e = 0; e < degree; e++) {
        int8_t *q = d->q + (size_t)e * z;
        int8_t *l = d->posterior + (size_t)t->cols[first + e] * d->stride;
        const uint32_t shift = t->shifts[first + e];
        for (uint32_t i = 0; i < z; i++)
            min1[i] ^= (uint8_t)(q[i] < 0);
        memcpy(l + shift, q, z - shift);
        memcpy(l, q + (z - shift), shift);
    }
    for (uint32_t i = 0; i < z; i++)
        unsat += min1[i];
    return unsat;
}

static uint32_t iteration_lanes(qkd_ldpc_decoder *d, const uint8_t *syndrome, int scale, int offset)
{
    uint32_t unsat = 0;
    for (uint32_t r = 0; r < d->t->mb; r++)
        unsat += layer_lanes(d, r, syndrome, scale, offset);
    return unsat;
}

#if defined(__x86_64__) || defined(__i386__)
#define QKD_LDPC_HAVE_AVX2 1
#include <immintrin.h>

/* ---- SIMD paths: the lane path's arithmetic with explicit int8 intrinsics ----
 * A layer is processed a chunk of W lanes (checks) at a time, all its edges per chunk, so min1, min2 and the
 * parities stay in registers. A chunk of an edge reads W consecutive bits of the rotated column starting at
 * (i0 + shift) mod z; the QKD_LDPC_PAD bytes after each column repeat its start, so that read is one unaligned
 * load. The updated posteriors go through d->q and are written back (rotated, with the pad) after the layer.
 * Saturating int8 adds/subtracts clamped at -127 are exactly clamp8(); the check's scaled magnitudes are
 * computed once per chunk in 16 bits (unpack, multiply, shift, pack restores the byte order). */

static void write_back_layer(qkd_ldpc_decoder *d, uint32_t first, uint32_t degree)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    for (uint32_t e = 0; e < degree; e++) {
        const int8_t *q = d->q + (size_t)e * z;
        int8_t *l = d->posterior + (size_t)t->cols[first + e] * d->stride;
        const uint32_t shift = t->shifts[first + e];
        memcpy(l + shift, q, z - shift);
        memcpy(l, q + (z - shift), shift);
        memcpy(l + z, l, QKD_LDPC_PAD);
    }
}

__attribute__((target("avx2"))) static inline __m256i scaled_avx2(__m256i m, __m256i scale, __m256i offset)
{
    const __m256i zero = _mm256_setzero_si256();
    __m256i lo = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_unpacklo_epi8(m, zero), scale), 3);
    __m256i hi = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_unpackhi_epi8(m, zero), scale), 3);
    return _mm256_subs_epu8(_mm256_packus_epi16(lo, hi), offset);
}

__attribute__((target("avx2,popcnt"))) static uint32_t iteration_avx2(qkd_ldpc_decoder *d, const uint8_t *syndrome,
                                                                      int scale, int offset)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    const __m256i lmin = _mm256_set1_epi8(-QKD_LDPC_LLR_MAX), lmax = _mm256_set1_epi8(QKD_LDPC_LLR_MAX);
    const __m256i one = _mm256_set1_epi8(1), zero = _mm256_setzero_si256();
    const __m256i scale16 = _mm256_set1_epi16((short)scale), offset8 = _mm256_set1_epi8((char)offset);
    const int sc = (d->flags & QKD_LDPC_SELF_CORRECTING) != 0;
    uint32_t unsat = 0;
    for (uint32_t r = 0; r < t->mb; r++) {
        const uint32_t first = t->row_start[r], degree = (uint32_t)(t->row_start[r + 1] - first);
        const uint8_t *s = syndrome + (size_t)r * z;
        for (uint32_t i0 = 0; i0 < z; i0 += 32) {
            __m256i min1 = lmax, min2 = lmax;
            __m256i syn = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(s + i0)), one), one);
            __m256i parity = syn; /* sign bit: syndrome bit xor signs of Q */
            for (uint32_t e = 0; e < degree; e++) {
                const int8_t *l = d->posterior + (size_t)t->cols[first + e] * d->stride
                                  + (i0 + t->shifts[first + e]) % z;
                __m256i msg = _mm256_load_si256((const __m256i *)(d->messages + (size_t)(first + e) * z + i0));
                __m256i q = _mm256_max_epi8(_mm256_subs_epi8(_mm256_loadu_si256((const __m256i *)l), msg), lmin);
                _mm256_store_si256((__m256i *)(d->q + (size_t)e * z + i0), q);
                if (sc) {
                    __m256i *sp = (__m256i *)(d->sent + (size_t)(first + e) * z + i0);
                    __m256i prev = _mm256_load_si256(sp);
                    __m256i flip = _mm256_andnot_si256(_mm256_cmpeq_epi8(prev, zero),
                                                       _mm256_cmpgt_epi8(zero, _mm256_xor_si256(prev, q)));
                    q = _mm256_andnot_si256(flip, q);
                    _mm256_store_si256(sp, q);
                }
                __m256i a = _mm256_abs_epi8(q);
                min2 = _mm256_min_epu8(min2, _mm256_max_epu8(min1, a));
                min1 = _mm256_min_epu8(min1, a);
                parity = _mm256_xor_si256(parity, q);
            }
            const __m256i s1 = scaled_avx2(min1, scale16, offset8), s2 = scaled_avx2(min2, scale16, offset8);
            __m256i hard = syn;
            for (uint32_t e = 0; e < degree; e++) {
                __m256i *qp = (__m256i *)(d->q + (size_t)e * z + i0);
                __m256i *mp = (__m256i *)(d->messages + (size_t)(first + e) * z + i0);
                __m256i q = _mm256_load_si256(qp);
                __m256i u = sc ? _mm256_load_si256((const __m256i *)(d->sent + (size_t)(first + e) * z + i0)) : q;
                __m256i mag = _mm256_blendv_epi8(s1, s2, _mm256_cmpeq_epi8(_mm256_abs_epi8(u), min1));
                __m256i rn = _mm256_blendv_epi8(mag, _mm256_sub_epi8(zero, mag), _mm256_xor_si256(parity, u));
                _mm256_store_si256(mp, rn);
                __m256i w = _mm256_max_epi8(_mm256_adds_epi8(q, rn), lmin);
                _mm256_store_si256(qp, w);
                hard = _mm256_xor_si256(hard, w);
            }
            unsat += (uint32_t)__builtin_popcount((unsigned)_mm256_movemask_epi8(hard));
        }
        write_back_layer(d, first, degree);
    }
    return unsat;
}

__attribute__((target("avx512bw,avx512vl"))) static inline __m512i scaled_avx512(__m512i m, __m512i scale,
                                                                                __m512i offset)
{
    const __m512i zero = _mm512_setzero_si512();
    __m512i lo = _mm512_srli_epi16(_mm512_mullo_epi16(_mm512_unpacklo_epi8(m, zero), scale), 3);
    __m512i hi = _mm512_srli_epi16(_mm512_mullo_epi16(_mm512_unpackhi_epi8(m, zero), scale), 3);
    return _mm512_subs_epu8(_mm512_packus_epi16(lo, hi), offset);
}

__attribute__((target("avx512bw,avx512vl,popcnt"))) static uint32_t
iteration_avx512(qkd_ldpc_decoder *d, const uint8_t *syndrome, int scale, int offset)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    const __m512i lmin = _mm512_set1_epi8(-QKD_LDPC_LLR_MAX), lmax = _mm512_set1_epi8(QKD_LDPC_LLR_MAX);
    const __m512i one = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
    const __m512i scale16 = _mm512_set1_epi16((short)scale), offset8 = _mm512_set1_epi8((char)offset);
    const int sc = (d->flags & QKD_LDPC_SELF_CORRECTING) != 0;
    uint32_t unsat = 0;
    for (uint32_t r = 0; r < t->mb; r++) {
        const uint32_t first = t->row_start[r], degree = (uint32_t)(t->row_start[r + 1] - first);
        const uint8_t *s = syndrome + (size_t)r * z;
        for (uint32_t i0 = 0; i0 < z; i0 += 64) {
            __m512i min1 = lmax, min2 = lmax;
            const __mmask64 syn = _mm512_test_epi8_mask(_mm512_loadu_si512((const void *)(s + i0)), one);
            __mmask64 parity = syn;
            for (uint32_t e = 0; e < degree; e++) {
                const int8_t *l = d->posterior + (size_t)t->cols[first + e] * d->stride
                                  + (i0 + t->shifts[first + e]) % z;
                __m512i msg = _mm512_load_si512((const void *)(d->messages + (size_t)(first + e) * z + i0));
                __m512i q = _mm512_max_epi8(_mm512_subs_epi8(_mm512_loadu_si512((const void *)l), msg), lmin);
                _mm512_store_si512((void *)(d->q + (size_t)e * z + i0), q);
                if (sc) {
                    void *sp = (void *)(d->sent + (size_t)(first + e) * z + i0);
                    __m512i prev = _mm512_load_si512(sp);
                    __mmask64 flip = _mm512_test_epi8_mask(prev, prev) & _mm512_movepi8_mask(_mm512_xor_si512(prev, q));
                    q = _mm512_maskz_mov_epi8(~flip, q);
                    _mm512_store_si512(sp, q);
                }
                __m512i a = _mm512_abs_epi8(q);
                min2 = _mm512_min_epu8(min2, _mm512_max_epu8(min1, a));
                min1 = _mm512_min_epu8(min1, a);
                parity ^= _mm512_movepi8_mask(q);
            }
            const __m512i s1 = scaled_avx512(min1, scale16, offset8), s2 = scaled_avx512(min2, scale16, offset8);
            __mmask64 hard = syn;
            for (uint32_t e = 0; e < degree; e++) {
                void *qp = (void *)(d->q + (size_t)e * z + i0);
                void *mp = (void *)(d->messages + (size_t)(first + e) * z + i0);
                __m512i q = _mm512_load_si512(qp);
                __m512i u = sc ? _mm512_load_si512((const void *)(d->sent + (size_t)(first + e) * z + i0)) : q;
                __m512i mag = _mm512_mask_blend_epi8(_mm512_cmpeq_epi8_mask(_mm512_abs_epi8(u), min1), s1, s2);
                __m512i rn = _mm512_mask_sub_epi8(mag, parity ^ _mm512_movepi8_mask(u), zero, mag);
                _mm512_store_si512(mp, rn);
                __m512i w = _mm512_max_epi8(_mm512_adds_epi8(q, rn), lmin);
                _mm512_store_si512(qp, w);
                hard ^= _mm512_movepi8_mask(w);
            }
            unsat += (uint32_t)__builtin_popcountll(hard);
        }
        write_back_layer(d, first, degree);
    }
    return unsat;
}

/* ---- sum-product, AVX2: the portable sum-product's arithmetic, 32 checks per chunk ----
 * The correction table (32 bytes) is two 16-byte pshufb tables: an index x <= 31 reads the low table at x + 0x70
 * (saturating; bit 7 set, so 0, for x >= 16) and the high table at x - 16 (negative, so 0, for x < 16). */

__attribute__((target("avx2"))) static inline __m256i spa_corr_avx2(__m256i x, __m256i tlo, __m256i thi)
{
    return _mm256_or_si256(_mm256_shuffle_epi8(tlo, _mm256_adds_epu8(x, _mm256_set1_epi8(0x70))),
                           _mm256_shuffle_epi8(thi, _mm256_sub_epi8(x, _mm256_set1_epi8(16))));
}

__attribute__((target("avx2"))) static inline __m256i spa_boxplus_avx2(__m256i a, __m256i b, __m256i tlo,
                                                                       __m256i thi)
{
    const __m256i top = _mm256_set1_epi8(31);
    __m256i sum = _mm256_min_epu8(_mm256_adds_epu8(a, b), top);
    __m256i diff = _mm256_min_epu8(_mm256_or_si256(_mm256_subs_epu8(a, b), _mm256_subs_epu8(b, a)), top);
    return _mm256_subs_epu8(_mm256_adds_epu8(_mm256_min_epu8(a, b), spa_corr_avx2(sum, tlo, thi)),
                            spa_corr_avx2(diff, tlo, thi));
}

__attribute__((target("avx2,popcnt"))) static uint32_t iteration_spa_avx2(qkd_ldpc_decoder *d,
                                                                          const uint8_t *syndrome, int scale,
                                                                          int offset)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z, chunks = z / 32;
    const __m256i lmin = _mm256_set1_epi8(-QKD_LDPC_LLR_MAX), one = _mm256_set1_epi8(1);
    const __m256i zero = _mm256_setzero_si256(), cap = _mm256_set1_epi8((char)d->spa_cap);
    const __m256i tlo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)d->corr));
    const __m256i thi = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(d->corr + 16)));
    /* the layer edge by edge over all its chunks, as the AVX-512 paths (below): sign-bit parities and hard
     * decisions per chunk after the backward results in d->bwd */
    __m256i *fwd = (__m256i *)d->fwd, *bwd = (__m256i *)d->bwd, *parity = bwd + chunks, *hard = parity + chunks;
    uint32_t unsat = 0;
    for (uint32_t r = 0; r < t->mb; r++) {
        const uint32_t first = t->row_start[r], degree = (uint32_t)(t->row_start[r + 1] - first);
        const uint8_t *s = syndrome + (size_t)r * z;
        for (uint32_t c = 0; c < chunks; c++)
            parity[c] = hard[c] =
                _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(s + c * 32)), one), one);
        for (uint32_t e = 0; e < degree; e++) {
            const int8_t *col = d->posterior + (size_t)t->cols[first + e] * d->stride;
            const uint32_t shift = t->shifts[first + e];
            const __m256i *before = fwd + (size_t)(e ? e - 1 : 0) * chunks;
            __m256i *here = fwd + (size_t)e * chunks;
            for (uint32_t c = 0; c < chunks; c++) {
                const int8_t *l = col + (c * 32 + shift) % z;
                __m256i msg = _mm256_load_si256((const __m256i *)(d->messages + (size_t)(first + e) * z + c * 32));
                __m256i q = _mm256_max_epi8(_mm256_subs_epi8(_mm256_loadu_si256((const __m256i *)l), msg), lmin);
                _mm256_store_si256((__m256i *)(d->q + (size_t)e * z + c * 32), q);
                __m256i a = _mm256_abs_epi8(q);
                here[c] = e ? spa_boxplus_avx2(before[c], a, tlo, thi) : a;
                parity[c] = _mm256_xor_si256(parity[c], q);
            }
        }
        for (uint32_t e = degree; e-- > 0;) {
            const __m256i *before = fwd + (size_t)(e ? e - 1 : 0) * chunks;
            for (uint32_t c = 0; c < chunks; c++) {
                __m256i *qp = (__m256i *)(d->q + (size_t)e * z + c * 32);
                __m256i q = _mm256_load_si256(qp);
                __m256i a = _mm256_abs_epi8(q);
                __m256i f = before[c], b = bwd[c];
                __m256i out = e == degree - 1 ? f : e == 0 ? b : spa_boxplus_avx2(f, b, tlo, thi);
                bwd[c] = e == degree - 1 ? a : spa_boxplus_avx2(b, a, tlo, thi);
                out = _mm256_min_epu8(out, cap);
                __m256i rn = _mm256_blendv_epi8(out, _mm256_sub_epi8(zero, out), _mm256_xor_si256(parity[c], q));
                _mm256_store_si256((__m256i *)(d->messages + (size_t)(first + e) * z + c * 32), rn);
                __m256i w = _mm256_max_epi8(_mm256_adds_epi8(q, rn), lmin);
                _mm256_store_si256(qp, w);
                hard[c] = _mm256_xor_si256(hard[c], w);
            }
        }
        for (uint32_t c = 0; c < chunks; c++)
            unsat += (uint32_t)__builtin_popcount((unsigned)_mm256_movemask_epi8(hard[c]));
        write_back_layer(d, first, degree);
    }
    return unsat;
}

/* ---- sum-product, AVX-512BW: the same, 64 checks per chunk (the pshufb tables repeated in each 128-bit lane) ----
 * Unlike the AVX2 path, a layer goes edge by edge over all its chunks (not chunk by chunk over all edges): the forward
 * and backward box-plus chains of different chunks are independent and overlap, where one chunk's chain alone is
 * latency-bound (an iteration of the rate-0.84 code 84 -> 66 us); the partial results of every chunk live in d->fwd
 * (degree x z bytes) and d->bwd (z), the parities and hard decisions in d->masks. */

__attribute__((target("avx512bw,avx512vl"))) static inline __m512i spa_corr_avx512(__m512i x, __m512i tlo,
                                                                                  __m512i thi)
{
    return _mm512_or_si512(_mm512_shuffle_epi8(tlo, _mm512_adds_epu8(x, _mm512_set1_epi8(0x70))),
                           _mm512_shuffle_epi8(thi, _mm512_sub_epi8(x, _mm512_set1_epi8(16))));
}

__attribute__((target("avx512bw,avx512vl"))) static inline __m512i spa_boxplus_avx512(__m512i a, __m512i b,
                                                                                     __m512i tlo, __m512i thi)
{
    const __m512i top = _mm512_set1_epi8(31);
    __m512i sum = _mm512_min_epu8(_mm512_adds_epu8(a, b), top);
    __m512i diff = _mm512_min_epu8(_mm512_or_si512(_mm512_subs_epu8(a, b), _mm512_subs_epu8(b, a)), top);
    return _mm512_subs_epu8(_mm512_adds_epu8(_mm512_min_epu8(a, b), spa_corr_avx512(sum, tlo, thi)),
                            spa_corr_avx512(diff, tlo, thi));
}

#define SPA512_NAME iteration_spa_avx512
#define SPA512_ATTR __attribute__((target("avx512bw,avx512vl,popcnt")))
#define SPA512_TABLE                                                                                         \
    const __m512i tlo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)d->corr));                  \
    const __m512i thi = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(d->corr + 16)));
#define SPA512_BOXPLUS(a, b) spa_boxplus_avx512(a, b, tlo, thi)
#include "ldpc_spa512_impl.h"
#undef SPA512_NAME
#undef SPA512_ATTR
#undef SPA512_TABLE
#undef SPA512_BOXPLUS

/* ---- sum-product, AVX-512 VBMI: the same, the correction table read by one vpermb (64 entries, 32-63 zero) ---- */

__attribute__((target("avx512bw,avx512vl,avx512vbmi"))) static inline __m512i spa_boxplus_vbmi(__m512i a, __m512i b,
                                                                                            __m512i table)
{
    const __m512i top = _mm512_set1_epi8(31);
    __m512i sum = _mm512_min_epu8(_mm512_adds_epu8(a, b), top);
    __m512i diff = _mm512_min_epu8(_mm512_or_si512(_mm512_subs_epu8(a, b), _mm512_subs_epu8(b, a)), top);
    return _mm512_subs_epu8(_mm512_adds_epu8(_mm512_min_epu8(a, b), _mm512_permutexvar_epi8(sum, table)),
                            _mm512_permutexvar_epi8(diff, table));
}

#define SPA512_NAME iteration_spa_avx512vbmi
#define SPA512_ATTR __attribute__((target("avx512bw,avx512vl,avx512vbmi,popcnt")))
#define SPA512_TABLE const __m512i table = _mm512_loadu_si512((const void *)d->corr);
#define SPA512_BOXPLUS(a, b) spa_boxplus_vbmi(a, b, table)
#include "ldpc_spa512_impl.h"
#undef SPA512_NAME
#undef SPA512_ATTR
#undef SPA512_TABLE
#undef SPA512_BOXPLUS
#else
#define QKD_LDPC_HAVE_AVX2 0
#endif

/* ---- portable path: one check at a time, the same arithmetic ---- */

static uint32_t iteration_portable(qkd_ldpc_decoder *d, const uint8_t *syndrome, int scale, int offset)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    const int sc = (d->flags & QKD_LDPC_SELF_CORRECTING) != 0;
    uint32_t unsat = 0;
    for (uint32_t r = 0; r < t->mb; r++) {
        const uint32_t first = t->row_start[r], degree = (uint32_t)(t->row_start[r + 1] - first);
        for (uint32_t i = 0; i < z; i++) {
            int min1 = QKD_LDPC_LLR_MAX, min2 = QKD_LDPC_LLR_MAX, parity = syndrome[(size_t)r * z + i] & 1;
            for (uint32_t e = 0; e < degree; e++) {
                size_t bit = (size_t)t->cols[first + e] * d->stride + (i + t->shifts[first + e]) % z;
                int8_t *msg = &d->messages[(size_t)(first + e) * z + i];
                int v = clamp8(d->posterior[bit] - *msg);
                d->q[e] = (int8_t)v;
                if (sc) {
                    int8_t *sent = &d->sent[(size_t)(first + e) * z + i];
                    v = (*sent != 0 && ((*sent ^ v) < 0)) ? 0 : v;
                    *sent = (int8_t)v;
                }
                int a = v < 0 ? -v : v;
                if (a < min1) {
                    min2 = min1;
                    min1 = a;
                } else if (a < min2) {
                    min2 = a;
                }
                parity ^= v < 0;
            }
            int check = syndrome[(size_t)r * z + i] & 1;
            for (uint32_t e = 0; e < degree; e++) {
                size_t bit = (size_t)t->cols[first + e] * d->stride + (i + t->shifts[first + e]) % z;
                int8_t *msg = &d->messages[(size_t)(first + e) * z + i];
                int v = sc ? d->sent[(size_t)(first + e) * z + i] : d->q[e];
                int a = v < 0 ? -v : v;
                int m = (((a == min1 ? min2 : min1) * scale) >> 3) - offset;
                m = m < 0 ? 0 : m;
                int rn = (parity ^ (v < 0)) ? -m : m;
                *msg = (int8_t)rn;
                d->posterior[bit] = clamp8(d->q[e] + rn);
                check ^= d->posterior[bit] < 0;
            }
            unsat += (uint32_t)check;
        }
    }
    return unsat;
}

/* ---- sum-product (decoder set by qkd_ldpc_decoder_set_sum_product), portable: one check at a time ----
 * The check sends each edge the box-plus of the other edges' Q (Hagenauer, Offer & Papke, IEEE Trans. IT 42(2),
 * 1996): magnitude by the pairwise rule
 *   |a| [+] |b| = max(0, min(|a|, |b|) + corr[min(|a| + |b|, 31)] - corr[min(||a| - |b||, 31)])
 * (corr the rounded log(1 + e^-x) table, Hu, Eleftheriou, Arnold & Dholakia, GLOBECOM 2001), over the edges forward
 * (f_k = f_{k-1} [+] |Q_k|) and backward (b_k), the edge e taking f_{e-1} [+] b_{e+1}; sign P xor sign(Q_e) as in
 * min-sum, magnitude capped (spa_message_cap): a posterior saturated at 127 then keeps its sign through
 * Q = L - R and L' = Q + R' (uncapped, the exact box-plus messages of a converged word reach 127 and a saturated
 * posterior flips when one check turns: decoding diverged at 7-8 units per nat). The posterior, early termination
 * and stall rule are min-sum's. */

/* The check-to-bit cap: 7.75 nats, 31 at the 4 units per nat the bindings use. There a bit of column degree 3 whose
 * channel LLR is at most 34 (QBER 0.02 % and up) holds all its messages below saturation, 34 + 3 * 31 = 127. With a
 * cap of 47 a posterior clipped at 127 forgot up to 47 units and one check turning took a converged bit across zero:
 * codewords a few wrong bits from the answer diverged to 15 000-35 000 wrong bits within two iterations (code 38 at
 * f 1.4, 10 of 300 codewords; bench, 192 codewords each of codes 21, 38 and 39: with 47 the worst 3 % needed f
 * 1.18-1.23, with 31 1.12-1.17, the median alike; 27 and 35 within 0.001 of 31 per frame). Coarser units keep the
 * 7.75 nats; finer ones have less room below saturation and grow the cap by 4 a unit (bench, 20 codewords a point,
 * codes 28, 38, 39 at 0.8-3 % errors: at 6 units 31-39 decoded most, 23 and 55 far fewer; at 8 units 47 decoded
 * every word of the easiest case, 31 12 of 20 and 63 none, and no cap decoded the rate-0.84 code at 1.9 %). */
static uint8_t spa_message_cap(uint32_t units_per_nat)
{
    return (uint8_t)(units_per_nat <= 4 ? (31 * units_per_nat + 2) / 4 : 31 + 4 * (units_per_nat - 4));
}

static inline int spa_boxplus(const uint8_t *corr, int a, int b)
{
    int sum = a + b, diff = a > b ? a - b : b - a;
    int v = (a < b ? a : b) + corr[sum > 31 ? 31 : sum] - corr[diff > 31 ? 31 : diff];
    return v < 0 ? 0 : v;
}

static uint32_t iteration_spa_portable(qkd_ldpc_decoder *d, const uint8_t *syndrome, int scale, int offset)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    uint8_t *fwd = d->fwd;
    uint32_t unsat = 0;
    for (uint32_t r = 0; r < t->mb; r++) {
        const uint32_t first = t->row_start[r], degree = (uint32_t)(t->row_start[r + 1] - first);
        for (uint32_t i = 0; i < z; i++) {
            int parity = syndrome[(size_t)r * z + i] & 1, f = 0;
            for (uint32_t e = 0; e < degree; e++) {
                size_t bit = (size_t)t->cols[first + e] * d->stride + (i + t->shifts[first + e]) % z;
                int v = clamp8(d->posterior[bit] - d->messages[(size_t)(first + e) * z + i]);
                d->q[e] = (int8_t)v;
                int a = v < 0 ? -v : v;
                f = e ? spa_boxplus(d->corr, f, a) : a;
                fwd[e] = (uint8_t)f;
                parity ^= v < 0;
            }
            int check = syndrome[(size_t)r * z + i] & 1, b = 0;
            for (uint32_t e = degree; e-- > 0;) {
                size_t bit = (size_t)t->cols[first + e] * d->stride + (i + t->shifts[first + e]) % z;
                int v = d->q[e], a = v < 0 ? -v : v;
                int out = e == degree - 1 ? fwd[e - 1] : e == 0 ? b : spa_boxplus(d->corr, fwd[e - 1], b);
                out = out > d->spa_cap ? d->spa_cap : out;
                b = e == degree - 1 ? a : spa_boxplus(d->corr, b, a);
                int rn = (parity ^ (v < 0)) ? -out : out;
                d->messages[(size_t)(first + e) * z + i] = (int8_t)rn;
                d->posterior[bit] = clamp8(v + rn);
                check ^= d->posterior[bit] < 0;
            }
            unsat += (uint32_t)check;
        }
    }
    return unsat;
}

/* Do the hard decisions (posterior signs) have the target syndrome? Per base row, the sign bits of the rotated
 * columns are xor-ed into a row of Z bytes (d->q as scratch; plain loops the compiler vectorises). */
static int syndrome_holds(qkd_ldpc_decoder *d, const uint8_t *syndrome)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    uint8_t *acc = (uint8_t *)d->q;
    for (uint32_t r = 0; r < t->mb; r++) {
        const uint8_t *s = syndrome + (size_t)r * z;
        for (uint32_t i = 0; i < z; i++)
            acc[i] = (uint8_t)(s[i] << 7);
        for (uint32_t e = t->row_start[r]; e < t->row_start[r + 1]; e++) {
            const uint8_t *l = (const uint8_t *)d->posterior + (size_t)t->cols[e] * d->stride;
            const uint32_t shift = t->shifts[e];
            for (uint32_t i = 0; i < z - shift; i++)
                acc[i] ^= l[i + shift];
            for (uint32_t i = z - shift; i < z; i++)
                acc[i] ^= l[i + shift - z];
        }
        uint8_t any = 0;
        for (uint32_t i = 0; i < z; i++)
            any |= acc[i];
        if (any & 0x80u)
            return 0;
    }
    return 1;
}

int qkd_ldpc_decoder_set_flags(qkd_ldpc_decoder *d, uint32_t flags)
{
    if (!d || (flags & ~(uint32_t)QKD_LDPC_SELF_CORRECTING))
        return QKD_EINVAL;
    d->flags = flags;
    return QKD_OK;
}

int qkd_ldpc_decoder_set_sum_product(qkd_ldpc_decoder *d, uint32_t units_per_nat)
{
    if (!d || units_per_nat > QKD_LDPC_SPA_MAX_UNITS)
        return QKD_EINVAL;
    for (uint32_t r = 0; r < d->t->mb; r++)
        if (units_per_nat && d->t->row_start[r + 1] - d->t->row_start[r] < 2)
            return QKD_EINVAL;
    d->spa_units = units_per_nat;
    d->spa_cap = spa_message_cap(units_per_nat);
    memset(d->corr, 0, sizeof d->corr);
    for (int x = 0; x < 32; x++)
        d->corr[x] = units_per_nat ? (uint8_t)lround(units_per_nat * log1p(exp(-(double)x / units_per_nat))) : 0;
    return QKD_OK;
}

int qkd_ldpc_path_available(uint32_t path)
{
    switch (path) {
    case QKD_LDPC_PATH_AUTO:
    case QKD_LDPC_PATH_PORTABLE:
    case QKD_LDPC_PATH_LANES:
        return 1;
    case QKD_LDPC_PATH_AVX2:
        return QKD_LDPC_HAVE_AVX2 && (qkd_cpu_features() & QKD_CPU_AVX2) != 0;
    case QKD_LDPC_PATH_AVX512:
#if QKD_LDPC_HAVE_AVX2
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
        return 0;
#endif
    case QKD_LDPC_PATH_AVX512VBMI:
#if QKD_LDPC_HAVE_AVX2
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vbmi");
#else
        return 0;
#endif
    default:
        return 0;
    }
}

typedef uint32_t (*iteration_fn)(qkd_ldpc_decoder *, const uint8_t *, int, int);

static int check_call(qkd_ldpc_decoder *d, const int8_t *llr, size_t n_bits, const uint8_t *syndrome, size_t m_bits,
                      uint8_t *bits_out, size_t out_len, uint32_t max_iterations, uint32_t scale_eighths,
                      uint32_t offset, uint32_t path, iteration_fn *iterate)
{
    if (!d || !llr || !syndrome || !bits_out)
        return QKD_EINVAL;
    const qkd_ldpc_table *t = d->t;
    const size_t n = (size_t)t->nb * t->z;
    if (n_bits != n || out_len != n || m_bits != (size_t)t->mb * t->z)
        return QKD_EINVAL;
    if (max_iterations < 1 || max_iterations > QKD_LDPC_MAX_ITERATIONS || offset > QKD_LDPC_LLR_MAX ||
        scale_eighths < 1 || scale_eighths > 8)
        return QKD_EINVAL;
    if (!qkd_ldpc_path_available(path))
        return QKD_EINVAL;
    if (path == QKD_LDPC_PATH_AUTO)
        path = qkd_ldpc_path_available(QKD_LDPC_PATH_AVX512VBMI) ? QKD_LDPC_PATH_AVX512VBMI
               : qkd_ldpc_path_available(QKD_LDPC_PATH_AVX512) ? QKD_LDPC_PATH_AVX512
               : qkd_ldpc_path_available(QKD_LDPC_PATH_AVX2) ? QKD_LDPC_PATH_AVX2 : QKD_LDPC_PATH_LANES;
    if (d->spa_units) {
        /* sum-product: the portable path (asked for it or for lanes), AVX2, AVX-512BW or VBMI on whole chunks */
        *iterate = iteration_spa_portable;
#if QKD_LDPC_HAVE_AVX2
        if (path == QKD_LDPC_PATH_AVX2 && t->z % 32 == 0)
            *iterate = iteration_spa_avx2;
        if (path == QKD_LDPC_PATH_AVX512 && t->z % 64 == 0)
            *iterate = iteration_spa_avx512;
        if (path == QKD_LDPC_PATH_AVX512VBMI && t->z % 64 == 0)
            *iterate = iteration_spa_avx512vbmi;
#endif
        return QKD_OK;
    }
    *iterate = iteration_lanes;
    if (path == QKD_LDPC_PATH_PORTABLE)
        *iterate = iteration_portable;
#if QKD_LDPC_HAVE_AVX2
    /* The SIMD paths work in whole chunks of 32 (AVX2) or 64 (AVX-512) checks; other Z take the lane path,
     * which computes the same. */
    if (path == QKD_LDPC_PATH_AVX2 && t->z % 32 == 0)
        *iterate = iteration_avx2;
    if ((path == QKD_LDPC_PATH_AVX512 || path == QKD_LDPC_PATH_AVX512VBMI) && t->z % 64 == 0)
        *iterate = iteration_avx512;    /* min-sum needs no table: VBMI adds nothing */
#endif
    return QKD_OK;
}

static void refresh_pads(qkd_ldpc_decoder *d)
{
    for (uint32_t c = 0; c < d->t->nb; c++) {
        int8_t *l = d->posterior + (size_t)c * d->stride;
        memcpy(l + d->t->z, l, QKD_LDPC_PAD < d->t->z ? QKD_LDPC_PAD : d->t->z);
    }
}

static int64_t run(qkd_ldpc_decoder *d, const uint8_t *syndrome, uint8_t *bits_out, uint32_t max_iterations,
                   uint32_t scale_eighths, uint32_t offset, iteration_fn iterate)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    refresh_pads(d);
    int64_t result = 0;
    uint32_t fewest = UINT32_MAX, stalled = 0;
    for (uint32_t it = 1; it <= max_iterations; it++) {
        uint32_t unsat = iterate(d, syndrome, (int)scale_eighths, (int)offset);
        if (!unsat && syndrome_holds(d, syndrome)) {
            result = it;
            break;
        }
        /* A decoder stuck near the threshold stops improving: give up early rather than run the cap. */
        if (unsat < fewest) {
            fewest = unsat;
            stalled = 0;
        } else if (++stalled >= QKD_LDPC_STALL_ITERATIONS) {
            break;
        }
    }
    for (uint32_t c = 0; c < t->nb; c++) {
        const int8_t *l = d->posterior + (size_t)c * d->stride;
        for (uint32_t i = 0; i < z; i++)
            bits_out[(size_t)c * z + i] = (uint8_t)(l[i] < 0);
    }
    return result;
}

int64_t qkd_ldpc_decode(qkd_ldpc_decoder *d, const int8_t *llr, size_t n_bits, const uint8_t *syndrome,
                        size_t m_bits, uint8_t *bits_out, size_t out_len, uint32_t max_iterations,
                        uint32_t scale_eighths, uint32_t offset, uint32_t path)
{
    iteration_fn iterate;
    int rc = check_call(d, llr, n_bits, syndrome, m_bits, bits_out, out_len, max_iterations, scale_eighths, offset,
                        path, &iterate);
    if (rc != QKD_OK)
        return rc;
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    for (uint32_t c = 0; c < t->nb; c++) {
        int8_t *l = d->posterior + (size_t)c * d->stride;
        for (uint32_t i = 0; i < z; i++)
            l[i] = clamp8(llr[(size_t)c * z + i]);
    }
    memcpy(d->channel, llr, n_bits);
    memset(d->messages, 0, (size_t)t->edges * t->z);
    memset(d->sent, 0, (size_t)t->edges * t->z);
    d->primed = 1;
    return run(d, syndrome, bits_out, max_iterations, scale_eighths, offset, iterate);
}

int64_t qkd_ldpc_decode_resume(qkd_ldpc_decoder *d, const int8_t *llr, size_t n_bits, const uint8_t *syndrome,
                               size_t m_bits, uint8_t *bits_out, size_t out_len, uint32_t max_iterations,
                               uint32_t scale_eighths, uint32_t offset, uint32_t path)
{
    iteration_fn iterate;
    int rc = check_call(d, llr, n_bits, syndrome, m_bits, bits_out, out_len, max_iterations, scale_eighths, offset,
                        path, &iterate);
    if (rc != QKD_OK)
        return rc;
    if (!d->primed)
        return QKD_EINVAL;
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    /* Keep the check-to-bit messages; each posterior moves by the change of its channel LLR (L = channel + sum R,
     * up to saturation). */
    for (uint32_t c = 0; c < t->nb; c++) {
        int8_t *l = d->posterior + (size_t)c * d->stride;
        for (uint32_t i = 0; i < z; i++) {
            size_t j = (size_t)c * z + i;
            if (llr[j] != d->channel[j])
                l[i] = clamp8(l[i] + clamp8(llr[j]) - clamp8(d->channel[j]));
        }
    }
    memcpy(d->channel, llr, n_bits);
    return run(d, syndrome, bits_out, max_iterations, scale_eighths, offset, iterate);
}
