/* test_ldpc.c - QC-LDPC tables, syndromes and the decoder: the lane, AVX2, AVX-512 and portable paths agree bit for
 * bit (outputs and iteration counts), decoding corrects a light error pattern, bad arguments are refused;
 * run under ASan/UBSan by `make test-asan`. */
#include "check.h"
#include "qkd_bits.h"
#include "qkd_ldpc.h"
#include "qkd_prng.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t SEED[32] = {7};

static uint32_t smallest_code(void)
{
    uint32_t best = 0, best_n = UINT32_MAX, smallest_m = 0; /* the shortest codes, the lowest rate among them */
    for (int c = 0; c < qkd_ldpc_code_count(); c++) {
        qkd_ldpc_code_info info;
        qkd_ldpc_code_get_info((uint32_t)c, &info);
        if (info.n_bits < best_n || (info.n_bits == best_n && info.m_bits > smallest_m)) {
            smallest_m = info.m_bits;
            best_n = info.n_bits;
            best = (uint32_t)c;
        }
    }
    return best;
}

static void test_tables(void)
{
    CHECK(qkd_ldpc_code_count() > 0);
    for (int c = 0; c < qkd_ldpc_code_count(); c++) {
        qkd_ldpc_code_info info;
        CHECK_EQ(qkd_ldpc_code_get_info((uint32_t)c, &info), QKD_OK);
        CHECK_EQ(info.n_bits, info.nb * info.z);
        CHECK_EQ(info.m_bits, info.mb * info.z);
        uint32_t *rows = malloc(info.edges * sizeof *rows), *cols = malloc(info.edges * sizeof *cols);
        uint32_t *shifts = malloc(info.edges * sizeof *shifts);
        CHECK_EQ(qkd_ldpc_code_get_entries((uint32_t)c, rows, cols, shifts, info.edges), QKD_OK);
        int ok = 1;
        for (uint32_t e = 0; e < info.edges; e++) {
            if (rows[e] >= info.mb || cols[e] >= info.nb || shifts[e] >= info.z)
                ok = 0;
            if (e && rows[e] == rows[e - 1] && cols[e] <= cols[e - 1])
                ok = 0; /* one entry per (row, column), columns ascending */
        }
        CHECK(ok);
        free(rows);
        free(cols);
        free(shifts);
    }
    qkd_ldpc_code_info info;
    CHECK_EQ(qkd_ldpc_code_get_info((uint32_t)qkd_ldpc_code_count(), &info), QKD_EINVAL);
}

