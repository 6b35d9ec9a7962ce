"""Analytic channel model: validation of every parameter, and the closed-form gains against the
photon-number sums they stand for (LMC Eqs. 2-3 and 6-8)."""
import math

import pytest

from qkdd.protocols.channel import (
    ChannelParams,
    error_gain,
    error_rate_n,
    gain,
    poisson,
    qber,
    yield_n,
)
from qkdd.protocols.entropy import binary_entropy, secure_fraction_asymptotic


@pytest.mark.parametrize("field, value, fragment", [
    ("alpha_db_per_km", -0.2, "alpha_db_per_km"),
    ("distance_km", -1.0, "distance_km"),
    ("eta_bob", 0.0, "eta_bob"),
    ("eta_bob", 1.5, "eta_bob"),
    ("y0", -1e-6, "y0"),
    ("y0", 1.0, "y0"),
    ("e_det", 0.7, "e_det"),
    ("e_det", -0.1, "e_det"),
    ("f_ec", 0.9, "f_ec"),
    ("q", 0.0, "q"),
    ("q", 1.2, "q"),
    ("mu", 0.0, "mu"),
    ("nu", -0.1, "nu"),
    ("mu", 0.05, "mu"),            # mu <= nu (default nu = 0.05)
    ("p_afterpulse", 1.0, "p_afterpulse"),
    ("mu", float("nan"), "mu"),
    ("distance_km", float("inf"), "distance_km"),
    ("mu", "0.5", "mu"),
])
def test_bad_parameters_raise_errors_naming_the_parameter(field, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        ChannelParams(**{field: value})


def test_defaults_are_the_gys_parameters_of_mqzl_table_1():
    c = ChannelParams()
    assert (c.alpha_db_per_km, c.eta_bob, c.y0, c.e_det, c.f_ec, c.q) == (0.21, 0.045, 1.7e-6, 0.033, 1.22, 0.5)


def test_transmittance_follows_the_fibre_loss_in_decibels():
    c = ChannelParams(alpha_db_per_km=0.2, eta_bob=0.1, distance_km=100.0)
    assert c.transmittance == pytest.approx(0.1 * 1e-2)     # 20 dB of fibre
    assert ChannelParams(eta_bob=0.045).transmittance == pytest.approx(0.045)


@pytest.mark.parametrize("distance_km", [0.0, 40.0, 120.0])
@pytest.mark.parametrize("p_afterpulse", [0.0, 0.04])
def test_closed_form_gain_and_errors_equal_the_photon_number_sums(distance_km, p_afterpulse):
    c = ChannelParams(distance_km=distance_km, p_afterpulse=p_afterpulse)
    for k in (0.0, 0.05, 0.48, 1.0):
        q_sum = sum(poisson(n, k) * yield_n(c, n) for n in range(60))
        eq_sum = sum(poisson(n, k) * yield_n(c, n) * error_rate_n(c, n) for n in range(60))
        assert gain(c, k) == pytest.approx(q_sum, rel=1e-12)
        assert error_gain(c, k) == pytest.approx(eq_sum, rel=1e-12)


def test_vacuum_detections_are_background_with_half_errors():
    c = ChannelParams(distance_km=80.0)
    assert gain(c, 0.0) == pytest.approx(c.y0)
    assert qber(c, 0.0) == pytest.approx(0.5)


def test_qber_at_short_distance_is_the_misalignment_error():
    # Signal clicks dominate the background: E_mu -> e_det (MQZL model, GYS e_det = 3.3 %).
    assert qber(ChannelParams(distance_km=0.0), 0.48) == pytest.approx(0.033, abs=2e-4)


def test_binary_entropy_values_and_domain():
    assert binary_entropy(0.5) == 1.0
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    assert binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-4)
    with pytest.raises(ValueError):
        binary_entropy(1.2)


@pytest.mark.parametrize("qber_value, expected, tolerance", [
    (0.03, 0.611, 0.002),     # DESIGN.md 6: about 61 % (not the seed's 70 %)
    (0.08, 0.196, 0.002),     # about 20 %
    (0.11, 0.0, 0.001),       # Shor-Preskill threshold 11.0 %
    (0.15, 0.0, 0.0),
])
def test_asymptotic_estimate_one_minus_two_h(qber_value, expected, tolerance):
    assert secure_fraction_asymptotic(qber_value) == pytest.approx(expected, abs=tolerance)


def test_shor_preskill_threshold_is_eleven_percent():
    low, high = 0.05, 0.2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if 1 - 2 * binary_entropy(mid) > 0 else (low, mid)
    assert low == pytest.approx(0.110, abs=5e-4)
    assert math.isclose(secure_fraction_asymptotic(0.5), 0.0)
