/* test_sim.c - simulator kernel: ChaCha20 against RFC 8439, parameter checks, record invariants,
 * reproducibility, and Monte Carlo gains/QBER against the closed-form channel model. */
#include "check.h"
#include "qkd_sim.h"
#include "../src/sim_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_chacha_rfc8439_block(void)
{
    /* RFC 8439 section 2.3.2: key 00..1f, block counter 1, nonce 00:00:00:09:00:00:00:4a:00:00:00:00.
     * Our layout puts the counter in words 12-13 and the stream id in 14-15. */
    uint8_t key[32];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;
    qkd_chacha rng;
    qkd_chacha_init(&rng, key, 0x4a000000ull);
    rng.counter = 1 | (0x09000000ull << 32);
    uint64_t w0 = qkd_chacha_u64(&rng), w1 = qkd_chacha_u64(&rng);
    /* serialized output begins 10 f1 e7 e4 d1 3b 59 15 50 0f dd 1f a3 20 71 c4 */
    CHECK_EQ(w0, 0x15593bd1e4e7f110ull);
    CHECK_EQ(w1, 0xc47120a31fdd0f50ull);
}

static void test_chacha_wide_and_narrow_agree(void)
{
    /* the AVX-512F and AVX2 paths (where the CPU has them) and the baseline path give one keystream, also across
     * refills of different sizes */
    uint8_t key[32] = {9, 8, 7};
    qkd_chacha narrow, eight, widest;
    qkd_chacha_init(&narrow, key, 5);
    qkd_chacha_init(&eight, key, 5);
    qkd_chacha_init(&widest, key, 5);
    narrow.lanes = 4;
    if (eight.lanes > 8)
        eight.lanes = 8;
    int same = 1;
    for (int i = 0; i < 1000; i++) {
        uint64_t w = qkd_chacha_u64(&narrow);
        same &= w == qkd_chacha_u64(&eight) && w == qkd_chacha_u64(&widest);
    }
    CHECK(same);
}

static qkd_sim_params gys_params(double distance_km)
{
    /* GYS experiment parameters as used by Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), Table I:
     * alpha 0.21 dB/km, eta_Bob 4.5 %, Y0 1.7e-6, e_d 3.3 %; here dark counts a bit higher for statistics. */
    qkd_sim_params p;
    memset(&p, 0, sizeof p);
    p.protocol = QKD_SIM_BB84;
    p.intensity[0] = 0.5;
    p.intensity[1] = 0.1;
    p.intensity[2] = 0;
    p.class_prob[0] = 0.7;
    p.class_prob[1] = 0.2;
    p.class_prob[2] = 0.1;
    p.alice_z_prob = 0.5;
    p.bob_z_prob = 0.5;
    p.fiber_loss_db_per_km = 0.21;
    p.distance_km = distance_km;
    p.detector_efficiency = 0.045;
    p.dark_count_prob = 1e-5;
    p.misalignment = 0.033;
    p.clock_hz = 1e9;
    return p;
}

static const uint8_t SEED[32] = {1, 2, 3};

typedef struct run_result {
    size_t n;
    uint64_t pulses[QKD_SIM_CLASSES];
    uint64_t clicks[QKD_SIM_CLASSES];
    uint64_t sifted, errors;
    int sorted;
} run_result;

