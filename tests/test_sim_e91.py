"""E91 on the simulated SPDC link: coincidence gain of the thermal pair source, CHSH S = 2 sqrt(2) V and
QBER = (1 - V)/2 for visibility V, and no key when S <= 2.

Gain of a polarisation-entangled PDC source with thermal pair statistics P(n) = (n+1) l^n / (1+l)^(n+2)
and threshold detectors (Ma, Fung, Lo, PRA 76, 012307 (2007), Sec. III):
    Q = 1 - (1-Y0)/(1+eta_A l)^2 - (1-Y0)/(1+eta_B l)^2 + (1-Y0)^2/(1 + eta_A l + eta_B l - eta_A eta_B l)^2
and in matching bases E Q = Q/2 - 2 (1/2 - e_d) eta_A eta_B l (1+l) / [(1+eta_A l)(1+eta_B l)(1+...)],
so V = 1 - 2E. With the Werner-state correlator E(a, b) = V cos 2(a - b) the CHSH settings of
qkdd.protocols.e91 give S = 2 sqrt(2) V (Clauser, Horne, Shimony, Holt, PRL 23, 880 (1969)).
"""
import math

import numpy as np
import pytest

from qkdd.hal.sim import SimParams, Simulator
from qkdd.hal.sim.montecarlo import run

DARK = 1e-6


def _mfl(params: SimParams) -> tuple[float, float]:
    """(coincidence gain per slot, visibility) from the formulas above."""
    lam = params.pair_mean / 2
    to_alice = params.distance_km / 2 if params.source_position_km is None else params.source_position_km
    to_bob = params.distance_km - to_alice
    eta_a = params.detector_efficiency * 10 ** (-params.fiber_loss_db_per_km * to_alice / 10)
    eta_b = params.detector_efficiency * 10 ** (-params.fiber_loss_db_per_km * to_bob / 10)
    y0 = 1 - (1 - DARK) ** 2
    da, db = 1 + eta_a * lam, 1 + eta_b * lam
    dab = 1 + eta_a * lam + eta_b * lam - eta_a * eta_b * lam
    q = 1 - (1 - y0) / da ** 2 - (1 - y0) / db ** 2 + (1 - y0) ** 2 / dab ** 2
    eq = q / 2 - 2 * (0.5 - params.misalignment) * eta_a * eta_b * lam * (1 + lam) / (da * db * dab)
    return q, 1 - 2 * eq / q


def _params(misalignment: float) -> SimParams:
    return SimParams(protocol="e91", distance_km=10, detector_efficiency=0.2, dark_count_prob=DARK,
                     misalignment=misalignment, pair_mean=0.01)


def test_coincidence_gain_chsh_and_qber_follow_visibility():
    params = _params(0.02)
    pulses = 4 * 10 ** 8
    report = run(params, pulses, seed=21)
    gain, visibility = _mfl(params)
    n = report["coincidences"]
    assert abs(n - pulses * gain) <= 5 * math.sqrt(pulses * gain)
    assert 0.9 < visibility < 0.97
    pairs = min(c["pairs"] for c in report["chsh"])
    assert abs(report["chsh_s"] - 2 * math.sqrt(2) * visibility) <= 5 * report["chsh_sigma"]
    n_z = report["sifted_bits_z"]
    e = (1 - visibility) / 2
    assert abs(report["qber_z"] - e) <= 5 * math.sqrt(e * (1 - e) / n_z)
    assert abs(report["qber_x"] - e) <= 5 * math.sqrt(e * (1 - e) / n_z)
    assert pairs > 10_000
    assert not report["abort"] and report["key_length_bits"] > 0


def test_no_key_when_s_is_not_above_2():
    # e_d = 0.17: V ~ 0.66 < 1/sqrt(2), so S ~ 1.87 <= 2
    params = _params(0.17)
    report = run(params, 4 * 10 ** 8, seed=22)
    _, visibility = _mfl(params)
    assert 2 * math.sqrt(2) * visibility < 2
    assert report["chsh_s"] < 2
    assert report["abort"] and report["key_length_bits"] == 0
    assert "CHSH" in report["abort_reason"]


