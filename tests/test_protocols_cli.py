"""`qkdctl sim rate` run as a real subprocess: JSON fields, text output, one-line errors with exit code 2."""
import json
import subprocess
import sys

import pytest


def qkdctl(*args):
    return subprocess.run([sys.executable, "-m", "qkdd.ctl", "sim", "rate", *args],
                          capture_output=True, text=True, timeout=120)


def test_bb84_json_has_the_issue_fields():
    done = qkdctl("--protocol", "bb84", "--decoy", "vacuum-weak", "--distance-km", "50", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("gain_signal", "qber_signal", "y1", "e1", "key_rate_per_pulse", "mu", "nu"):
        assert isinstance(report[key], float), key
    assert report["mu"] == 0.48 and report["nu"] == 0.05 and report["key_rate_per_pulse"] > 0


def test_optimize_mu_and_cutoff_behaviour():
    near = json.loads(qkdctl("--decoy", "infinite", "--distance-km", "1", "--optimize-mu", "--json").stdout)
    assert near["mu"] == pytest.approx(0.48, abs=0.015)
    far = json.loads(qkdctl("--decoy", "none", "--distance-km", "60", "--optimize-mu", "--json").stdout)
    assert far["key_rate_per_pulse"] == 0.0          # beyond the ~40 km no-decoy cutoff


def test_finite_key_mode_uses_the_block_size():
    args = ("--distance-km", "50", "--finite", "--mu", "0.45", "--nu", "0.17", "--p-signal", "0.6",
            "--p-decoy", "0.25", "--q-x", "0.8", "--alpha", "0.2", "--eta-bob", "0.1", "--y0", "1.2e-6",
            "--e-det", "0.005", "--f-ec", "1.16", "--json")
    small = json.loads(qkdctl(*args, "--n-x", "1e4").stdout)
    large = json.loads(qkdctl(*args, "--n-x", "1e9").stdout)
    assert small["abort"] and small["key_length_bits"] == 0 and small["abort_reason"]
    assert not large["abort"] and large["key_rate_per_pulse"] > 0 and large["finite"] is True


def test_e91_rate():
    report = json.loads(qkdctl("--protocol", "e91", "--visibility", "0.9", "--json").stdout)
    assert report["chsh_s"] == pytest.approx(2 * 2 ** 0.5 * 0.9)
    assert report["qber"] == pytest.approx(0.05)
    local = json.loads(qkdctl("--protocol", "e91", "--visibility", "0.7", "--coincidences", "1e6", "--json").stdout)
    assert local["abort"] and local["key_length_bits"] == 0


def test_text_output_is_readable():
    done = qkdctl("--distance-km", "25")
    assert done.returncode == 0
    assert "key rate per pulse" in done.stdout and "qber signal" in done.stdout


@pytest.mark.parametrize("args, fragment", [
    (("--distance-km", "-5"), "distance_km"),
    (("--distance-km", "10", "--alpha", "-0.2"), "alpha_db_per_km"),
    (("--distance-km", "10", "--mu", "0.05", "--nu", "0.1"), "mu"),
    (("--distance-km", "10", "--e-det", "1.5"), "e_det"),
    (("--distance-km", "10", "--eta-bob", "2"), "eta_bob"),
    (("--distance-km", "ten",), "--distance-km"),
    (("--decoy", "many", "--distance-km", "10"), "--decoy"),
    (("--json",), "--distance-km"),
    (("--protocol", "e91"), "--visibility"),
    (("--protocol", "e91", "--visibility", "1.3"), "visibility"),
    (("--distance-km", "10", "--finite", "--decoy", "none"), "vacuum-weak"),
    (("--distance-km", "10", "--finite", "--n-x", "0"), "n_x"),
])
def test_bad_parameters_give_one_error_line_and_exit_2(args, fragment):
    done = qkdctl(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qkdctl sim rate: error:") and fragment in lines[0]


def test_cvqkd_rate():
    report = json.loads(qkdctl("--protocol", "cvqkd", "--distance-km", "25", "--json").stdout)
    assert report["key_rate_per_symbol"] > 0 and report["holevo_bound"] > 0
    done = qkdctl("--protocol", "cvqkd", "--distance-km", "25", "--beta", "1.5")
    assert done.returncode == 2 and "beta" in done.stderr


def test_report_json_is_strict_json_with_null_for_non_finite_numbers(capsys):
    from qkdd.protocols.cli_output import print_report

    report = {"e1": float("inf"), "terms": {"h": float("nan"), "ok": 0.5}, "bounds": (1.0, float("-inf"))}
    assert print_report("qkdctl sim rate", lambda: report, True, str) == 0
    text = capsys.readouterr().out
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON token {name}")) == \
        {"e1": None, "terms": {"h": None, "ok": 0.5}, "bounds": [1.0, None]}


def test_report_bad_parameter_is_one_line_and_status_2(capsys):
    from qkdd.protocols.cli_output import print_report

    def build():
        raise ValueError("mu: must be > nu")

    assert print_report("qkdctl sim rate", build, True, str) == 2
    assert capsys.readouterr().err == "qkdctl sim rate: error: mu: must be > nu\n"


def test_help_shows_the_defaults():
    from qkdd.protocols.channel import ChannelParams
    text = " ".join(qkdctl("--help").stdout.split())         # argparse wraps lines: compare on one line
    assert "--protocol {bb84,e91,cvqkd} (default bb84)" in text
    assert f"fibre loss, dB/km (default {ChannelParams().alpha_db_per_km})" in text
    assert "--p-signal P_SIGNAL (default 0.8)" in text and "(default homodyne)" in text
    assert "(default None)" not in text and "(default False)" not in text
    run_help = " ".join(subprocess.run([sys.executable, "-m", "qkdd.ctl", "sim", "run", "--help"],
                                       capture_output=True, text=True, timeout=30).stdout.split())
    assert "--protocol {bb84,e91,cvqkd} (default bb84)" in run_help and "(default None)" not in run_help