static run_result run(const qkd_sim_params *p, uint64_t slots, size_t chunk, uint64_t *checksum)
{
    run_result r;
    memset(&r, 0, sizeof r);
    r.sorted = 1;
    qkd_sim *sim = malloc(qkd_sim_size());
    size_t cap = 1 << 16;
    qkd_sim_records rec = {malloc(cap * 8), malloc(cap), malloc(cap), malloc(cap), malloc(cap), malloc(cap)};
    CHECK_EQ(qkd_sim_init(sim, p, SEED), QKD_OK);
    uint64_t done = 0, last = 0, hash = 1469598103934665603ull;
    int first = 1;
    while (done < slots) {
        size_t n;
        uint64_t step, pulses[QKD_SIM_CLASSES];
        uint64_t want = slots - done < chunk ? slots - done : chunk;
        CHECK_EQ(qkd_sim_run(sim, want, &rec, cap, &n, &step, pulses), QKD_OK);
        done += step;
        for (int k = 0; k < QKD_SIM_CLASSES; k++)
            r.pulses[k] += pulses[k];
        for (size_t i = 0; i < n; i++) {
            if (!first && rec.slot[i] <= last)
                r.sorted = 0;
            first = 0;
            last = rec.slot[i];
            r.clicks[rec.intensity[i]]++;
            if (rec.alice_basis[i] == rec.bob_basis[i]) {
                r.sifted++;
                r.errors += rec.alice_bit[i] != rec.bob_outcome[i];
            }
            hash = (hash ^ rec.slot[i] ^ (uint64_t)rec.bob_outcome[i] << 63 ^ (uint64_t)rec.alice_bit[i] << 62) *
                   1099511628211ull;
            CHECK(rec.alice_bit[i] <= 1 && rec.bob_outcome[i] <= 1 && rec.alice_basis[i] <= 1 && rec.intensity[i] < 3);
        }
        r.n += n;
    }
    CHECK_EQ(qkd_sim_position(sim), slots);
    if (checksum)
        *checksum = hash;
    free(rec.slot); free(rec.alice_bit); free(rec.alice_basis); free(rec.intensity); free(rec.bob_basis);
    free(rec.bob_outcome);
    free(sim);
    return r;
}

static int within_sigma(double measured_count, double n, double p, double sigmas)
{
    double sd = sqrt(n * p * (1 - p));
    return fabs(measured_count - n * p) <= sigmas * sd + 1;
}

static void test_gain_matches_closed_form(void)
{
    double distances[] = {0, 25, 50};
    for (int d = 0; d < 3; d++) {
        qkd_sim_params p = gys_params(distances[d]);
        run_result r = run(&p, 20000000ull, 3000000ull, NULL);
        CHECK(r.sorted);
        uint64_t total = r.pulses[0] + r.pulses[1] + r.pulses[2];
        CHECK_EQ(total, 20000000ull);
        double eta = pow(10, -0.021 * distances[d]) * 0.045, y0 = 1 - (1 - 1e-5) * (1 - 1e-5);
        for (int k = 0; k < 3; k++) {
            /* gain of Lo, Ma, Chen 2005 / Ma, Qi, Zhao, Lo 2005: Q = 1 - (1 - Y0) exp(-eta mu) */
            double gain = 1 - (1 - y0) * exp(-eta * p.intensity[k]);
            CHECK(within_sigma((double)r.clicks[k], (double)r.pulses[k], gain, 5));
            CHECK(within_sigma((double)r.pulses[k], 2e7, p.class_prob[k], 5));
        }
    }
}

static void test_intercept_resend_qber(void)
{
    qkd_sim_params p = gys_params(10);
    p.misalignment = 0;
    p.class_prob[0] = 1; p.class_prob[1] = 0; p.class_prob[2] = 0;
    p.attack = QKD_SIM_ATTACK_INTERCEPT_RESEND;
    p.attack_fraction = 1;
    run_result r = run(&p, 10000000ull, 10000000ull, NULL);
    double qber = (double)r.errors / (double)r.sifted;
    CHECK(fabs(qber - 0.25) < 0.01);
}

static void test_reproducible_and_chunk_independent(void)
{
    qkd_sim_params p = gys_params(5);
    p.afterpulse_prob = 0.05;
    uint64_t h1, h2, h3;
    run_result a = run(&p, 3000000ull, 3000000ull, &h1);
    run_result b = run(&p, 3000000ull, 77777ull, &h2);
    CHECK_EQ(h1, h2);
    CHECK_EQ(a.n, b.n);
    CHECK(a.sorted && b.sorted);
    p.afterpulse_prob = 0;
    run_result c = run(&p, 3000000ull, 3000000ull, &h3);
    CHECK(h3 != h1);
    CHECK(a.n > c.n);   /* afterpulses add clicks */
}

