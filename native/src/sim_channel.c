/* sim_channel.c - the physics: per slot type, the joint click distribution of Bob's two detectors for
 * weak coherent pulses over a lossy fiber, under intercept-resend, photon-number splitting and detector
 * blinding, and for an SPDC entangled-pair source (E91). Builds the table the gap sampler draws from. */
#include "sim_internal.h"

#include <math.h>
#include <string.h>

#define PHOTON_ENERGY_1550NM_J 1.2816e-19   /* h c / 1550 nm */
#define MAX_PHOTONS 400

/* Joint distribution of two detectors, as P(none), P(only same), P(only other), P(both). */
typedef struct joint {
    double none, same, other, both;
} joint;

static joint joint_independent(double click_same, double click_other)
{
    joint j = {(1 - click_same) * (1 - click_other), click_same * (1 - click_other),
               (1 - click_same) * click_other, click_same * click_other};
    return j;
}

/* Phase-randomised coherent light with mean photon numbers m_same, m_other at the two detectors (a
 * beam-split coherent state is a product of coherent states, so the detectors click independently):
 * P(click) = 1 - (1 - p_dark) exp(-m). Summed over both detectors this is the gain of the channel model
 * of Lo, Ma, Chen, PRL 94, 230504 (2005) and Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005),
 * Q = 1 - (1 - Y0) exp(-eta mu) with Y0 = 1 - (1 - p_dark)^2. */
static joint joint_coherent(double m_same, double m_other, double p_dark)
{
    return joint_independent(1 - (1 - p_dark) * exp(-m_same), 1 - (1 - p_dark) * exp(-m_other));
}

/* A Fock state of m photons, each independently reaching the "same" detector with probability r_same and
 * the "other" with r_other (the rest is lost), plus independent dark counts. */
static joint joint_fock(int m, double r_same, double r_other, double p_dark)
{
    double none = (1 - p_dark) * (1 - p_dark) * pow(1 - r_same - r_other, m);
    double no_click_same = (1 - p_dark) * pow(1 - r_same, m);
    double no_click_other = (1 - p_dark) * pow(1 - r_other, m);
    joint j = {none, no_click_other - none, no_click_same - none, 1 - no_click_same - no_click_other + none};
    return j;
}

static void joint_add(joint *acc, joint j, double weight)
{
    acc->none += weight * j.none;
    acc->same += weight * j.same;
    acc->other += weight * j.other;
    acc->both += weight * j.both;
}

static double clamp01(double x)
{
    return x < 0 ? 0 : x > 1 ? 1 : x;
}

static int prob_ok(double p)
{
    return p >= 0 && p <= 1;   /* false for NaN too */
}

