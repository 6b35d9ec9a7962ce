"""GG02 with reverse reconciliation over a pure-loss channel (ideal detector, beta = 1, xi = 0): the module's
I_AB and Holevo bound against an independent computation in Eve's picture at any V_A, and the rates at large
V_A against the closed-form infinite-modulation limits, homodyne and heterodyne.

Sources, and what could be checked here. The limits are the ones the CV-QKD reviews give for the coherent-state
protocols over a pure-loss channel of transmittance eta (Weedbrook et al., Rev. Mod. Phys. 84, 621 (2012),
Sec. VI; Pirandola et al., Adv. Opt. Photon. 12, 1012 (2020), CV-QKD section):
    homodyne, RR:     R_hom = (1/2) log2[1 / (1 - eta)]                          (half the PLOB bound)
    heterodyne, RR:   R_het = h[(2 - eta)/eta] + log2[eta / (e (1 - eta))]
    heterodyne, DR:   R_het^DR = log2[eta / (e (1 - eta))]
with h(x) = ((x+1)/2) log2((x+1)/2) - ((x-1)/2) log2((x-1)/2); h[(2 - eta)/eta] = H2(eta)/eta, H2 the binary
entropy. Only the reviews' title pages were reachable here, not their text, so neither the printed form nor the
equation numbers could be confirmed; the three expressions are derived below (docstrings) from the pure-state
picture and checked against the module, not taken on trust. In particular log2[eta / (e (1 - eta))] on its own
is the DIRECT-reconciliation heterodyne limit (zero at eta = e/(1+e)); the reverse-reconciliation limit, which
the module computes, is higher by h[(2 - eta)/eta] (test below). PLOB: Pirandola, Laurenza, Ottaviani & Banchi,
Nat. Commun. 8, 15043 (2017), -log2(1 - eta) per channel use.
"""
import math

import pytest

from qkdd.protocols.cvqkd import CvParams, gg02_terms

TRANSMITTANCES = (0.95, 0.9, 0.5, 0.1, 0.01, 1e-3)


def entropy_bits(nu: float) -> float:
    """Von Neumann entropy (bits) of a one-mode Gaussian state with symplectic eigenvalue nu >= 1."""
    x = (nu - 1.0) / 2.0
    return 0.0 if x <= 0.0 else math.log2(x + 1.0) + x * math.log1p(1.0 / x) / math.log(2.0)


def binary_entropy(p: float) -> float:
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def h(x: float) -> float:
    return (x + 1) / 2 * math.log2((x + 1) / 2) - (x - 1) / 2 * math.log2((x - 1) / 2)


def ideal_rate(detection: str, modulation_variance: float, eta: float):
    params = CvParams(modulation_variance=modulation_variance, excess_noise=0.0, eta_det=1.0, electronic_noise=0.0,
                      beta=1.0, detection=detection)
    return gg02_terms(params, eta, 0.0)


def limit_rr(detection: str, eta: float) -> float:
    if detection == "homodyne":
        return 0.5 * math.log2(1.0 / (1.0 - eta))
    return h((2.0 - eta) / eta) + math.log2(eta / (math.e * (1.0 - eta)))


def eve_picture_holevo_bits(detection: str, modulation_variance: float, eta: float) -> float:
    """chi_BE = S(E) - S(E | Bob's outcome), E the one environment mode of the pure-loss beam splitter (input
    vacuum). In the entanglement-based picture A, B, E are pure, so S(AB) = S(E) with E thermal of variance
    V_E = (1 - eta) V + eta; after Bob's rank-one measurement A E is pure again. Cov(E, B) = sqrt(eta (1 - eta))
    (V - 1) on each quadrature, V_B = eta V + 1 - eta; heterodyne conditions both quadratures (V_B + 1 in the
    denominator), homodyne one (V_B). This is not how the module computes it (symplectic invariants of A B and
    of A conditioned on B), so agreement checks both."""
    v = modulation_variance + 1.0
    v_e, v_b = (1.0 - eta) * v + eta, eta * v + 1.0 - eta
    cov_sq = eta * (1.0 - eta) * (v - 1.0) ** 2
    if detection == "heterodyne":
        conditional = v_e - cov_sq / (v_b + 1.0)
    else:
        conditional = math.sqrt(v_e * (v_e - cov_sq / v_b))
    return entropy_bits(v_e) - entropy_bits(conditional)


