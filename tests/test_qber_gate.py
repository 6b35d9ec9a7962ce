"""The QBER gate against the seed's bands and fallback policy (HIP-0071)."""
import pytest

from qkdd.link.qber_gate import Band, LinkState, QberGate, band_of


@pytest.mark.parametrize("qber,band", [
    (0.0, Band.NOMINAL), (0.0299, Band.NOMINAL), (0.03, Band.DEGRADED), (0.049, Band.DEGRADED),
    (0.05, Band.WARNING), (0.0799, Band.WARNING), (0.08, Band.CRITICAL), (0.1099, Band.CRITICAL),
    (0.11, Band.COMPROMISED), (0.5, Band.COMPROMISED)])
def test_bands_follow_the_seed_table(qber, band):
    assert band_of(qber) is band


def test_bad_values_are_refused():
    with pytest.raises(ValueError):
        band_of(-0.1)
    with pytest.raises(ValueError, match="must lie in"):
        QberGate(threshold=0.12)
    with pytest.raises(ValueError, match="must lie in"):
        QberGate(threshold=0.0)


def test_nominal_frames_keep_key_and_warning_raises_alarm():
    gate = QberGate()
    d = gate.observe_frame(0.02, 0.0)
    assert d.keep_key and d.state is LinkState.ACTIVE and d.threshold_exceeded is None
    d = gate.observe_frame(0.06, 1.0)
    assert d.keep_key and d.threshold_exceeded == "warning"


def test_threshold_suspends_then_recovers_with_hysteresis():
    gate = QberGate(threshold=0.08, recover_frames=3, hysteresis=0.005)
    d = gate.observe_frame(0.09, 0.0)
    assert d.state is LinkState.SUSPENDED and not d.keep_key and d.threshold_exceeded == "critical"
    assert not d.halted
    for t, q in enumerate([0.078, 0.077, 0.079], start=1):   # inside the hysteresis band: no recovery
        assert gate.observe_frame(q, t).state is LinkState.SUSPENDED
    states = [gate.observe_frame(0.03, 10 + t).state for t in range(3)]
    assert states == [LinkState.SUSPENDED, LinkState.SUSPENDED, LinkState.ACTIVE]
    assert gate.observe_frame(0.03, 20).keep_key


def test_compromised_halts_at_once_and_counts_one_halt():
    gate = QberGate()
    d = gate.observe_frame(0.25, 0.0)
    assert d.state is LinkState.HALTED and d.halted and not d.keep_key
    d = gate.observe_frame(0.25, 1.0)
    assert d.state is LinkState.HALTED and not d.halted
    for t in range(3):
        d = gate.observe_frame(0.02, 2.0 + t)
    assert d.state is LinkState.ACTIVE


def test_sixty_seconds_above_threshold_degrades():
    gate = QberGate(threshold=0.05)
    halts = 0
    for t in range(0, 61, 5):
        d = gate.observe_frame(0.06, float(t))
        halts += d.halted
    assert d.state is LinkState.DEGRADED and halts == 1
    assert gate.observe_frame(0.06, 70.0).state is LinkState.DEGRADED


def test_a_dip_restarts_the_sixty_second_clock():
    gate = QberGate(threshold=0.05)
    gate.observe_frame(0.06, 0.0)
    gate.observe_frame(0.01, 50.0)
    assert gate.observe_frame(0.06, 70.0).state is LinkState.SUSPENDED


def test_health_failure_degrades_until_healthy_and_good_frames():
    gate = QberGate()
    d = gate.observe_health(False)
    assert d.state is LinkState.DEGRADED and d.halted
    assert gate.observe_health(False) is None
    for t in range(5):
        assert gate.observe_frame(0.01, t).state is LinkState.DEGRADED   # still unhealthy
    gate.observe_health(True)
    states = [gate.observe_frame(0.01, 10 + t).state for t in range(3)]
    assert states[-1] is LinkState.ACTIVE