int qkd_sim_check_params(const qkd_sim_params *p)
{
    if (!p)
        return QKD_EINVAL;
    if (p->protocol != QKD_SIM_BB84 && p->protocol != QKD_SIM_E91)
        return QKD_EINVAL;
    if (!(p->fiber_loss_db_per_km >= 0 && p->fiber_loss_db_per_km < 100) || !(p->distance_km >= 0 && p->distance_km <= 1e5))
        return QKD_EINVAL;
    if (!(p->extra_loss_db >= 0 && p->extra_loss_db < 1000))
        return QKD_EINVAL;
    if (!prob_ok(p->detector_efficiency) || !prob_ok(p->dark_count_prob) || !prob_ok(p->misalignment) ||
        !prob_ok(p->afterpulse_prob) || !(p->misalignment_drift >= 0 && p->misalignment_drift <= 0.5) ||
        p->misalignment > 0.5 || !(p->clock_hz > 0 && p->clock_hz < 1e13))
        return QKD_EINVAL;
    if (p->protocol == QKD_SIM_BB84) {
        double sum = 0;
        for (int k = 0; k < QKD_SIM_CLASSES; k++) {
            if (!prob_ok(p->class_prob[k]) || !(p->intensity[k] >= 0 && p->intensity[k] <= 10))
                return QKD_EINVAL;
            sum += p->class_prob[k];
        }
        if (fabs(sum - 1) > 1e-9 || !prob_ok(p->alice_z_prob) || !prob_ok(p->bob_z_prob))
            return QKD_EINVAL;
        /* signal > decoy > vacuum (Ma, Qi, Zhao, Lo 2005 need mu > nu > nu_0 >= 0) */
        if (!(p->intensity[0] > p->intensity[1] && p->intensity[1] > p->intensity[2]) && p->class_prob[1] > 0)
            return QKD_EINVAL;
        if (p->attack < QKD_SIM_ATTACK_NONE || p->attack > QKD_SIM_ATTACK_BLINDING || !prob_ok(p->attack_fraction) ||
            !(p->blinding_power_w >= 0 && p->blinding_power_w < 10))
            return QKD_EINVAL;
    } else {
        double sa = 0, sb = 0;
        for (int i = 0; i < 2; i++) {
            if (!prob_ok(p->e91_alice_prob[i]))
                return QKD_EINVAL;
            sa += p->e91_alice_prob[i];
        }
        for (int i = 0; i < 4; i++) {
            if (!prob_ok(p->e91_bob_prob[i]))
                return QKD_EINVAL;
            sb += p->e91_bob_prob[i];
        }
        if (fabs(sa - 1) > 1e-9 || fabs(sb - 1) > 1e-9)
            return QKD_EINVAL;
        if (p->pair_statistics != QKD_SIM_PAIRS_THERMAL && p->pair_statistics != QKD_SIM_PAIRS_POISSON)
            return QKD_EINVAL;
        if (!(p->pair_mean > 0 && p->pair_mean <= 10) ||
            !(p->source_position_km >= 0 && p->source_position_km <= p->distance_km))
            return QKD_EINVAL;
        if (p->attack != QKD_SIM_ATTACK_NONE)
            return QKD_EINVAL;
    }
    return QKD_OK;
}

/* Intercept-resend, per intercepted pulse: Eve sits at Alice's output, makes a quantum non-demolition
 * photon-number measurement, measures one photon in a random basis e and resends the same number of
 * photons, all prepared in her result, into the fiber. Bob's photon-number statistics (hence every gain)
 * are unchanged; the Poisson mixture of resent Fock states again gives independent detectors. With
 * matching bases, e != a gives a random result: QBER = p/4 for fraction p (Bennett, Brassard, Ekert,
 * Sci. Am. 267, 50 (1992); Gisin, Ribordy, Tittel, Zbinden, RMP 74, 145 (2002)). */
static joint joint_intercept_resend(double mean_at_bob, int alice_basis, int bob_basis, double e_mis, double p_dark)
{
    joint acc = {0, 0, 0, 0};
    for (int eve_basis = 0; eve_basis < 2; eve_basis++) {
        /* resent state: relation of Eve's result to Alice's bit, with its probability */
        for (int result_same = 0; result_same < 2; result_same++) {
            double p_result = eve_basis == alice_basis ? (result_same ? 1.0 : 0.0) : 0.5;
            if (p_result == 0)
                continue;
            joint j;
            if (bob_basis != eve_basis)
                j = joint_coherent(mean_at_bob / 2, mean_at_bob / 2, p_dark);
            else if (result_same)
                j = joint_coherent(mean_at_bob * (1 - e_mis), mean_at_bob * e_mis, p_dark);
            else
                j = joint_coherent(mean_at_bob * e_mis, mean_at_bob * (1 - e_mis), p_dark);
            joint_add(&acc, j, 0.5 * p_result);
        }
    }
    return acc;
}

static double poisson(int n, double mean)
{
    if (mean <= 0)
        return n == 0 ? 1 : 0;
    return exp(-mean + n * log(mean) - lgamma(n + 1.0));
}

/* Photon-number splitting (Brassard, Lutkenhaus, Mor, Sanders, PRL 85, 1330 (2000); Lutkenhaus,
 * PRA 61, 052304 (2000)): Eve counts photons (QND), keeps one photon of every multi-photon pulse and
 * sends the other n-1 to Bob over a lossless line; she blocks single photons. She forwards a fraction
 * of the multi-photon pulses (or, where they do not suffice, also a fraction of the single photons,
 * which she then cannot read) so that Bob's gain for the signal intensity equals the gain of the
 * honest channel. She cannot tell intensity classes apart, so weaker decoy pulses, which carry fewer
 * multi-photon components, lose gain: the decoy method's signature (Hwang, PRL 91, 057901 (2003)). */