static void test_rejects_bad_parameters(void)
{
    qkd_sim *sim = malloc(qkd_sim_size());
    qkd_sim_params p = gys_params(10);
    p.fiber_loss_db_per_km = -0.2;
    CHECK_EQ(qkd_sim_init(sim, &p, SEED), QKD_EINVAL);
    p = gys_params(10);
    p.dark_count_prob = 1.5;
    CHECK_EQ(qkd_sim_init(sim, &p, SEED), QKD_EINVAL);
    p = gys_params(10);
    p.intensity[1] = 0.6;   /* decoy above signal */
    CHECK_EQ(qkd_sim_init(sim, &p, SEED), QKD_EINVAL);
    p = gys_params(10);
    p.class_prob[0] = 0.5;  /* does not sum to 1 */
    CHECK_EQ(qkd_sim_init(sim, &p, SEED), QKD_EINVAL);
    p = gys_params(10);
    p.misalignment = NAN;
    CHECK_EQ(qkd_sim_init(sim, &p, SEED), QKD_EINVAL);
    p = gys_params(10);
    CHECK_EQ(qkd_sim_init(sim, &p, SEED), QKD_OK);
    size_t n;
    uint64_t done, pulses[3];
    CHECK_EQ(qkd_sim_run(sim, 10, NULL, 0, &n, &done, pulses), QKD_OK);   /* capacity 0: no records, no slots */
    CHECK_EQ(done, 0u);
    uint64_t slot[4];
    uint8_t col[5][4];
    qkd_sim_records rec = {slot, col[0], col[1], col[2], col[3], col[4]};
    CHECK_EQ(qkd_sim_run(sim, 10, &rec, 4, &n, &done, pulses), QKD_OK);
    CHECK_EQ(done, 10u);
    CHECK_EQ(qkd_sim_run(sim, UINT64_MAX, &rec, 4, &n, &done, pulses), QKD_ERANGE);
    CHECK_EQ(qkd_sim_run(NULL, 1, &rec, 4, &n, &done, pulses), QKD_EINVAL);
    p.protocol = QKD_SIM_E91;
    CHECK_EQ(qkd_sim_configure(sim, &p), QKD_EINVAL);
    free(sim);
}

static void test_e91_settings_and_gain(void)
{
    qkd_sim_params p = gys_params(10);
    p.protocol = QKD_SIM_E91;
    p.detector_efficiency = 0.2;
    p.pair_mean = 0.05;
    p.source_position_km = 5;
    p.e91_alice_prob[0] = p.e91_alice_prob[1] = 0.5;
    for (int i = 0; i < 4; i++)
        p.e91_bob_prob[i] = 0.25;
    qkd_sim *sim = malloc(qkd_sim_size());
    CHECK_EQ(qkd_sim_init(sim, &p, SEED), QKD_OK);
    qkd_sim_model m;
    CHECK_EQ(qkd_sim_model_of(sim, &m), QKD_OK);
    CHECK_EQ(m.n_types, 8);
    size_t cap = 1 << 16, n;
    uint64_t done, pulses[3];
    qkd_sim_records rec = {malloc(cap * 8), malloc(cap), malloc(cap), malloc(cap), malloc(cap), malloc(cap)};
    CHECK_EQ(qkd_sim_run(sim, 50000000ull, &rec, cap, &n, &done, pulses), QKD_OK);
    CHECK(n > 1000);
    uint64_t key = 0, key_err = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(rec.alice_basis[i] <= QKD_SIM_E91_DEG_45);
        CHECK(rec.bob_basis[i] <= QKD_SIM_E91_DEG_MINUS_22_5);
        CHECK_EQ(rec.intensity[i], 0);
        if (rec.alice_basis[i] == rec.bob_basis[i]) {
            key++;
            key_err += rec.alice_bit[i] != rec.bob_outcome[i];
        }
    }
    CHECK_EQ(pulses[0], done);
    CHECK(within_sigma((double)n, (double)done, m.click_prob, 5) || n == cap);
    CHECK(key > 0 && (double)key_err / (double)key < 0.1);
    p.attack = QKD_SIM_ATTACK_PNS;   /* no attacks on the pair source */
    CHECK_EQ(qkd_sim_configure(sim, &p), QKD_EINVAL);
    free(rec.slot); free(rec.alice_bit); free(rec.alice_basis); free(rec.intensity); free(rec.bob_basis);
    free(rec.bob_outcome);
    free(sim);
}

