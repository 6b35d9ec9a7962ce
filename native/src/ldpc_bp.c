/* ldpc_bp.c - the CV-QKD code tables' accessors, syndromes, and the layered floating-point sum-product decoder
 * (qkd_ldpc_bp.h), over the CV-QKD codes or (qkd_ldpc_bp_new_bb84) the BB84 codes of qkd_ldpc.h.
 *
 * Per layer (base row r) and lane i (check r*Z + i), with L the posterior of a bit and R the check's last message
 * on the edge:
 *   Q_e = L_e - R_e,  t_e = tanh(Q_e / 2) = sign(Q_e) (1 - exp(-|Q_e|)) / (1 + exp(-|Q_e|)),
 *   u_e = (-1)^s prod_{e' != e} t_e'   (prefix and suffix products: no division, no zero special case),
 *   R_e' = 2 atanh(u_e) = log((1 + u_e) / (1 - u_e)),  |u_e| <= 1 - 2^-23 (so |R_e'| <= 16.6 nats),
 *   L_e' = Q_e + R_e'.
 * The Z lanes of a layer touch disjoint bits, so each step is a loop over lanes on rotated copies of the columns
 * (as ldpc.c's lane path), which the compiler vectorises; exp and log are the polynomial approximations below.
 * After every iteration the hard decisions are checked against the syndrome; the count of unsatisfied checks is
 * the progress measure (stall_iterations without a new minimum end the attempt).
 */
/* The lane loops' clamps and selects are if-converted (so vectorised) only when float compares may be assumed not
 * to trap; the code never reads the floating-point exception flags. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "qkd_ldpc_bp.h"
#include "qkd_bits.h"
#include "ldpc_cv_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define QKD_LDPC_BP_HAVE_MXCSR 1
#endif

#define U_MAX (1.0f - 1.0f / 8388608.0f)
#define EXP_ARG_MAX 80.0f

struct qkd_ldpc_bp {
    const qkd_ldpc_table *t;
    uint32_t max_row_degree;
    int flush_denormals;  /* BB84 codes: decode with subnormal floats flushed to zero (see qkd_ldpc_bp_decode) */
    float *posterior;     /* nb * z */
    float *messages;      /* edges * z */
    float *q;             /* max_row_degree * z: Q of the layer's edges, then the updated posteriors */
    float *tv;            /* max_row_degree * z: t_e */
    float *prefix;        /* max_row_degree * z: prod_{e' <= e} t_e' */
    float *suffix;        /* z */
    float *ones;          /* z: 1.0, the empty product */
    uint8_t *acc;         /* z */
};

static const qkd_ldpc_table *cv_table(uint32_t code)
{
    return code < qkd_ldpc_cv_table_count ? &qkd_ldpc_cv_tables[code] : NULL;
}

int qkd_ldpc_cv_code_count(void)
{
    return (int)qkd_ldpc_cv_table_count;
}

int qkd_ldpc_cv_code_get_info(uint32_t code, qkd_ldpc_code_info *out)
{
    return qkd_ldpc_table_info(cv_table(code), out);
}

int qkd_ldpc_cv_code_get_entries(uint32_t code, uint32_t *rows, uint32_t *cols, uint32_t *shifts, size_t len)
{
    return qkd_ldpc_table_entries(cv_table(code), rows, cols, shifts, len);
}

int qkd_ldpc_cv_syndrome(uint32_t code, const uint8_t *bits, size_t n_bits, uint8_t *syndrome, size_t m_bits)
{
    return qkd_ldpc_table_syndrome(cv_table(code), bits, n_bits, syndrome, m_bits);
}

void qkd_ldpc_bp_free(qkd_ldpc_bp *d)
{
    if (!d)
        return;
    free(d->posterior);
    free(d->messages);
    free(d->q);
    free(d->tv);
    free(d->prefix);
    free(d->suffix);
    free(d->ones);
    free(d->acc);
    free(d);
}

static int bp_new(qkd_ldpc_bp **out, const qkd_ldpc_table *t, int flush_denormals)
{
    if (!out || !t)
        return QKD_EINVAL;
    qkd_ldpc_bp *d = calloc(1, sizeof *d);
    if (!d)
        return QKD_ENOMEM;
    d->t = t;
    d->flush_denormals = flush_denormals;
    d->max_row_degree = qkd_ldpc_table_max_row_degree(t);
    const size_t z = t->z;
    d->posterior = malloc((size_t)t->nb * z * sizeof(float));
    d->messages = malloc((size_t)t->edges * z * sizeof(float));
    d->q = malloc((size_t)d->max_row_degree * z * sizeof(float));
    d->tv = malloc((size_t)d->max_row_degree * z * sizeof(float));
    d->prefix = malloc((size_t)d->max_row_degree * z * sizeof(float));
    d->suffix = malloc(z * sizeof(float));
    d->ones = malloc(z * sizeof(float));
    d->acc = malloc(z);
    if (!d->posterior || !d->messages || !d->q || !d->tv || !d->prefix || !d->suffix || !d->ones || !d->acc) {
        qkd_ldpc_bp_free(d);
        return QKD_ENOMEM;
    }
    for (size_t i = 0; i < z; i++)
        d->ones[i] = 1.0f;
    *out = d;
    return QKD_OK;
}