typedef struct pns_strategy {
    double forward_single;
    double forward_multi;
} pns_strategy;

static double fock_click(int m, double eta_bob, double p_dark)
{
    return 1 - (1 - p_dark) * (1 - p_dark) * pow(1 - eta_bob, m);
}

static pns_strategy pns_solve(double mu, double target_gain, double eta_bob, double p_dark)
{
    double y0 = fock_click(0, eta_bob, p_dark);
    double p0 = poisson(0, mu), p1 = poisson(1, mu), pm = 1 - p0 - p1;
    double multi = 0;   /* sum_{n>=2} P(n) D(n-1) */
    for (int n = 2; n < MAX_PHOTONS; n++) {
        double pn = poisson(n, mu);
        multi += pn * fock_click(n - 1, eta_bob, p_dark);
        if (n > mu && pn < 1e-18)
            break;
    }
    pns_strategy s = {0, 1};
    double base = (p0 + p1) * y0;
    if (base + multi >= target_gain) {
        s.forward_multi = multi > pm * y0 ? clamp01((target_gain - base - pm * y0) / (multi - pm * y0)) : 0;
    } else {
        double single = p1 * (fock_click(1, eta_bob, p_dark) - y0);
        s.forward_single = single > 0 ? clamp01((target_gain - base - multi) / single) : 0;
    }
    return s;
}

static joint joint_pns(double mu, pns_strategy s, double r_same, double r_other, double p_dark)
{
    joint acc = {0, 0, 0, 0};
    joint dark = joint_fock(0, 0, 0, p_dark);
    double total = 0;
    for (int n = 0; n < MAX_PHOTONS; n++) {
        double pn = poisson(n, mu);
        double forward = n == 0 ? 0 : n == 1 ? s.forward_single : s.forward_multi;
        int sent = n <= 1 ? n : n - 1;
        joint_add(&acc, dark, pn * (1 - forward));
        if (forward > 0)
            joint_add(&acc, joint_fock(sent, r_same, r_other, p_dark), pn * forward);
        total += pn;
        if (n > mu && pn < 1e-18)
            break;
    }
    /* renormalise the truncated tail (< 1e-15) */
    acc.none /= total; acc.same /= total; acc.other /= total; acc.both /= total;
    return acc;
}

/* Detector blinding (Lydersen et al., Nature Photonics 4, 686 (2010)): bright CW light turns Bob's APDs
 * into classical linear detectors (no dark counts, no afterpulses). Eve measures every pulse at Alice's
 * output in a random basis (probability of Bob's choice) with an ideal detector and sends a bright
 * trigger pulse in her result; it makes a detector click only when Bob's basis equals hers (otherwise it
 * splits below threshold). She flips a fraction e_d of her triggers to mimic the expected QBER and sends
 * triggers with the probabilities that reproduce the honest signal gain and vacuum yield. */
typedef struct blinding_strategy {
    double trigger;        /* probability of a trigger when Eve detected a photon */
    double noise;          /* probability of a random trigger when she did not */
    double flip;           /* fraction of triggers sent with the opposite bit */
    double eve_z_prob;
} blinding_strategy;

static joint joint_blinding(double mu, int alice_basis, int bob_basis, blinding_strategy s)
{
    double eve_detects = 1 - exp(-mu);
    double p_eve_basis = bob_basis == 0 ? s.eve_z_prob : 1 - s.eve_z_prob;   /* Eve's basis = Bob's */
    double p_same;
    if (alice_basis == bob_basis)
        p_same = eve_detects * s.trigger * (1 - s.flip) + (1 - eve_detects) * s.noise * 0.5;
    else
        p_same = (eve_detects * s.trigger + (1 - eve_detects) * s.noise) * 0.5;
    double p_click = (eve_detects * s.trigger + (1 - eve_detects) * s.noise) * p_eve_basis;
    p_same *= p_eve_basis;
    joint j = {1 - p_click, p_same, p_click - p_same, 0};
    return j;
}

static double basis_prob(double z_prob, int basis)
{
    return basis == 0 ? z_prob : 1 - z_prob;
}

