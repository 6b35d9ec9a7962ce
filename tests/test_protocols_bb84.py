"""Asymptotic decoy-state BB84 against the published GYS results of Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005)
(MQZL) and Lo, Ma, Chen, PRL 94, 230504 (2005): optimal mu, and the cutoff distances with infinitely
many decoys, with vacuum + weak decoys (nu = 0.05) and without decoys."""
import math

import pytest

from qkdd.protocols import bb84
from qkdd.protocols.channel import ChannelParams, gain, qber, yield_n, error_rate_n

GYS = ChannelParams()   # MQZL Table I, GYS column: alpha 0.21 dB/km, eta_bob 4.5 %, Y0 1.7e-6, e_det 3.3 %


def test_optimal_mu_at_short_distance_is_about_0_48():
    # LMC/MQZL: mu_opt ~ 0.48 for GYS with infinite decoys; they quote two digits, so +-0.015.
    best = bb84.optimize_mu(GYS.replace(distance_km=1.0), "infinite")
    assert best.mu == pytest.approx(0.48, abs=0.015)
    # and it is a maximum: nearby intensities give less key
    for mu in (0.3, 0.7):
        assert bb84.key_rate(GYS.replace(distance_km=1.0, mu=mu), "infinite").key_rate_per_pulse \
            < best.key_rate_per_pulse


def test_infinite_decoy_cutoff_is_about_142_km():
    # LMC PRL 94, 230504: "secure up to 142 km" for GYS. The paper quotes whole kilometres; +-1 km
    # covers that rounding and the Y0*eta cross term they drop.
    assert bb84.max_distance_km(GYS, "infinite") == pytest.approx(142.0, abs=1.0)
    assert bb84.max_distance_km(GYS.replace(mu=0.48), "infinite", optimize=False) == pytest.approx(142.0, abs=1.0)


def test_vacuum_weak_cutoff_with_nu_0_05_is_about_140_5_km():
    # MQZL: vacuum + weak decoy with nu = 0.05 reaches ~140.5 km with the GYS mu ~ 0.48. Half a
    # kilometre is the precision of the quoted value.
    at_fixed_mu = bb84.max_distance_km(GYS.replace(mu=0.48, nu=0.05), "vacuum-weak", optimize=False)
    assert at_fixed_mu == pytest.approx(140.5, abs=0.5)
    # Re-optimising mu at every distance can only extend the reach, and not beyond infinite decoys.
    optimised = bb84.max_distance_km(GYS.replace(nu=0.05), "vacuum-weak")
    assert at_fixed_mu <= optimised + 0.02
    assert optimised < bb84.max_distance_km(GYS, "infinite")


def test_no_decoy_cutoff_is_about_40_km():
    # GLLP without decoys (all multi-photon pulses tagged), mu optimised: the well-known ~40 km for GYS
    # (LMC Fig. 1 / MQZL). +-2 km: the figure is read off a plot.
    assert bb84.max_distance_km(GYS, "none") == pytest.approx(40.0, abs=2.0)


def test_no_decoy_needs_much_lower_mu_than_decoy_protocols():
    none = bb84.optimize_mu(GYS.replace(distance_km=20.0), "none")
    decoy = bb84.optimize_mu(GYS.replace(distance_km=20.0), "infinite")
    assert none.mu < 0.1 < decoy.mu      # GLLP: mu ~ eta; decoys: mu = O(1)
    assert none.key_rate_per_pulse < decoy.key_rate_per_pulse


@pytest.mark.parametrize("distance_km", [0.0, 50.0, 100.0, 135.0])
def test_vacuum_weak_bounds_bracket_the_true_single_photon_values(distance_km):
    c = GYS.replace(distance_km=distance_km, mu=0.48, nu=0.05)
    rate = bb84.key_rate(c, "vacuum-weak")
    assert 0 < rate.y1 <= yield_n(c, 1)
    assert rate.e1 >= error_rate_n(c, 1)
    # MQZL Sec. III: with a weak decoy the estimate is tight (within a few percent for nu = 0.05)
    assert rate.y1 == pytest.approx(yield_n(c, 1), rel=0.03)


def test_weaker_decoy_gives_tighter_bounds():
    c = GYS.replace(distance_km=80.0, mu=0.48)
    errors = [yield_n(c, 1) - bb84.key_rate(c.replace(nu=nu), "vacuum-weak").y1 for nu in (0.2, 0.1, 0.02)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_pns_like_statistics_certify_no_single_photons():
    # Eve blocks single photons and forwards multi-photon pulses: the weak decoy (mostly single photons)
    # loses far more than the signal. Then Q_nu e^nu < Q_mu e^mu nu^2/mu^2 and the Y1 bound is zero.
    mu, nu, eta = 0.48, 0.05, 0.01
    multi = lambda k: 1 - math.exp(-k) - k * math.exp(-k)   # P(n >= 2)
    gain_signal, gain_decoy = multi(mu) * eta * 10, multi(nu) * eta * 10
    bounds = bb84.vacuum_weak_bounds(mu=mu, nu=nu, gain_signal=gain_signal, gain_decoy=gain_decoy,
                                     qber_decoy=0.03, y0=1e-6)
    assert bounds.y1_lower == 0 and bounds.q1_lower == 0 and bounds.e1_upper == 0.5
    rate = bb84.gllp_key_rate(q=0.5, f_ec=1.22, gain_signal=gain_signal, qber_signal=0.03,
                              q1=bounds.q1_lower, e1=bounds.e1_upper)
    assert rate < 0


def test_key_rate_drops_with_distance_and_vanishes_beyond_cutoff():
    rates = [bb84.key_rate(GYS.replace(distance_km=d), "vacuum-weak").key_rate_per_pulse for d in (0, 50, 100, 160)]
    assert rates[0] > rates[1] > rates[2] > rates[3] == 0.0


def test_asymptotic_rate_reports_the_expected_signal_statistics():
    c = GYS.replace(distance_km=50.0)
    rate = bb84.key_rate(c, "vacuum-weak")
    assert rate.gain_signal == pytest.approx(gain(c, c.mu)) and rate.qber_signal == pytest.approx(qber(c, c.mu))
    assert rate.nu == 0.05 and bb84.key_rate(c, "infinite").nu is None


@pytest.mark.parametrize("kwargs", [
    dict(mu=0.1, nu=0.2, gain_signal=1e-3, gain_decoy=1e-4, qber_decoy=0.03, y0=1e-6),
    dict(mu=0.5, nu=0.0, gain_signal=1e-3, gain_decoy=1e-4, qber_decoy=0.03, y0=1e-6),
    dict(mu=0.5, nu=0.1, gain_signal=1.5, gain_decoy=1e-4, qber_decoy=0.03, y0=1e-6),
    dict(mu=0.5, nu=0.1, gain_signal=1e-3, gain_decoy=1e-4, qber_decoy=-0.1, y0=1e-6),
])
def test_vacuum_weak_estimator_rejects_bad_inputs(kwargs):
    with pytest.raises(ValueError):
        bb84.vacuum_weak_bounds(**kwargs)


def test_unknown_decoy_method_is_rejected():
    with pytest.raises(ValueError, match="decoy"):
        bb84.key_rate(GYS, "two-decoy")