static void test_decode_paths_agree(void)
{
    const uint32_t code = smallest_code();
    qkd_ldpc_code_info info;
    qkd_ldpc_code_get_info(code, &info);
    const size_t n = info.n_bits, m = info.m_bits;
    uint8_t *word = malloc(n), *syndrome = malloc(m), *out[4], *check_syn = malloc(m);
    int8_t *llr = malloc(n);
    qkd_prng g;
    qkd_prng_init(&g, SEED, sizeof SEED, 1);
    for (size_t j = 0; j < n; j++)
        word[j] = (uint8_t)(qkd_prng_next(&g) & 1);
    CHECK_EQ(qkd_ldpc_syndrome(code, word, n, syndrome, m), QKD_OK);
    const uint32_t paths[4] = {QKD_LDPC_PATH_PORTABLE, QKD_LDPC_PATH_LANES, QKD_LDPC_PATH_AVX2,
                               QKD_LDPC_PATH_AVX512};
    qkd_ldpc_decoder *d = NULL;
    CHECK_EQ(qkd_ldpc_decoder_new(&d, code), QKD_OK);
    /* light noise (decodes), heavy noise (does not, within the cap) and punctured bits */
    const uint32_t flip_per_mille[3] = {5, 250, 5};
    for (int round = 0; round < 3; round++) {
        for (size_t j = 0; j < n; j++) {
            int flip = qkd_prng_below(&g, 1000) < flip_per_mille[round];
            int bit = word[j] ^ flip;
            llr[j] = (int8_t)(bit ? -18 : 18);
            if (round == 2 && qkd_prng_below(&g, 100) < 3)
                llr[j] = 0;
        }
        int64_t iterations[4];
        for (int p = 0; p < 4; p++) {
            out[p] = malloc(n);
            if (!qkd_ldpc_path_available(paths[p])) {
                memcpy(out[p], out[1], n);
                iterations[p] = iterations[1];
                continue;
            }
            iterations[p] = qkd_ldpc_decode(d, llr, n, syndrome, m, out[p], n, 30, 7, 1, paths[p]);
        }
        CHECK(iterations[0] >= 0);
        CHECK_EQ(iterations[0], iterations[1]);
        CHECK_EQ(iterations[0], iterations[2]);
        CHECK_EQ(iterations[0], iterations[3]);
        CHECK(memcmp(out[0], out[1], n) == 0);
        CHECK(memcmp(out[0], out[2], n) == 0);
        CHECK(memcmp(out[0], out[3], n) == 0);
        if (round != 1) {
            CHECK(iterations[0] >= 1);
            CHECK(memcmp(out[0], word, n) == 0);
            qkd_ldpc_syndrome(code, out[0], n, check_syn, m);
            CHECK(memcmp(check_syn, syndrome, m) == 0);
        } else {
            CHECK_EQ(iterations[0], 0);
        }
        /* the normalised variant agrees across paths too */
        int64_t a = qkd_ldpc_decode(d, llr, n, syndrome, m, out[0], n, 30, 6, 1, QKD_LDPC_PATH_PORTABLE);
        int64_t b = qkd_ldpc_decode(d, llr, n, syndrome, m, out[1], n, 30, 6, 1, QKD_LDPC_PATH_LANES);
        CHECK_EQ(a, b);
        CHECK(memcmp(out[0], out[1], n) == 0);
        for (int p = 0; p < 4; p++)
            free(out[p]);
    }
    /* refused arguments */
    CHECK_EQ(qkd_ldpc_decode(d, llr, n - 1, syndrome, m, word, n, 30, 8, 3, 0), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_decode(d, llr, n, syndrome, m, word, n, 0, 8, 3, 0), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_decode(d, llr, n, syndrome, m, word, n, 30, 9, 3, 0), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_decode(d, llr, n, syndrome, m, word, n, 30, 8, 3, 99), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_syndrome(code, word, n, syndrome, m + 1), QKD_EINVAL);
    CHECK_EQ(qkd_ldpc_decoder_new(&d, (uint32_t)qkd_ldpc_code_count()), QKD_EINVAL);
    qkd_ldpc_decoder_free(d);
    free(word);
    free(syndrome);
    free(check_syn);
    free(llr);
}

/* The last Z = 512 code with 12 base rows (UINT32_MAX: none), its description in *info. */
static uint32_t last_z512_code(qkd_ldpc_code_info *info)
{
    uint32_t code = UINT32_MAX;
    for (int c = 0; c < qkd_ldpc_code_count(); c++) {
        qkd_ldpc_code_get_info((uint32_t)c, info);
        if (info->z == 512 && info->mb == 12)
            code = (uint32_t)c;
    }
    if (code != UINT32_MAX)
        qkd_ldpc_code_get_info(code, info);
    return code;
}

/* On a Z = 512 code (the SIMD paths' chunks and padded columns): a capped first decode, bits pinned as if revealed,
 * then qkd_ldpc_decode_resume; every path gives the same iterations and bits, and the resumed decode succeeds. */