static double transmittance_db(double loss_db)
{
    return pow(10.0, -loss_db / 10.0);
}

static void finish_table(qkd_sim_table *t, const qkd_sim_params *p)
{
    double click = 0, no_click[QKD_SIM_CLASSES] = {0}, no_click_total = 0, prior = 0;
    for (int i = 0; i < t->n; i++) {
        const qkd_sim_type *ty = &t->type[i];
        double c = 1 - ty->none;
        click += ty->prior * c;
        no_click[ty->cls] += ty->prior * ty->none;
        no_click_total += ty->prior * ty->none;
    }
    double acc = 0;
    int last_positive = 0;
    for (int i = 0; i < t->n; i++) {
        const qkd_sim_type *ty = &t->type[i];
        const double outcome[3] = {ty->same, ty->other, ty->both};
        for (int o = 0; o < 3; o++) {
            acc += ty->prior * outcome[o];
            t->cum_posterior[3 * i + o] = click > 0 ? acc / click : 1;
            if (ty->prior * outcome[o] > 0)
                last_positive = 3 * i + o;
        }
        prior += ty->prior;
        t->cum_prior[i] = prior;
    }
    if (t->n > 0) {
        /* the last entry with non-zero weight closes the distribution against rounding */
        for (int j = last_positive; j < 3 * t->n; j++)
            t->cum_posterior[j] = 1;
        t->cum_prior[t->n - 1] = 1;
    }
    for (int k = 0; k < QKD_SIM_CLASSES; k++)
        t->gap_weight[k] = no_click_total > 0 ? no_click[k] / no_click_total : 0;
    t->click_prob = click;
    t->log_no_click = log1p(-click);
    t->model.click_prob = click;
    t->model.n_types = t->n;
    (void)p;
}

/* Walker's alias method (A. J. Walker, ACM TOMS 3, 253 (1977)), built in Vose's stable order
 * (M. D. Vose, IEEE TSE 17, 972 (1991)): entry j is kept with probability keep[j], else replaced by
 * other[j]; one uniform draw then costs O(1) instead of a binary search. */
static void build_alias(qkd_sim_table *t)
{
    int k = 3 * t->n;
    double scaled[3 * QKD_SIM_MAX_TYPES];
    int small[3 * QKD_SIM_MAX_TYPES], large[3 * QKD_SIM_MAX_TYPES];
    int n_small = 0, n_large = 0;
    double previous = 0;
    for (int j = 0; j < k; j++) {
        scaled[j] = (t->cum_posterior[j] - previous) * k;
        previous = t->cum_posterior[j];
        t->alias_other[j] = (uint8_t)j;
        if (scaled[j] < 1)
            small[n_small++] = j;
        else
            large[n_large++] = j;
    }
    while (n_small > 0 && n_large > 0) {
        int s = small[--n_small], l = large[--n_large];
        t->alias_keep[s] = scaled[s];
        t->alias_other[s] = (uint8_t)l;
        scaled[l] -= 1 - scaled[s];
        if (scaled[l] < 1)
            small[n_small++] = l;
        else
            large[n_large++] = l;
    }
    /* what is left holds probability 1 up to rounding */
    while (n_large > 0)
        t->alias_keep[large[--n_large]] = 1;
    while (n_small > 0)
        t->alias_keep[small[--n_small]] = 1;
}

static void class_model(qkd_sim_table *t)
{
    for (int k = 0; k < QKD_SIM_CLASSES; k++) {
        double prior = 0, click = 0, match = 0, err = 0;
        for (int i = 0; i < t->n; i++) {
            const qkd_sim_type *ty = &t->type[i];
            if (ty->cls != k)
                continue;
            prior += ty->prior;
            click += ty->prior * (1 - ty->none);
            if (ty->alice_basis == ty->bob_basis) {
                match += ty->prior * (1 - ty->none);
                err += ty->prior * (ty->other + 0.5 * ty->both);
            }
        }
        t->model.class_gain[k] = prior > 0 ? click / prior : 0;
        t->model.class_error[k] = match > 0 ? err / match : 0;
    }
}