@pytest.mark.parametrize("detection", ["homodyne", "heterodyne"])
@pytest.mark.parametrize("eta", TRANSMITTANCES)
def test_pure_loss_terms_match_the_eve_picture_at_every_modulation(detection, eta):
    """I_AB: homodyne (1/2) log2(1 + eta V_A), heterodyne log2(1 + eta V_A / 2) (two quadratures, each with half
    the signal against one unit of vacuum); chi_BE as in `eve_picture_holevo_bits`.
    From V_A = 1 to 1e8 SNU, to 1e-8 bit (before the invariants were solved without cancellation, the module's
    chi_BE was 6e-3 bit off at V_A = 1e7)."""
    for modulation_variance in (1.0, 10.0, 1e4, 1e6, 1e7, 1e8):
        rate = ideal_rate(detection, modulation_variance, eta)
        if detection == "heterodyne":
            expected_mutual = math.log2(1.0 + eta * modulation_variance / 2.0)
        else:
            expected_mutual = 0.5 * math.log2(1.0 + eta * modulation_variance)
        assert rate.mutual_information == pytest.approx(expected_mutual, rel=1e-12, abs=1e-12)
        assert rate.holevo_bound == pytest.approx(eve_picture_holevo_bits(detection, modulation_variance, eta),
                                                  abs=1e-8)


@pytest.mark.parametrize("detection", ["homodyne", "heterodyne"])
@pytest.mark.parametrize("eta", TRANSMITTANCES)
def test_rate_at_large_modulation_reaches_the_closed_form_limit(detection, eta):
    """I_AB - chi_BE at V_A = 1e8 SNU is within 1e-6 bit of the limit (the remaining gap is first order in 1/V_A:
    at most ~12/V_A here, at eta = 0.9 heterodyne). Derivation, V -> infinity: S(E) -> log2(e (1 - eta) V / 2);
    heterodyne I_AB -> log2(eta V / 2) and E's conditional variance -> (2 - eta)/eta, giving
    log2[eta / (e (1 - eta))] + h[(2 - eta)/eta]; homodyne I_AB -> (1/2) log2(eta V) and E's conditional
    eigenvalue -> sqrt((1 - eta) V / eta), giving (1/2) log2[1 / (1 - eta)]."""
    rate = ideal_rate(detection, 1e8, eta)
    assert rate.key_rate_per_symbol == pytest.approx(rate.mutual_information - rate.holevo_bound, abs=1e-15)
    assert abs(rate.key_rate_per_symbol - limit_rr(detection, eta)) < 1e-6


@pytest.mark.parametrize("detection", ["homodyne", "heterodyne"])
@pytest.mark.parametrize("eta", [0.9, 0.5, 0.1])
def test_rate_approaches_the_limit_from_below_as_one_over_v_a(detection, eta):
    """From below, and ten times closer per decade of V_A (1e3 -> 1e4 -> 1e5): a first-order 1/V_A approach,
    which a wrong limit (off by any constant) would not show."""
    gaps = [limit_rr(detection, eta) - ideal_rate(detection, va, eta).key_rate_per_symbol for va in (1e3, 1e4, 1e5)]
    assert all(gap > 0.0 for gap in gaps)
    assert 9.0 < gaps[0] / gaps[1] < 11.0 and 9.0 < gaps[1] / gaps[2] < 11.0


@pytest.mark.parametrize("eta", [0.99, 0.9, 0.731, 0.5, 0.1, 0.01, 1e-4])
def test_limits_against_each_other_and_the_plob_bound(eta):
    """Homodyne is exactly half the PLOB bound; heterodyne lies between it and PLOB (no rate over a pure-loss
    channel may exceed -log2(1 - eta)); h[(2 - eta)/eta] is H2(eta)/eta."""
    plob = -math.log2(1.0 - eta)
    assert limit_rr("homodyne", eta) == pytest.approx(plob / 2.0, rel=1e-12)
    assert limit_rr("homodyne", eta) < limit_rr("heterodyne", eta) < plob
    assert h((2.0 - eta) / eta) == pytest.approx(binary_entropy(eta) / eta, rel=1e-10)


@pytest.mark.parametrize("eta", [0.95, 0.9, 0.8, 0.75])
def test_log2_eta_over_e_one_minus_eta_is_the_direct_reconciliation_limit(eta):
    """log2[eta / (e (1 - eta))] is the DIRECT-reconciliation heterodyne limit: with a coherent state sent through
    pure loss Eve's mode given Alice's value is a coherent state (pure), so chi_AE = S(E) and
    R_DR = I_AB - S(E) -> log2(eta V/2) - log2(e (1 - eta) V / 2). Checked with the module's I_AB at V_A = 1e8
    (DR itself is not in the module). It vanishes at eta = e/(1+e) = 0.731, where direct reconciliation with
    heterodyne detection stops even at infinite modulation, and the module's reverse-reconciliation rate exceeds
    it by exactly h[(2 - eta)/eta]: the RR limit is not that expression alone."""
    modulation_variance = 1e8
    rate = ideal_rate("heterodyne", modulation_variance, eta)
    direct = rate.mutual_information - entropy_bits((1.0 - eta) * (modulation_variance + 1.0) + eta)
    closed_form = math.log2(eta / (math.e * (1.0 - eta)))
    assert abs(direct - closed_form) < 1e-6
    assert abs(rate.key_rate_per_symbol - closed_form - h((2.0 - eta) / eta)) < 1e-6
    assert math.log2((math.e / (1 + math.e)) / (math.e * (1 - math.e / (1 + math.e)))) == pytest.approx(0.0, abs=1e-12)
