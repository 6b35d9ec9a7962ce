/* test_ldpc_bp.c - the CV-QKD code tables and the sum-product decoder: table accessors, syndromes of zero and
 * of a decoded word, decoding a noisy word back to the transmitted bits (twice, identically), bad arguments
 * refused; the same decoder over a BB84 code (qkd_ldpc_bp_new_bb84) on a binary symmetric channel, leaving the
 * caller's floating-point control word as it found it; run under ASan/UBSan by `make test-asan`. */
#include "check.h"
#include "qkd_bits.h"
#include "qkd_ldpc.h"
#include "qkd_ldpc_bp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

static uint64_t state = 0x9e3779b97f4a7c15u;

static uint64_t next(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static void test_tables(void)
{
    CHECK(qkd_ldpc_cv_code_count() >= 1);
    qkd_ldpc_code_info info;
    CHECK_EQ(qkd_ldpc_cv_code_get_info((uint32_t)qkd_ldpc_cv_code_count(), &info), QKD_EINVAL);
    for (int c = 0; c < qkd_ldpc_cv_code_count(); c++) {
        CHECK_EQ(qkd_ldpc_cv_code_get_info((uint32_t)c, &info), QKD_OK);
        CHECK_EQ(info.n_bits, info.nb * info.z);
        CHECK(info.m_bits < info.n_bits);
        uint32_t *rows = malloc(info.edges * sizeof *rows), *cols = malloc(info.edges * sizeof *cols);
        uint32_t *shifts = malloc(info.edges * sizeof *shifts);
        CHECK_EQ(qkd_ldpc_cv_code_get_entries((uint32_t)c, rows, cols, shifts, info.edges), QKD_OK);
        int ok = 1;
        for (uint32_t e = 0; e < info.edges; e++)
            ok &= rows[e] < info.mb && cols[e] < info.nb && shifts[e] < info.z && (e == 0 || rows[e] >= rows[e - 1]);
        CHECK(ok);
        CHECK_EQ(qkd_ldpc_cv_code_get_entries((uint32_t)c, rows, cols, shifts, info.edges - 1), QKD_EINVAL);
        free(rows);
        free(cols);
        free(shifts);
    }
}

static void test_decode(void)
{
    qkd_ldpc_code_info info;
    CHECK_EQ(qkd_ldpc_cv_code_get_info(0, &info), QKD_OK);
    const size_t n = info.n_bits, m = info.m_bits;
    uint8_t *bits = malloc(n), *out = malloc(n), *again = malloc(n), *syndrome = malloc(m), *check = malloc(m);
    float *llr = malloc(n * sizeof *llr);
    memset(bits, 0, n);
    CHECK_EQ(qkd_ldpc_cv_syndrome(0, bits, n, syndrome, m), QKD_OK);
    int zero = 1;
    for (size_t i = 0; i < m; i++)
        zero &= syndrome[i] == 0;
    CHECK(zero);
    /* BIAWGN at SNR 0.3 (well above the code's operating point): L = 2 s (x + noise) / 1, s = +-sqrt(0.3) */
    const float amp = sqrtf(0.3f);
    for (size_t i = 0; i < n; i++) {
        bits[i] = (uint8_t)(next() & 1u);
        double u1 = ((double)(next() >> 11) + 0.5) / 9007199254740992.0;
        double u2 = (double)(next() >> 11) / 9007199254740992.0;
        float noise = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
        llr[i] = 2.0f * amp * ((bits[i] ? -amp : amp) + noise);
    }
    CHECK_EQ(qkd_ldpc_cv_syndrome(0, bits, n, syndrome, m), QKD_OK);
    qkd_ldpc_bp *d = NULL;
    CHECK_EQ(qkd_ldpc_bp_new(&d, (uint32_t)qkd_ldpc_cv_code_count()), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_bp_new(&d, 0), QKD_OK);
    int64_t it = qkd_ldpc_bp_decode(d, llr, n, syndrome, m, out, n, 200, 40);
    CHECK(it > 0);
    CHECK(memcmp(out, bits, n) == 0);
    CHECK_EQ(qkd_ldpc_bp_decode(d, llr, n, syndrome, m, again, n, 200, 40), it);
    CHECK(memcmp(out, again, n) == 0);
    CHECK_EQ(qkd_ldpc_cv_syndrome(0, out, n, check, m), QKD_OK);
    CHECK(memcmp(check, syndrome, m) == 0);
    /* refusals */
    CHECK_EQ(qkd_ldpc_bp_decode(d, llr, n - 1, syndrome, m, out, n, 200, 40), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_bp_decode(d, llr, n, syndrome, m, out, n, 0, 40), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_bp_decode(d, llr, n, syndrome, m, out, n, QKD_LDPC_BP_MAX_ITERATIONS + 1, 40), QKD_EINVAL);
    llr[5] = NAN;
    CHECK_EQ(qkd_ldpc_bp_decode(d, llr, n, syndrome, m, out, n, 200, 40), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_bp_decode(NULL, llr, n, syndrome, m, out, n, 200, 40), QKD_EINVAL);
    qkd_ldpc_bp_free(d);
    qkd_ldpc_bp_free(NULL);
    free(bits);
    free(out);
    free(again);
    free(syndrome);
    free(check);
    free(llr);
}

/* BB84 code 17 (Z = 64, rate 0.60) on a BSC with 4 % flips: well inside its threshold, so BP must return the
 * transmitted word, twice identically; a syndrome with flips far beyond it must come back 0 (not decoded). */
static void test_decode_bb84(void)
{
    const uint32_t code = 17;
    qkd_ldpc_code_info info;
    CHECK_EQ(qkd_ldpc_code_get_info(code, &info), QKD_OK);
    const size_t n = info.n_bits, m = info.m_bits;
    uint8_t *bits = malloc(n), *out = malloc(n), *again = malloc(n), *syndrome = malloc(m);
    float *llr = malloc(n * sizeof *llr);
    const float l = logf(0.96f / 0.04f);
    size_t flips = 0;
    for (size_t i = 0; i < n; i++) {
        bits[i] = (uint8_t)(next() & 1u);
        uint8_t seen = bits[i] ^ (uint8_t)(next() % 25u == 0);
        flips += seen != bits[i];
        llr[i] = seen ? -l : l;
    }
    CHECK(flips > n / 50);
    CHECK_EQ(qkd_ldpc_syndrome(code, bits, n, syndrome, m), QKD_OK);
    qkd_ldpc_bp *d = NULL;
    CHECK_EQ(qkd_ldpc_bp_new_bb84(&d, (uint32_t)qkd_ldpc_code_count()), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_bp_new_bb84(NULL, code), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_bp_new_bb84(&d, code), QKD_OK);
#if defined(__x86_64__) || defined(__i386__)
    const unsigned int csr = _mm_getcsr();
#endif
    int64_t it = qkd_ldpc_bp_decode(d, llr, n, syndrome, m, out, n, 100, 20);
#if defined(__x86_64__) || defined(__i386__)
    CHECK_EQ(_mm_getcsr(), csr);
#endif
    CHECK(it > 0);
    CHECK(memcmp(out, bits, n) == 0);
    CHECK_EQ(qkd_ldpc_bp_decode(d, llr, n, syndrome, m, again, n, 100, 20), it);
    CHECK(memcmp(out, again, n) == 0);
    for (size_t i = 0; i < n; i += 4)
        llr[i] = -llr[i];
    CHECK_EQ(qkd_ldpc_bp_decode(d, llr, n, syndrome, m, out, n, 30, 10), 0);
    qkd_ldpc_bp_free(d);
    free(bits);
    free(out);
    free(again);
    free(syndrome);
    free(llr);
}

int main(void)
{
    test_tables();
    test_decode();
    test_decode_bb84();
    return check_report("test_ldpc_bp");
}