static int build_bb84(const qkd_sim_params *p, qkd_sim_table *t)
{
    double fiber = transmittance_db(p->fiber_loss_db_per_km * p->distance_km + p->extra_loss_db);
    double eta = fiber * p->detector_efficiency;
    double e_mis = p->misalignment + p->misalignment_drift;
    if (e_mis > 0.5)
        e_mis = 0.5;
    double pd = p->dark_count_prob;
    double y0 = fock_click(0, 0, pd);
    /* Eve tunes PNS and blinding to the honest signal gain, 1 - (1 - Y0) exp(-eta mu). */
    double honest_signal_gain = 1 - (1 - y0) * exp(-eta * p->intensity[0]);
    pns_strategy pns = {0, 0};
    blinding_strategy blind = {0, 0, e_mis, p->bob_z_prob};
    if (p->attack == QKD_SIM_ATTACK_PNS)
        pns = pns_solve(p->intensity[0], honest_signal_gain, p->detector_efficiency, pd);
    if (p->attack == QKD_SIM_ATTACK_BLINDING) {
        double basis_match = p->bob_z_prob * p->bob_z_prob + (1 - p->bob_z_prob) * (1 - p->bob_z_prob);
        blind.noise = clamp01(y0 / basis_match);
        double e0 = exp(-p->intensity[0]);
        blind.trigger = e0 < 1 ? clamp01((honest_signal_gain / basis_match - e0 * blind.noise) / (1 - e0)) : 0;
    }
    t->n = 0;
    double mean_photons = 0;
    for (int k = 0; k < QKD_SIM_CLASSES; k++) {
        double mu = p->intensity[k];
        mean_photons += p->class_prob[k] * mu;
        for (int a = 0; a < 2; a++) {
            for (int b = 0; b < 2; b++) {
                double prior = p->class_prob[k] * basis_prob(p->alice_z_prob, a) * basis_prob(p->bob_z_prob, b);
                if (prior <= 0)
                    continue;
                double m = eta * mu;
                joint honest = a == b ? joint_coherent(m * (1 - e_mis), m * e_mis, pd) : joint_coherent(m / 2, m / 2, pd);
                joint j = honest;
                if (p->attack == QKD_SIM_ATTACK_INTERCEPT_RESEND) {
                    j = (joint){0, 0, 0, 0};
                    joint_add(&j, honest, 1 - p->attack_fraction);
                    joint_add(&j, joint_intercept_resend(m, a, b, e_mis, pd), p->attack_fraction);
                } else if (p->attack == QKD_SIM_ATTACK_PNS) {
                    double rs = a == b ? p->detector_efficiency * (1 - e_mis) : p->detector_efficiency / 2;
                    double ro = a == b ? p->detector_efficiency * e_mis : p->detector_efficiency / 2;
                    j = joint_pns(mu, pns, rs, ro, pd);
                } else if (p->attack == QKD_SIM_ATTACK_BLINDING) {
                    j = joint_blinding(mu, a, b, blind);
                }
                qkd_sim_type *ty = &t->type[t->n++];
                ty->prior = prior;
                ty->none = j.none;
                ty->same = j.same;
                ty->other = j.other;
                ty->both = j.both;
                ty->cls = (uint8_t)k;
                ty->alice_basis = (uint8_t)a;
                ty->bob_basis = (uint8_t)b;
            }
        }
    }
    t->afterpulse_prob = p->attack == QKD_SIM_ATTACK_BLINDING ? 0 : p->afterpulse_prob;
    t->model.transmittance = eta;
    t->model.monitor_power_w = mean_photons * fiber * p->clock_hz * PHOTON_ENERGY_1550NM_J +
                               (p->attack == QKD_SIM_ATTACK_BLINDING ? p->blinding_power_w : 0);
    return QKD_OK;
}