int qkd_ldpc_bp_new(qkd_ldpc_bp **out, uint32_t code)
{
    return bp_new(out, cv_table(code), 0);
}

int qkd_ldpc_bp_new_bb84(qkd_ldpc_bp **out, uint32_t code)
{
    return bp_new(out, code < qkd_ldpc_table_count ? &qkd_ldpc_tables[code] : NULL, 1);
}

/* exp(x) for -EXP_ARG_MAX <= x <= 0: 2^n 2^f, n = round(x log2 e), |f| <= 1/2, 2^f by its degree-6 Taylor
 * polynomial (relative error < 2e-7). Branch-free, so that lane loops vectorise. */
static inline float fast_exp_neg(float x)
{
    float y = x * 1.44269504f;
    int n = (int)(y - 0.5f);                 /* y <= 0: truncation of y - 1/2 rounds to nearest */
    float f = (y - (float)n) * 0.69314718f;  /* ln 2^(y - n) */
    float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.6666667e-1f + f * (4.1666668e-2f + f * (8.3333338e-3f
              + f * 1.3888889e-3f)))));
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* log(v) for a normal v > 0: v = 2^e m, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1)/(m + 1),
 * |s| < 0.172, by its series to s^9 (absolute error < 2e-9). */
static inline float fast_log(float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    uint32_t mbits = (bits & 0x007fffffu) | 0x3f800000u;
    uint32_t big = mbits > 0x3fb504f3u;      /* mantissa above sqrt(2): halve it, one more in the exponent */
    mbits -= big << 23;
    int32_t e = (int32_t)(bits >> 23) - 127 + (int32_t)big;
    float m;
    memcpy(&m, &mbits, sizeof m);
    float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float series = 1.0f + s2 * (0.33333333f + s2 * (0.2f + s2 * (0.14285714f + s2 * 0.11111111f)));
    return (float)e * 0.69314718f + 2.0f * s * series;
}

static inline __attribute__((always_inline)) void layer(qkd_ldpc_bp *d, uint32_t r, const uint8_t *syndrome)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    const uint32_t first = t->row_start[r], degree = (uint32_t)(t->row_start[r + 1] - first);
    const uint8_t *s = syndrome + (size_t)r * z;
    float *restrict suffix = d->suffix;
    for (uint32_t e = 0; e < degree; e++) {
        float *restrict q = d->q + (size_t)e * z;
        float *restrict tv = d->tv + (size_t)e * z;
        float *restrict pre = d->prefix + (size_t)e * z;
        const float *restrict before = e ? d->prefix + (size_t)(e - 1) * z : d->ones;
        const float *restrict msg = d->messages + (size_t)(first + e) * z;
        const float *l = d->posterior + (size_t)t->cols[first + e] * z;
        const uint32_t shift = t->shifts[first + e];
        memcpy(q, l + shift, (z - shift) * sizeof(float));
        memcpy(q + (z - shift), l, shift * sizeof(float));
        for (uint32_t i = 0; i < z; i++) {
            float v = q[i] - msg[i];
            q[i] = v;
            float a = fabsf(v);
            a = a < EXP_ARG_MAX ? a : EXP_ARG_MAX;
            float x = fast_exp_neg(-a);
            float h = 0.5f * a, h2 = h * h;     /* small |Q|: 1 - x would cancel, tanh's series instead */
            float series = h * (1.0f + h2 * (-0.33333333f + h2 * (0.13333333f + h2 * (-0.053968254f
                           + h2 * 0.021869488f))));
            float mag = a < 0.5f ? series : (1.0f - x) / (1.0f + x);
            float tanh_half = copysignf(mag, v);
            tv[i] = tanh_half;
            pre[i] = before[i] * tanh_half;
        }
    }
    for (uint32_t i = 0; i < z; i++)
        suffix[i] = (s[i] & 1u) ? -1.0f : 1.0f;
    for (uint32_t k = degree; k-- > 0;) {
        float *restrict q = d->q + (size_t)k * z;
        const float *restrict tv = d->tv + (size_t)k * z;
        const float *restrict before = k ? d->prefix + (size_t)(k - 1) * z : d->ones;
        float *restrict msg = d->messages + (size_t)(first + k) * z;
        for (uint32_t i = 0; i < z; i++) {
            float u = before[i] * suffix[i];
            u = u > U_MAX ? U_MAX : (u < -U_MAX ? -U_MAX : u);
            float u2 = u * u;                   /* small |u|: 1 + u would round, atanh's series instead */
            float series = 2.0f * u * (1.0f + u2 * (0.33333333f + u2 * (0.2f + u2 * (0.14285714f
                           + u2 * (0.11111111f + u2 * (0.090909091f + u2 * 0.076923077f))))));
            float au = u < 0.0f ? -u : u;
            float rn = au < 0.3f ? series : fast_log((1.0f + u) / (1.0f - u));
            msg[i] = rn;
            q[i] += rn;
            suffix[i] *= tv[i];
        }
        float *l = d->posterior + (size_t)t->cols[first + k] * z;
        const uint32_t shift = t->shifts[first + k];
        memcpy(l + shift, q, (z - shift) * sizeof(float));
        memcpy(l, q + (z - shift), shift * sizeof(float));
    }
}

