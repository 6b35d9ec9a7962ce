"""Soundness of the decoy estimators over random links: on the model's own expected statistics a lower
bound never exceeds, and an upper bound never falls below, the true single-photon quantity."""
from hypothesis import given, settings, strategies as st

from qkdd.protocols import bb84
from qkdd.protocols.bb84_finite import DecoySettings, expected_counts, finite_key_length
from qkdd.protocols.channel import ChannelParams, error_rate_n, yield_n

links = st.builds(
    ChannelParams,
    distance_km=st.floats(0.0, 200.0),
    alpha_db_per_km=st.floats(0.15, 0.35),
    eta_bob=st.floats(0.01, 0.9),
    y0=st.floats(1e-8, 1e-4),
    e_det=st.floats(0.0, 0.1),
    mu=st.floats(0.2, 1.0),
    nu=st.floats(0.01, 0.19),
)


@settings(max_examples=150, deadline=None)
@given(links)
def test_vacuum_weak_bounds_are_sound(channel):
    bounds = bb84.single_photon_bounds(channel, "vacuum-weak")
    assert bounds.y1_lower <= yield_n(channel, 1) * (1 + 1e-9)
    if bounds.y1_lower > 0:
        assert bounds.e1_upper >= error_rate_n(channel, 1) * (1 - 1e-9)


@settings(max_examples=60, deadline=None)
@given(links, st.floats(0.3, 0.9), st.floats(0.2, 0.6), st.floats(0.05, 0.45), st.floats(0.05, 0.4),
       st.floats(0.2, 0.95))
def test_finite_key_bounds_are_sound(channel, mu1, mu2_fraction, p1, p2, q_x):
    decoy = DecoySettings(mu_signal=mu1, mu_decoy=mu1 * mu2_fraction, mu_vacuum=0.0, p_signal=p1,
                          p_decoy=p2, q_x=q_x)
    pulses = 1e11
    result = finite_key_length(expected_counts(channel, decoy, pulses), decoy)
    tau1 = decoy.photon_number_probability(1)
    true_x1 = pulses * q_x ** 2 * tau1 * yield_n(channel, 1)
    true_z1_errors = pulses * (1 - q_x) ** 2 * tau1 * yield_n(channel, 1) * error_rate_n(channel, 1)
    assert result.s_x1_lower <= true_x1 * (1 + 1e-9)
    assert result.v_z1_upper >= true_z1_errors * (1 - 1e-9)
    if not result.abort:
        assert result.key_length_bits > 0 and result.phase_error_upper >= error_rate_n(channel, 1) * (1 - 1e-9)