/* E91 with an SPDC source of polarisation-entangled pairs (thermal pair statistics
 * P(n) = (n+1) lambda^n / (1+lambda)^(n+2), mean 2 lambda): Ma, Fung, Lo, PRA 76, 012307 (2007),
 * Sec. III (gain and QBER of the entanglement PDC source). Coincidence gain (two threshold detectors per
 * side, Y0 = 1 - (1 - p_dark)^2; follows from summing (n+1) x^n with x = lambda/(1+lambda)):
 *   Q = 1 - (1-Y0A)/(1+eta_A lambda)^2 - (1-Y0B)/(1+eta_B lambda)^2
 *         + (1-Y0A)(1-Y0B)/(1 + eta_A lambda + eta_B lambda - eta_A eta_B lambda)^2
 * and QBER in matching bases, with e0 = 1/2:
 *   E Q = e0 Q - 2 (e0 - e_d) eta_A eta_B lambda (1+lambda) / [(1+eta_A lambda)(1+eta_B lambda)
 *         (1 + eta_A lambda + eta_B lambda - eta_A eta_B lambda)].
 * This is E = 1/2 - F (1/2 - e_d): a fraction F of coincidences behaves as one pair with misalignment
 * e_d, the rest (multi-pair and dark-count coincidences, double clicks squashed to a random bit) as
 * white noise. We extend that to every pair of analyser angles as a Werner state,
 * P(equal outcomes) = F (1 + (1 - 2 e_d) cos 2(theta_A - theta_B)) / 2 + (1 - F) / 2, which gives
 * visibility V = F (1 - 2 e_d), S = 2 sqrt(2) V, QBER = (1 - V) / 2 (the approximation: the exact
 * multi-pair correlations at non-matching angles are replaced by white noise). With Poisson pair
 * statistics (pair_statistics = QKD_SIM_PAIRS_POISSON) the outcome distribution is exact instead, see
 * poisson_pairs() below. */
static const double E91_CODE_ANGLE[4] = {0, M_PI / 4, M_PI / 8, -M_PI / 8};  /* by basis code */
static const uint8_t E91_ALICE_CODE[2] = {QKD_SIM_E91_DEG_0, QKD_SIM_E91_DEG_45};
static const uint8_t E91_BOB_CODE[4] = {QKD_SIM_E91_DEG_22_5, QKD_SIM_E91_DEG_MINUS_22_5, QKD_SIM_E91_DEG_0,
                                        QKD_SIM_E91_DEG_45};

/* Poisson pair statistics (a source with many modes per gate: independent pairs, number ~ Poisson(mu)).
 * By Poisson thinning the pairs with both photons detected, with only Alice's and with only Bob's are
 * independent Poisson numbers of means mu eta_A eta_B, mu eta_A (1 - eta_B), mu eta_B (1 - eta_A). Each
 * pair gives Alice a uniform value c and Bob c XOR f, P(f = 1) = q (the single-pair error at the two
 * analyser angles); a lone photon a uniform value. N(U_A, U_B), the probability that no detector of the
 * sets U_A, U_B fires, is then a product of exponentials (E[x^K] = exp(-m (1 - x)) for K ~ Poisson(m))
 * times the dark-count factors, and inclusion-exclusion gives the exact probability of every pattern of
 * lit detectors; double clicks are squashed to a random bit. Exact at any angles, no white-noise model. */
static double unlit(unsigned ua, unsigned ub, double m_ab, double m_a, double m_b, double p_dark, double q)
{
    double avoid = 0;   /* probability that one detected pair lights nothing in U_A and U_B */
    for (unsigned c = 0; c < 2; c++)
        for (unsigned f = 0; f < 2; f++)
            if (!((ua >> c) & 1u) && !((ub >> (c ^ f)) & 1u))
                avoid += 0.5 * (f ? q : 1 - q);
    int na = __builtin_popcount(ua), nb = __builtin_popcount(ub);
    return exp(-m_ab * (1 - avoid) - m_a * na / 2.0 - m_b * nb / 2.0) * pow(1 - p_dark, na + nb);
}

static void poisson_pairs(double m_ab, double m_a, double m_b, double p_dark, double q, double *gain,
                          double *equal)
{
    *gain = 0;
    *equal = 0;
    for (unsigned sa = 1; sa < 4; sa++) {
        for (unsigned sb = 1; sb < 4; sb++) {
            double exactly = 0;   /* P(lit detectors are exactly sa at Alice and sb at Bob) */
            for (unsigned ta = 0; ta < 4; ta++) {
                if (ta & ~sa)
                    continue;
                for (unsigned tb = 0; tb < 4; tb++) {
                    if (tb & ~sb)
                        continue;
                    int sign = (__builtin_popcount(ta) + __builtin_popcount(tb)) & 1 ? -1 : 1;
                    exactly += sign * unlit((3u & ~sa) | ta, (3u & ~sb) | tb, m_ab, m_a, m_b, p_dark, q);
                }
            }
            double agree = sa == 3 || sb == 3 ? 0.5 : sa == sb ? 1.0 : 0.0;
            *gain += exactly;
            *equal += exactly * agree;
        }
    }
}