static void test_attacks_keep_the_signal_gain(void)
{
    qkd_sim_params p = gys_params(60);
    p.detector_efficiency = 0.1;
    qkd_sim *sim = malloc(qkd_sim_size());
    CHECK_EQ(qkd_sim_init(sim, &p, SEED), QKD_OK);
    qkd_sim_model honest, attacked;
    qkd_sim_model_of(sim, &honest);
    int attacks[] = {QKD_SIM_ATTACK_INTERCEPT_RESEND, QKD_SIM_ATTACK_PNS, QKD_SIM_ATTACK_BLINDING};
    for (int i = 0; i < 3; i++) {
        p.attack = attacks[i];
        p.attack_fraction = 1;
        p.blinding_power_w = 1e-3;
        CHECK_EQ(qkd_sim_configure(sim, &p), QKD_OK);
        qkd_sim_model_of(sim, &attacked);
        CHECK(fabs(attacked.class_gain[0] / honest.class_gain[0] - 1) < 1e-6);
        if (attacks[i] == QKD_SIM_ATTACK_PNS)
            CHECK(attacked.class_gain[1] < 0.5 * honest.class_gain[1]);   /* decoys starve */
        if (attacks[i] == QKD_SIM_ATTACK_BLINDING) {
            CHECK(attacked.monitor_power_w > 1e-4);
            CHECK(fabs(attacked.class_error[0] - honest.class_error[0]) < 0.1 * honest.class_error[0]);
        }
        if (attacks[i] == QKD_SIM_ATTACK_INTERCEPT_RESEND)
            CHECK(attacked.class_error[0] > 0.25);
    }
    CHECK(honest.monitor_power_w < 1e-9);
    free(sim);
}

static void test_alias_table_equals_posterior(void)
{
    int attacks[] = {QKD_SIM_ATTACK_NONE, QKD_SIM_ATTACK_INTERCEPT_RESEND, QKD_SIM_ATTACK_PNS, QKD_SIM_ATTACK_BLINDING};
    for (int a = 0; a < 4; a++) {
        qkd_sim_params p = gys_params(30);
        p.attack = attacks[a];
        p.attack_fraction = 0.3;
        qkd_sim_table t;
        CHECK_EQ(qkd_sim_build_table(&p, &t), QKD_OK);
        int k = 3 * t.n;
        double mass[3 * QKD_SIM_MAX_TYPES] = {0};
        for (int j = 0; j < k; j++) {
            CHECK(t.alias_keep[j] >= 0 && t.alias_keep[j] <= 1 + 1e-12 && t.alias_other[j] < k);
            mass[j] += t.alias_keep[j] / k;
            mass[t.alias_other[j]] += (1 - t.alias_keep[j]) / k;
        }
        double previous = 0;
        for (int j = 0; j < k; j++) {
            CHECK(fabs(mass[j] - (t.cum_posterior[j] - previous)) < 1e-12);
            previous = t.cum_posterior[j];
        }
    }
}

int main(void)
{
    test_chacha_rfc8439_block();
    test_chacha_wide_and_narrow_agree();
    test_alias_table_equals_posterior();
    test_gain_matches_closed_form();
    test_intercept_resend_qber();
    test_reproducible_and_chunk_independent();
    test_rejects_bad_parameters();
    test_e91_settings_and_gain();
    test_attacks_keep_the_signal_gain();
    return check_report("test_sim");
}
