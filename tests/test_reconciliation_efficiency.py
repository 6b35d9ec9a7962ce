"""The early-abort estimate before reconciliation uses what the configured method measures
(qkdd.postprocess.efficiency): the table's points and interpolation, its agreement with Cascade and LDPC run here, the
pipeline settings that pick it, and a frame the former fixed f = 1.16 refused that Cascade reconciles into key."""
import math

import numpy as np
import pytest

from bench.reconcile import noisy_pair, reconcile
from qkdd.link.pipeline import ALICE, BOB, PipelineSettings
from qkdd.postprocess import efficiency
from qkdd.postprocess.efficiency import measured_efficiency
from qkdd.protocols.entropy import binary_entropy
from tests.link_support import Ends, frame_pair, simulator


def test_the_measured_points_come_back_exactly_and_between_them_interpolated():
    for method, rows in efficiency.MEASURED.items():
        for n, row in zip(efficiency.FRAME_BITS, rows):
            for qber, f in zip(efficiency.QBERS, row):
                assert measured_efficiency(method, n, qber) == pytest.approx(f, abs=1e-12)
    yan = efficiency.MEASURED["yan"]
    # half way in log10(n) and in Q between four points: their mean
    mid = measured_efficiency("yan", round(10 ** 4.5), 0.015)                # between 1 and 2 %
    assert mid == pytest.approx((yan[0][1] + yan[0][2] + yan[1][1] + yan[1][2]) / 4, abs=1e-4)
    # held at the grid's edges
    assert measured_efficiency("yan", 1_000, 0.002) == measured_efficiency("yan", 10_000, 0.005) == yan[0][0]
    assert measured_efficiency("ldpc", 10 ** 8, 0.3) == efficiency.MEASURED["ldpc"][-1][-1]


@pytest.mark.parametrize("method, n_bits, qber", [("turbo", 10_000, 0.02), ("yan", 0, 0.02), ("yan", 10_000, -0.1),
                                                  ("yan", 10_000, 0.5), ("yan", 2.5, 0.02), ("yan", True, 0.02)])
def test_bad_input_is_refused_with_a_clear_error(method, n_bits, qber):
    with pytest.raises(ValueError, match="method|frame length|QBER"):
        measured_efficiency(method, n_bits, qber)


@pytest.mark.parametrize("algo, n, qber, tolerance", [("yan", 100_000, 0.02, 0.02), ("efficient", 100_000, 0.05, 0.02),
                                                      ("original", 10_000, 0.08, 0.03), ("ldpc", 100_000, 0.02, 0.03)])
def test_the_table_agrees_with_the_method_run_here(algo, n, qber, tolerance):
    """A few frames of each method through both ends (bench.reconcile's driver): f within the tolerance of the
    table, so the table cannot drift from what the code does."""
    rng = np.random.default_rng(7)
    frames, disclosed = 4, 0
    for frame in range(frames):
        alice_key, bob_key = noisy_pair(rng, n, qber, "exact")
        bob, _ = reconcile(alice_key, bob_key, n, qber, algo, frame, seed=bytes([frame + 1]) * 32)
        assert np.array_equal(alice_key, bob_key)
        disclosed += bob.disclosed_bits
    assert abs(disclosed / (frames * n * binary_entropy(qber)) - measured_efficiency(algo, n, qber)) <= tolerance


def test_pipeline_settings_pick_the_configured_methods_figure():
    assert PipelineSettings().early_abort_efficiency(20_000, 0.03) == measured_efficiency("yan", 20_000, 0.03)
    assert PipelineSettings(cascade_schedule="efficient").early_abort_efficiency(20_000, 0.03) == \
        measured_efficiency("efficient", 20_000, 0.03)
    assert PipelineSettings(reconciliation="ldpc").early_abort_efficiency(20_000, 0.03) == \
        measured_efficiency("ldpc", 20_000, 0.03)
    assert PipelineSettings(f_ec_estimate=1.2).early_abort_efficiency(20_000, 0.03) == 1.2
    assert PipelineSettings().early_abort_efficiency(0, 0.5) == measured_efficiency("yan", 1, 0.49)   # clamped
    with pytest.raises(ValueError, match="cascade_schedule"):
        PipelineSettings(cascade_schedule="fast")
    with pytest.raises(ValueError, match="f_ec_estimate"):
        PipelineSettings(f_ec_estimate=0.9)


def test_a_frame_the_fixed_estimate_refused_is_reconciled_into_key():
    """A 25 km frame of 56 000 detections (22 000 key bits at 3.2 % QBER): the former fixed f = 1.16 made the
    finite-key bound leave nothing and the frame was refused before reconciliation; Cascade `yan` discloses about
    1.06 h(Q) on it (the table's 1.08 at this length), and the bound on what it actually disclosed leaves
    300-400 bits (12 runs)."""
    sim = simulator(25.0, seed=5)
    alice_frame, bob_frame, decoy = frame_pair(sim, 7, 56_000)
    refused = Ends(alice_frame, bob_frame, decoy, settings=PipelineSettings(f_ec_estimate=1.16)).run()
    for role in (ALICE, BOB):
        outcome = refused.outcome(role)
        assert "finite-key bound" in outcome.aborted and outcome.disclosed_bits == 0
    ends = Ends(alice_frame, bob_frame, decoy).run()
    outcome = ends.outcome(ALICE)
    f = outcome.disclosed_bits / (outcome.sifted_key_bits * binary_entropy(outcome.qber_estimate))
    assert 1.0 < f < 1.16 and math.isclose(f, measured_efficiency("yan", outcome.sifted_key_bits,
                                                                  outcome.qber_estimate), abs_tol=0.05)
    assert outcome.key_length_bits > 0