static void test_resume_paths_agree(void)
{
    qkd_ldpc_code_info info;
    const uint32_t code = last_z512_code(&info);
    CHECK(code != UINT32_MAX);
    if (code == UINT32_MAX)
        return;
    const size_t n = info.n_bits, m = info.m_bits;
    uint8_t *word = malloc(n), *syndrome = malloc(m), *out[4];
    int8_t *llr = malloc(n), *pinned = malloc(n);
    qkd_prng g;
    qkd_prng_init(&g, SEED, sizeof SEED, 2);
    for (size_t j = 0; j < n; j++)
        word[j] = (uint8_t)(qkd_prng_next(&g) & 1);
    CHECK_EQ(qkd_ldpc_syndrome(code, word, n, syndrome, m), QKD_OK);
    for (size_t j = 0; j < n; j++) {
        int bit = word[j] ^ (qkd_prng_below(&g, 1000) < 11);
        llr[j] = (int8_t)(bit ? -16 : 16);
        pinned[j] = qkd_prng_below(&g, 100) < 6 ? (int8_t)(word[j] ? -QKD_LDPC_LLR_MAX : QKD_LDPC_LLR_MAX) : llr[j];
    }
    const uint32_t paths[4] = {QKD_LDPC_PATH_PORTABLE, QKD_LDPC_PATH_LANES, QKD_LDPC_PATH_AVX2,
                               QKD_LDPC_PATH_AVX512};
    for (uint32_t flags = 0; flags <= QKD_LDPC_SELF_CORRECTING; flags++) {
        int64_t first[4], resumed[4];
        for (int p = 0; p < 4; p++) {
            out[p] = malloc(n);
            if (!qkd_ldpc_path_available(paths[p])) {
                memcpy(out[p], out[1], n);
                first[p] = first[1];
                resumed[p] = resumed[1];
                continue;
            }
            qkd_ldpc_decoder *d = NULL;
            CHECK_EQ(qkd_ldpc_decoder_new(&d, code), QKD_OK);
            CHECK_EQ(qkd_ldpc_decoder_set_flags(d, 2), QKD_EINVAL);
            CHECK_EQ(qkd_ldpc_decoder_set_flags(d, flags), QKD_OK);
            CHECK_EQ(qkd_ldpc_decode_resume(d, llr, n, syndrome, m, out[p], n, 40, 7, 1, paths[p]), QKD_EINVAL);
            first[p] = qkd_ldpc_decode(d, llr, n, syndrome, m, out[p], n, 2, 7, 1, paths[p]);
            resumed[p] = qkd_ldpc_decode_resume(d, pinned, n, syndrome, m, out[p], n, 40, 7, 1, paths[p]);
            qkd_ldpc_decoder_free(d);
        }
        CHECK_EQ(first[0], 0);
        CHECK(resumed[0] >= 1);
        CHECK(memcmp(out[0], word, n) == 0);
        for (int p = 1; p < 4; p++) {
            CHECK_EQ(first[p], first[0]);
            CHECK_EQ(resumed[p], resumed[0]);
            CHECK(memcmp(out[p], out[0], n) == 0);
        }
        for (int p = 0; p < 4; p++)
            free(out[p]);
    }
    free(word);
    free(syndrome);
    free(llr);
    free(pinned);
}

/* The fixed-point sum-product decoder: on a Z = 512 code the portable and AVX2 paths give the same iterations and
 * bits (a decode that succeeds, one capped short, one at heavy noise that fails, and a resume after pinned bits);
 * it corrects an error rate min-sum (7/8, offset 1) does not within the same cap; bad units are refused. */
