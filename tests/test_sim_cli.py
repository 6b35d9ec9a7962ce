"""`qkdctl sim run` as a real subprocess: JSON report, reproducible seeds, float pulse counts, one-line
errors with exit status 2; and the simulator's record layout and reproducibility in-process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qkdd.bindings import bits
from qkdd.hal.sim import SimParams, Simulator

QKDCTL = [sys.executable, "-m", "qkdd.ctl", "sim", "run"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(QKDCTL + list(args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


def test_json_report_and_same_seed_same_output():
    args = ("--pulses", "2e8", "--distance-km", "25", "--seed", "42", "--q-x", "0.5", "--json")
    first, second = _run(*args), _run(*args)
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    # 2e8 pulses at 25 km are too few for a key under the finite-key bound: the report still comes, exit 1
    assert a["abort"] and first.returncode == 1 and "aborted: phase error bound" in first.stderr
    for report in (a, b):
        report.pop("wall_seconds")
    assert a == b
    assert a["pulses"] == 200_000_000
    assert set(a["gain"]) == {"signal", "decoy", "vacuum"}
    assert set(a["error_rate"]) == {"X", "Z"}
    for key in ("sifted_bits", "y1_lower", "e1_upper", "key_length_bits", "abort", "abort_reason"):
        assert key in a
    other = json.loads(_run("--pulses", "2e8", "--distance-km", "25", "--seed", "43", "--q-x", "0.5",
                            "--json").stdout)
    assert other["counts"] != a["counts"]


def test_e91_and_attack_options():
    e91 = _run("--protocol", "e91", "--pulses", "1e8", "--distance-km", "10", "--eta-bob", "0.2", "--e-det",
               "0.02", "--seed", "1", "--json")
    assert e91.returncode == 0, e91.stderr
    report = json.loads(e91.stdout)
    assert 2.0 < report["chsh_s"] < 2.9
    aborted = _run("--pulses", "1e8", "--distance-km", "25", "--attack", "blinding", "--monitor", "--seed", "1",
                   "--json")
    blinded = json.loads(aborted.stdout)
    assert blinded["abort"] and "monitor" in blinded["abort_reason"]
    # an aborted run is a failure for scripts: exit status 1, the reason on stderr
    assert aborted.returncode == 1
    assert aborted.stderr.strip() == f"qkdctl sim run: aborted: {blinded['abort_reason']}"


@pytest.mark.parametrize("args, fragment", [
    (("--pulses", "1e6", "--distance-km", "-1"), "distance_km"),
    (("--pulses", "1e6", "--distance-km", "5", "--alpha", "-0.2"), "fiber_loss_db_per_km"),
    (("--pulses", "1e6", "--distance-km", "5", "--dark-count", "1.5"), "dark_count_prob"),
    (("--pulses", "1e6", "--distance-km", "5", "--e-det", "-0.1"), "misalignment"),
    (("--pulses", "1e6", "--distance-km", "5", "--mu", "0.1", "--nu", "0.1"), "mu_signal"),
    (("--pulses", "1e6", "--distance-km", "5", "--p-signal", "0.9", "--p-decoy", "0.2"), "p_signal"),
    (("--pulses", "1e6", "--distance-km", "5", "--attack", "intercept-resend:1.5"), "fraction"),
    (("--pulses", "1e6", "--distance-km", "5", "--attack", "teleport"), "attack"),
    (("--pulses", "2.5", "--distance-km", "5"), "whole number"),
    (("--pulses", "nan", "--distance-km", "5"), "whole number"),
    (("--pulses", "1e6", "--distance-km", "5", "--seed", "-3"), "seed"),
    (("--protocol", "e91", "--pulses", "1e6", "--distance-km", "5", "--source-km", "9"), "source_position_km"),
    (("--protocol", "e91", "--pulses", "1e6", "--distance-km", "5", "--attack", "pns"), "attack"),
    (("--pulses", "1e6"), "distance-km"),
])
def test_bad_parameters_give_one_clear_line_and_status_2(args, fragment):
    result = _run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qkdctl sim run: error:"), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_records_are_columnar_sorted_and_reproducible_across_frame_sizes():
    params = SimParams(distance_km=5, afterpulse_prob=0.02)
    whole = Simulator(params, seed=5).run(5 * 10 ** 6, max_records=1 << 22)
    pieces = list(Simulator(params, seed=5).frames(5 * 10 ** 6, max_records=1000))
    assert sum(f.slots for f in pieces) == whole.slots == 5 * 10 ** 6
    assert sum(sum(f.pulses_per_class) for f in pieces) == 5 * 10 ** 6
    for name in ("slot", "bit", "basis", "intensity"):
        joined = np.concatenate([getattr(f.alice, name) for f in pieces])
        assert np.array_equal(joined, getattr(whole.alice, name))
    assert np.array_equal(np.concatenate([f.bob.outcome for f in pieces]), whole.bob.outcome)
    a = whole.alice
    assert a.slot.dtype == np.uint64 and np.all(np.diff(a.slot.astype(np.int64)) > 0)
    assert {a.bit.dtype, a.basis.dtype, a.intensity.dtype, whole.bob.outcome.dtype} == {np.dtype(np.uint8)}
    assert np.array_equal(whole.bob.slot, a.slot)
    assert np.array_equal(bits.unpack(a.packed_bits(), len(a)), a.bit)
    # Alice's choices in detected slots are i.i.d. fair bits
    assert abs(a.bit.mean() - 0.5) < 5 * 0.5 / np.sqrt(len(a))


def test_unseeded_runs_differ():
    params = SimParams(distance_km=5)
    a = Simulator(params).run(10 ** 6)
    b = Simulator(params).run(10 ** 6)
    assert not np.array_equal(a.alice.slot[:100], b.alice.slot[:100])


def test_bad_seed_and_attack_on_e91_rejected_in_process():
    with pytest.raises(ValueError, match="seed"):
        Simulator(SimParams(), seed=b"short")
    from qkdd.hal.sim import Attack
    with pytest.raises(ValueError, match="attack"):
        Simulator(SimParams(protocol="e91"), attack=Attack("pns"))
    with pytest.raises(ValueError, match="mu_decoy"):
        SimParams(mu_decoy=0.0, mu_vacuum=0.0)