/* One iteration (every layer), compiled for the baseline target and for AVX2 (no FMA: the same roundings, so the
 * two compute identical numbers). */
static void iteration_default(qkd_ldpc_bp *d, const uint8_t *syndrome)
{
    for (uint32_t r = 0; r < d->t->mb; r++)
        layer(d, r, syndrome);
}

#if defined(__x86_64__) || defined(__i386__)
#define QKD_LDPC_BP_HAVE_AVX2 1
__attribute__((target("avx2"))) static void iteration_avx2(qkd_ldpc_bp *d, const uint8_t *syndrome)
{
    for (uint32_t r = 0; r < d->t->mb; r++)
        layer(d, r, syndrome);
}
#endif

/* Checks the hard decisions leave unsatisfied. */
static uint64_t unsatisfied(qkd_ldpc_bp *d, const uint8_t *syndrome)
{
    const qkd_ldpc_table *t = d->t;
    const uint32_t z = t->z;
    uint8_t *acc = d->acc;
    uint64_t count = 0;
    for (uint32_t r = 0; r < t->mb; r++) {
        const uint8_t *s = syndrome + (size_t)r * z;
        for (uint32_t i = 0; i < z; i++)
            acc[i] = s[i] & 1u;
        for (uint32_t e = t->row_start[r]; e < t->row_start[r + 1]; e++) {
            const float *l = d->posterior + (size_t)t->cols[e] * z;
            const uint32_t shift = t->shifts[e];
            for (uint32_t i = 0; i < z - shift; i++)
                acc[i] ^= (uint8_t)(l[i + shift] < 0.0f);
            for (uint32_t i = z - shift; i < z; i++)
                acc[i] ^= (uint8_t)(l[i + shift - z] < 0.0f);
        }
        for (uint32_t i = 0; i < z; i++)
            count += acc[i];
    }
    return count;
}

int64_t qkd_ldpc_bp_decode(qkd_ldpc_bp *d, const float *llr, size_t n_bits, const uint8_t *syndrome, size_t m_bits,
                           uint8_t *bits_out, size_t out_len, uint32_t max_iterations,
                           uint32_t stall_iterations)
{
    if (!d || !llr || !syndrome || !bits_out)
        return QKD_EINVAL;
    const qkd_ldpc_table *t = d->t;
    const size_t n = (size_t)t->nb * t->z;
    if (n_bits != n || out_len != n || m_bits != (size_t)t->mb * t->z || max_iterations < 1 ||
        max_iterations > QKD_LDPC_BP_MAX_ITERATIONS)
        return QKD_EINVAL;
    for (size_t j = 0; j < n; j++) {
        if (!isfinite(llr[j]))
            return QKD_EINVAL;
    }
    /* The high-rate BB84 codes have rows of 20-40 edges: in a stalled decode the tanh products underflow to
     * subnormal floats, which the FPU handles 5-25 times slower (measured: 4 ns per edge and iteration at rate
     * 0.48, 20-90 ns at 0.84-0.95). Flushing them (FTZ and DAZ in this thread's MXCSR, restored before return)
     * changes a message by less than 1e-38 nats. The CV codes keep IEEE arithmetic (their results unchanged). */
#ifdef QKD_LDPC_BP_HAVE_MXCSR
    const unsigned int csr = _mm_getcsr();
    if (d->flush_denormals)
        _mm_setcsr(csr | 0x8040u);
#endif
    void (*iterate)(qkd_ldpc_bp *, const uint8_t *) = iteration_default;
#ifdef QKD_LDPC_BP_HAVE_AVX2
    if (qkd_cpu_features() & QKD_CPU_AVX2)
        iterate = iteration_avx2;
#endif
    memcpy(d->posterior, llr, n * sizeof(float));
    memset(d->messages, 0, (size_t)t->edges * t->z * sizeof(float));
    int64_t result = 0;
    uint64_t fewest = unsatisfied(d, syndrome), stalled = 0;
    if (fewest == 0)
        result = 1;
    for (uint32_t it = 1; it <= max_iterations && !result; it++) {
        iterate(d, syndrome);
        uint64_t unsat = unsatisfied(d, syndrome);
        if (!unsat) {
            result = it;
        } else if (unsat < fewest) {
            fewest = unsat;
            stalled = 0;
        } else if (stall_iterations && ++stalled >= stall_iterations) {
            break;
        }
    }
#ifdef QKD_LDPC_BP_HAVE_MXCSR
    _mm_setcsr(csr);
#endif
    for (size_t j = 0; j < n; j++)
        bits_out[j] = (uint8_t)(d->posterior[j] < 0.0f);
    return result;
}