static void test_sum_product_paths_agree(void)
{
    qkd_ldpc_code_info info;
    const uint32_t code = last_z512_code(&info);
    CHECK(code != UINT32_MAX);
    if (code == UINT32_MAX)
        return;
    const size_t n = info.n_bits, m = info.m_bits;
    uint8_t *word = malloc(n), *syndrome = malloc(m), *out[4], *check_syn = malloc(m);
    int8_t *llr = malloc(n), *pinned = malloc(n);
    qkd_prng g;
    qkd_prng_init(&g, SEED, sizeof SEED, 3);
    for (size_t j = 0; j < n; j++)
        word[j] = (uint8_t)(qkd_prng_next(&g) & 1);
    CHECK_EQ(qkd_ldpc_syndrome(code, word, n, syndrome, m), QKD_OK);
    const uint32_t paths[4] = {QKD_LDPC_PATH_PORTABLE, QKD_LDPC_PATH_AVX2, QKD_LDPC_PATH_AVX512,
                               QKD_LDPC_PATH_AVX512VBMI};
    const uint32_t per_mille[3] = {8, 8, 200}, caps[3] = {60, 2, 20};
    const int units = 8, channel = 31; /* 8 units per nat; ln(0.98 / 0.02) = 3.9 nats */
    int64_t spa_iterations = 0;
    for (int round = 0; round < 3; round++) {
        qkd_prng_init(&g, SEED, sizeof SEED, 4);
        for (size_t j = 0; j < n; j++) {
            int bit = word[j] ^ (qkd_prng_below(&g, 1000) < per_mille[round]);
            llr[j] = (int8_t)(bit ? -channel : channel);
            pinned[j] = qkd_prng_below(&g, 100) < 5 ? (int8_t)(word[j] ? -QKD_LDPC_LLR_MAX : QKD_LDPC_LLR_MAX) : llr[j];
        }
        int64_t it[4], resumed[4];
        for (int p = 0; p < 4; p++) {
            out[p] = malloc(n);
            if (!qkd_ldpc_path_available(paths[p])) {
                memcpy(out[p], out[0], n);
                it[p] = it[0];
                resumed[p] = resumed[0];
                continue;
            }
            qkd_ldpc_decoder *d = NULL;
            CHECK_EQ(qkd_ldpc_decoder_new(&d, code), QKD_OK);
            CHECK_EQ(qkd_ldpc_decoder_set_sum_product(d, QKD_LDPC_SPA_MAX_UNITS + 1), QKD_EINVAL);
            CHECK_EQ(qkd_ldpc_decoder_set_sum_product(d, units), QKD_OK);
            it[p] = qkd_ldpc_decode(d, llr, n, syndrome, m, out[p], n, caps[round], 8, 0, paths[p]);
            resumed[p] = round == 1 ? qkd_ldpc_decode_resume(d, pinned, n, syndrome, m, out[p], n, 60, 8, 0, paths[p])
                                    : 0;
            qkd_ldpc_decoder_free(d);
        }
        for (int p = 1; p < 4; p++) {
            CHECK_EQ(it[p], it[0]);
            CHECK_EQ(resumed[p], resumed[0]);
            CHECK(memcmp(out[p], out[0], n) == 0);
        }
        if (round == 0) {
            CHECK(it[0] >= 1);
            spa_iterations = it[0];
        }
        if (round == 1) {
            CHECK_EQ(it[0], 0);
            CHECK(resumed[0] >= 1);
        }
        if (round == 2)
            CHECK_EQ(it[0], 0);
        if (round != 2) {
            CHECK(memcmp(out[0], word, n) == 0);
            qkd_ldpc_syndrome(code, out[0], n, check_syn, m);
            CHECK(memcmp(check_syn, syndrome, m) == 0);
        }
        for (int p = 0; p < 4; p++)
            free(out[p]);
    }
    /* min-sum at the same error pattern (round 0's) and cap: no better than sum-product */
    qkd_prng_init(&g, SEED, sizeof SEED, 4);
    for (size_t j = 0; j < n; j++) {
        int bit = word[j] ^ (qkd_prng_below(&g, 1000) < per_mille[0]);
        llr[j] = (int8_t)(bit ? -16 : 16);
        qkd_prng_below(&g, 100);
    }
    qkd_ldpc_decoder *d = NULL;
    CHECK_EQ(qkd_ldpc_decoder_new(&d, code), QKD_OK);
    uint8_t *ms = malloc(n);
    int64_t ms_iterations = qkd_ldpc_decode(d, llr, n, syndrome, m, ms, n, 60, 7, 1, QKD_LDPC_PATH_PORTABLE);
    CHECK(ms_iterations == 0 || ms_iterations >= spa_iterations);
    CHECK_EQ(qkd_ldpc_decoder_set_sum_product(d, 0), QKD_OK);   /* back to min-sum: the same result again */
    CHECK_EQ(qkd_ldpc_decode(d, llr, n, syndrome, m, ms, n, 60, 7, 1, QKD_LDPC_PATH_PORTABLE), ms_iterations);
    qkd_ldpc_decoder_free(d);
    free(ms);
    free(word);
    free(syndrome);
    free(check_syn);
    free(llr);
    free(pinned);
}

int main(void)
{
    test_tables();
    test_decode_paths_agree();
    test_resume_paths_agree();
    test_sum_product_paths_agree();
    return check_report("test_ldpc");
}
