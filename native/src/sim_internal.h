/* sim_internal.h - shared between the simulator sources (sim_*.c); not part of the public API. */
#ifndef QKD_SIM_INTERNAL_H
#define QKD_SIM_INTERNAL_H

#include "qkd_sim.h"

/* ChaCha20 keystream (Bernstein's original layout: 64-bit block counter, 64-bit stream id). */
#define QKD_CHACHA_WORDS 128    /* up to sixteen blocks per refill */

typedef struct qkd_chacha {
    uint32_t key[8];
    uint64_t counter;
    uint64_t stream;
    uint64_t block[QKD_CHACHA_WORDS];
    unsigned used;                 /* words of `block` already handed out */
    unsigned avail;                /* words of `block` filled */
    int lanes;                     /* blocks per refill: 4, 8 (AVX2) or 16 (AVX-512F) */
} qkd_chacha;

void qkd_chacha_init(qkd_chacha *rng, const uint8_t seed[32], uint64_t stream);
void qkd_chacha_refill(qkd_chacha *rng);

static inline uint64_t qkd_chacha_u64(qkd_chacha *rng)
{
    if (rng->used == rng->avail)
        qkd_chacha_refill(rng);
    return rng->block[rng->used++];
}

/* Uniform double in (0, 1], 53 random bits: never 0, so log() is safe. */
static inline double qkd_unit_from_u64(uint64_t x)
{
    return (double)((x >> 11) + 1) * 0x1.0p-53;
}

/* One slot type: its prior probability and the joint distribution of Bob's two detectors,
 * relative to Alice's bit ("same" = the detector of Alice's bit value). */
typedef struct qkd_sim_type {
    double prior;
    double none, same, other, both;        /* sum to 1 */
    uint8_t cls, alice_basis, bob_basis;
} qkd_sim_type;

typedef struct qkd_sim_table {
    int n;
    qkd_sim_type type[QKD_SIM_MAX_TYPES];
    double cum_posterior[3 * QKD_SIM_MAX_TYPES];  /* cumulative P(type, outcome | click): same, other, both */
    double alias_keep[3 * QKD_SIM_MAX_TYPES];     /* the same distribution as a Walker alias table */
    uint8_t alias_other[3 * QKD_SIM_MAX_TYPES];
    double cum_prior[QKD_SIM_MAX_TYPES];
    double gap_weight[QKD_SIM_CLASSES];       /* class distribution of slots without a click */
    double click_prob;                        /* P */
    double log_no_click;                      /* log(1 - P) */
    double afterpulse_prob;
    qkd_sim_model model;
} qkd_sim_table;

int qkd_sim_check_params(const qkd_sim_params *p);
int qkd_sim_build_table(const qkd_sim_params *p, qkd_sim_table *table);

struct qkd_sim {
    qkd_sim_params params;
    qkd_sim_table table;
    qkd_chacha record_rng;
    qkd_chacha totals_rng;
    uint64_t position;             /* next slot to simulate */
    uint64_t next_click;           /* pending detection slot, if next_click_valid */
    int next_click_valid;
    int afterpulse_pending;        /* the gate at `position` follows a click */
    uint8_t afterpulse_detectors;  /* bit v set: detector of value v clicked in the previous gate */
};

#endif