def test_source_at_alice_follows_the_asymmetric_gain():
    params = SimParams(protocol="e91", distance_km=40, detector_efficiency=0.2, dark_count_prob=DARK,
                       misalignment=0.02, pair_mean=0.2, source_position_km=0.0)
    pulses = 10 ** 8
    report = run(params, pulses, seed=23)
    gain, visibility = _mfl(params)
    assert abs(report["coincidences"] - pulses * gain) <= 5 * math.sqrt(pulses * gain)
    e = (1 - visibility) / 2
    n_z = report["sifted_bits_z"]
    assert abs(report["qber_z"] - e) <= 5 * math.sqrt(e * (1 - e) / n_z)


def _brute_force_poisson(mu, eta, p_dark, e_d, delta_rad, slots, rng):
    """Photon by photon in numpy: Poisson pairs, each photon detected with eta, a pair's outcomes equal
    with probability (1 + (1 - 2 e_d) cos 2 delta) / 2, lone photons and dark counts random, double clicks
    squashed to a random bit. Returns (coincidences, equal outcomes)."""
    pairs = rng.poisson(mu, slots)
    slot_of = np.repeat(np.arange(slots), pairs)
    n = slot_of.size
    seen_a, seen_b = rng.random(n) < eta, rng.random(n) < eta
    value_a = rng.integers(0, 2, n)
    flip = rng.random(n) >= (1 + (1 - 2 * e_d) * math.cos(2 * delta_rad)) / 2
    value_b = np.where(seen_a, value_a ^ flip, rng.integers(0, 2, n))   # a lone photon is random

    def lit(seen, value):
        out = np.zeros((slots, 2), bool)
        out[slot_of[seen], value[seen]] = True
        return out | (rng.random((slots, 2)) < p_dark)

    lit_a, lit_b = lit(seen_a, value_a), lit(seen_b, value_b)
    click = lit_a.any(1) & lit_b.any(1)

    def bit(lit_side):
        double = lit_side.all(1)
        return np.where(double, rng.integers(0, 2, slots), lit_side[:, 1].astype(int))

    equal = click & (bit(lit_a) == bit(lit_b))
    return int(click.sum()), int(equal.sum())


@pytest.mark.parametrize("bob_setting, delta_deg", [(2, 0.0), (0, -22.5)])
def test_poisson_pairs_match_a_photon_by_photon_model(bob_setting, delta_deg):
    """The closed-form outcome table of the Poisson source against an explicit photon-level simulation
    (two independent samples, compared within 5 combined sigma)."""
    mu, eta_det, p_dark, e_d = 0.8, 0.6, 0.01, 0.03
    bob_prob = [0.0] * 4
    bob_prob[bob_setting] = 1.0
    params = SimParams(protocol="e91", distance_km=0, detector_efficiency=eta_det, dark_count_prob=p_dark,
                       misalignment=e_d, pair_mean=mu, pair_statistics="poisson", e91_alice_prob=(1.0, 0.0),
                       e91_bob_prob=tuple(bob_prob))
    slots = 300_000
    frame = Simulator(params, seed=31).run(slots, max_records=slots)
    sim_click, sim_equal = len(frame.alice), int((frame.alice.bit == frame.bob.outcome).sum())
    ref_click, ref_equal = _brute_force_poisson(mu, eta_det, p_dark, e_d, math.radians(delta_deg), slots,
                                                np.random.default_rng(32))
    p = (sim_click + ref_click) / (2 * slots)
    assert abs(sim_click - ref_click) <= 5 * math.sqrt(2 * slots * p * (1 - p))
    f_sim, f_ref = sim_equal / sim_click, ref_equal / ref_click
    f = (f_sim + f_ref) / 2
    assert abs(f_sim - f_ref) <= 5 * math.sqrt(f * (1 - f) * (1 / sim_click + 1 / ref_click))
