/* qkd_sim.h - photon-level QKD link simulator: source, fiber, detectors, attacks, gap sampler.
 *
 * Theory of operation. Every time slot of the source is a draw from a finite set of "slot types"
 * t = (intensity class k, Alice's basis a, Bob's basis b). For each type the channel model
 * (sim_channel.c) computes the joint probability of Bob's two detectors: neither clicks, only the
 * detector of Alice's bit value clicks ("same"), only the other one ("other"), or both. Alice's bit is
 * uniform and every model here is symmetric under flipping it, so it is drawn only for slots with a
 * detection. The total per-slot detection probability P = sum_t prior_t * click_t does not depend on
 * anything Alice or Bob keep secret, so the gaps between detections are geometric(P): the sampler
 * (sim_sampler.c) jumps from detection to detection, draws the slot type from its posterior
 * prior_t * click_t / P and the outcome from the type's joint distribution. Cost: O(detections).
 *
 * Afterpulses: a click raises the click probability of the same detector in the next gate only: each
 * detector that clicked fires again there with probability afterpulse_prob, independently of that gate's
 * photons and dark counts. The gate after a detection is thus a mixture: with no afterpulse (probability
 * (1 - p_ap) per clicked detector) it is an ordinary slot, so gap sampling resumes at it; with one it is
 * a click whatever the photons do, and its type, Alice's bit and the photon clicks are drawn in full and
 * OR'ed with the afterpulses. Exact for this one-gate model; the uniform that decides it also draws the
 * next gap when no afterpulse fires, so afterpulses cost extra work only for the clicks they cause.
 *
 * Records: one per detected slot; columns slot (uint64, strictly increasing), alice_bit, alice_basis,
 * intensity (class index), bob_basis, bob_outcome (uint8). Pulses emitted per intensity class are
 * counted for every slot (slots without detection are split among the classes by a multinomial draw
 * with their posterior weights; see qkd_sim_run).
 *
 * Randomness: ChaCha20 (RFC 8439) keyed by a 32-byte seed, one stream for the records and one for the
 * pulse totals, so records do not depend on how a run is split into calls.
 */
#ifndef QKD_SIM_H
#define QKD_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "qkd_bits.h"   /* error codes */

/* cffi:begin */
#define QKD_SIM_CLASSES 3          /* signal, decoy, vacuum */
#define QKD_SIM_MAX_TYPES 32

#define QKD_SIM_BB84 0
#define QKD_SIM_E91 1

#define QKD_SIM_PAIRS_THERMAL 0   /* single-mode SPDC: two-mode squeezed vacuum */
#define QKD_SIM_PAIRS_POISSON 1   /* many modes per gate: independent pairs */

#define QKD_SIM_ATTACK_NONE 0
#define QKD_SIM_ATTACK_INTERCEPT_RESEND 1
#define QKD_SIM_ATTACK_PNS 2
#define QKD_SIM_ATTACK_BLINDING 3

/* E91 analyser angles as basis codes in the records (settings of qkdd.protocols.e91, after Acin et al.,
 * PRL 98, 230501 (2007), with a second key basis as in BBM92): Alice uses codes 0, 1 (A0 = 0 deg,
 * A1 = 45 deg); Bob codes 2, 3, 0, 1 (B0 = 22.5 deg, B1 = -22.5 deg, B2 = 0 deg, B3 = 45 deg).
 * Equal codes are the key pairs (Z: 0 deg, X: 45 deg); CHSH uses Alice {0, 1} x Bob {2, 3}. */
#define QKD_SIM_E91_DEG_0 0
#define QKD_SIM_E91_DEG_45 1
#define QKD_SIM_E91_DEG_22_5 2
#define QKD_SIM_E91_DEG_MINUS_22_5 3

typedef struct qkd_sim_params {
    int protocol;                  /* QKD_SIM_BB84 or QKD_SIM_E91 */
    /* source, BB84: phase-randomised weak coherent pulses */
    double intensity[QKD_SIM_CLASSES];       /* mean photon numbers: signal mu > decoy nu > vacuum */
    double class_prob[QKD_SIM_CLASSES];      /* probability Alice picks each class; sum 1 */
    double alice_z_prob;           /* probability of basis Z (code 0); X is code 1 */
    double bob_z_prob;
    /* source, E91: SPDC polarisation-entangled pairs, thermal statistics */
    double pair_mean;              /* mean pair number per slot (mu = 2 lambda) */
    int pair_statistics;           /* QKD_SIM_PAIRS_THERMAL or QKD_SIM_PAIRS_POISSON */
    double source_position_km;     /* distance of the source from Alice along the fiber */
    double e91_alice_prob[2];      /* probabilities of A0 (0 deg), A1 (45 deg) */
    double e91_bob_prob[4];        /* probabilities of B0 (22.5), B1 (-22.5), B2 (0), B3 (45 deg) */
    /* fiber */
    double fiber_loss_db_per_km;
    double distance_km;
    /* detectors (Bob's; for E91 the same model at both ends) */
    double detector_efficiency;
    double dark_count_prob;        /* per gate, per detector */
    double misalignment;           /* e_d: probability a photon hits the wrong detector */
    double afterpulse_prob;        /* per click, in the next gate, same detector (BB84 only) */
    double clock_hz;
    /* drifts */
    double extra_loss_db;
    double misalignment_drift;     /* added to misalignment */
    /* attack */
    int attack;
    double attack_fraction;        /* intercept-resend: fraction of pulses intercepted */
    double blinding_power_w;       /* detector blinding: CW power at Bob's detectors */
} qkd_sim_params;

typedef struct qkd_sim_records {
    uint64_t *slot;
    uint8_t *alice_bit;
    uint8_t *alice_basis;
    uint8_t *intensity;
    uint8_t *bob_basis;
    uint8_t *bob_outcome;
} qkd_sim_records;

typedef struct qkd_sim_model {
    /* what the channel model predicts per slot (for tests, gains and the photocurrent monitor) */
    double click_prob;                     /* P: any detection in a slot */
    double class_gain[QKD_SIM_CLASSES];    /* detection probability per slot of each class */
    double class_error[QKD_SIM_CLASSES];   /* error probability of a detection in matching bases */
    double transmittance;                  /* fiber * detector efficiency (BB84: Bob's side) */
    double monitor_power_w;                /* mean optical power at Bob's detectors */
    int n_types;
} qkd_sim_model;

typedef struct qkd_sim qkd_sim;

size_t qkd_sim_size(void);
int qkd_sim_init(qkd_sim *sim, const qkd_sim_params *params, const uint8_t seed[32]);
int qkd_sim_configure(qkd_sim *sim, const qkd_sim_params *params);
int qkd_sim_model_of(const qkd_sim *sim, qkd_sim_model *model);
int qkd_sim_run(qkd_sim *sim, uint64_t n_slots, const qkd_sim_records *out, size_t capacity,
                size_t *n_records, uint64_t *slots_done, uint64_t pulses[QKD_SIM_CLASSES]);
uint64_t qkd_sim_position(const qkd_sim *sim);
/* cffi:end */

#endif