static int build_e91(const qkd_sim_params *p, qkd_sim_table *t)
{
    double lambda = p->pair_mean / 2;
    double eta_a = p->detector_efficiency * transmittance_db(p->fiber_loss_db_per_km * p->source_position_km);
    double eta_b = p->detector_efficiency *
                   transmittance_db(p->fiber_loss_db_per_km * (p->distance_km - p->source_position_km) + p->extra_loss_db);
    double e_mis = p->misalignment + p->misalignment_drift;
    if (e_mis > 0.5)
        e_mis = 0.5;
    double y0 = fock_click(0, 0, p->dark_count_prob);
    double da = 1 + eta_a * lambda, db = 1 + eta_b * lambda, dab = 1 + eta_a * lambda + eta_b * lambda - eta_a * eta_b * lambda;
    double gain = 1 - (1 - y0) / (da * da) - (1 - y0) / (db * db) + (1 - y0) * (1 - y0) / (dab * dab);
    double correlated = 2 * eta_a * eta_b * lambda * (1 + lambda) / (da * db * dab);
    double fraction = gain > 0 ? correlated / gain : 0;
    t->n = 0;
    for (int a = 0; a < 2; a++) {
        for (int b = 0; b < 4; b++) {
            double prior = p->e91_alice_prob[a] * p->e91_bob_prob[b];
            if (prior <= 0)
                continue;
            double delta = E91_CODE_ANGLE[E91_ALICE_CODE[a]] - E91_CODE_ANGLE[E91_BOB_CODE[b]];
            double single_equal = (1 + (1 - 2 * e_mis) * cos(2 * delta)) / 2;   /* one pair, these angles */
            double coincidence = gain, both_equal;
            if (p->pair_statistics == QKD_SIM_PAIRS_POISSON) {
                double mu = p->pair_mean;
                poisson_pairs(mu * eta_a * eta_b, mu * eta_a * (1 - eta_b), mu * eta_b * (1 - eta_a), p->dark_count_prob,
                              1 - single_equal, &coincidence, &both_equal);
            } else {
                both_equal = gain * (fraction * single_equal + (1 - fraction) / 2);
            }
            qkd_sim_type *ty = &t->type[t->n++];
            ty->prior = prior;
            ty->none = 1 - coincidence;
            ty->same = both_equal;
            ty->other = coincidence - both_equal;
            ty->both = 0;
            ty->cls = 0;
            ty->alice_basis = E91_ALICE_CODE[a];
            ty->bob_basis = E91_BOB_CODE[b];
        }
    }
    t->afterpulse_prob = 0;
    t->model.transmittance = eta_a * eta_b;
    t->model.monitor_power_w = lambda * eta_b / p->detector_efficiency * p->clock_hz * PHOTON_ENERGY_1550NM_J;
    return QKD_OK;
}

int qkd_sim_build_table(const qkd_sim_params *p, qkd_sim_table *t)
{
    int rc = qkd_sim_check_params(p);
    if (rc != QKD_OK)
        return rc;
    memset(t, 0, sizeof *t);
    rc = p->protocol == QKD_SIM_BB84 ? build_bb84(p, t) : build_e91(p, t);
    if (rc != QKD_OK)
        return rc;
    for (int i = 0; i < t->n; i++) {
        qkd_sim_type *ty = &t->type[i];
        /* rounding can leave -1e-17 in a difference of probabilities */
        ty->same = ty->same < 0 ? 0 : ty->same;
        ty->other = ty->other < 0 ? 0 : ty->other;
        ty->both = ty->both < 0 ? 0 : ty->both;
        ty->none = clamp01(1 - ty->same - ty->other - ty->both);
    }
    finish_table(t, p);
    build_alias(t);
    class_model(t);
    return QKD_OK;
}
