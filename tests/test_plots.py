"""PNG plots: `qkdctl sim rate --sweep-distance ... --plot` as a real subprocess (key rate against distance for
each protocol, log scale), and the link-history series that `qkdctl links --plot` draws (tested against a
real daemon in tests/test_qkdctl_daemon.py). Each PNG is checked by size and by decoding it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qkdd.operator import history
from qkdd.protocols import sweep


def decoded(path: Path) -> tuple[tuple[int, int], int]:
    """(width, height) and the number of distinct colours of a PNG: it decodes, and it is not blank."""
    from PIL import Image                          # comes with matplotlib (the plot extra)
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        return image.size, len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ())


def qkdctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qkdd.ctl", *args], capture_output=True, text=True, timeout=120)


def test_sim_rate_sweep_plot_is_a_png_of_every_curve(tmp_path):
    png = tmp_path / "rate.png"
    result = qkdctl("sim", "rate", "--sweep-distance", "0:150:5", "--plot", str(png), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["distance_km"][0] == 0 and report["distance_km"][-1] == 150 and len(report["distance_km"]) == 31
    rates = report["key_rate_per_pulse"]
    assert set(rates) == {"bb84 (no decoy, best mu)", "bb84 (vacuum-weak decoy)", "bb84 (infinite decoy)",
                          "cvqkd (GG02, per symbol)"}
    decoy = rates["bb84 (vacuum-weak decoy)"]
    assert decoy[0] > decoy[10] > 0 and decoy[-1] == 0          # falls with distance, cut off before 150 km
    assert all(a >= b for a, b in zip(rates["bb84 (infinite decoy)"], decoy))   # infinite decoys bound it
    assert 20_000 < png.stat().st_size < 1_000_000
    size, colours = decoded(png)
    assert size == (800, 500) and colours > 20
    assert f"plot: {png}" in result.stderr


def test_sweep_and_plot_errors_are_one_line():
    for args, fragment in ((("--sweep-distance", "10:0:5"), "START <= STOP"),
                           (("--sweep-distance", "0:10"), "START:STOP:STEP"),
                           (("--sweep-distance", "0:1e9:1e-3"), "at most"),
                           (("--distance-km", "10", "--plot", "x.png"), "give --sweep-distance")):
        result = qkdctl("sim", "rate", *args)
        assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr, args
    unwritable = qkdctl("sim", "rate", "--sweep-distance", "0:10:5", "--plot", "/nonexistent-dir/rate.png")
    assert unwritable.returncode == 1 and "cannot write /nonexistent-dir/rate.png" in unwritable.stderr


def test_parse_range_includes_the_stop():
    assert sweep.parse_range("0:150:5")[-1] == 150 and len(sweep.parse_range("0:150:5")) == 31
    assert sweep.parse_range("2.5:2.5:1") == [2.5]


def test_history_bins_secret_bits_into_a_rate():
    points = [{"time": 100.0 + t, "qber": 0.02 + 0.001 * t, "secret_bits": 1000} for t in range(0, 11)]
    s = history.series(points)
    assert s["time_s"][0] == 100.0 and len(s["qber"]) == 11
    # ten frames after the first, 1000 bits each, over 10 s: 1000 bit/s in every 1 s bin
    assert s["rate_bps"] == pytest.approx([1000.0] * 10)
    assert history.series(points[:1])["rate_bps"] == []
    assert history.series([{"time": 1.0, "qber": None}])["time_s"] == []


def test_link_history_plot_decodes(tmp_path):
    from qkdd import plots
    points = [{"time": 1000.0 + t, "qber": 0.025, "secret_bits": 5000 + 10 * t} for t in range(120)]
    png = plots.link_history(tmp_path / "links.png", {"sim-1": history.series(points)})
    assert png.stat().st_size > 20_000
    size, colours = decoded(png)
    assert size == (900, 600) and colours > 20


def test_plot_lock_keeps_the_runtime_pins_and_adds_matplotlib_with_hashes():
    """packaging/plot-requirements.lock: every runtime pin unchanged, plus matplotlib and what it needs, every
    distribution with sha256 hashes (the packages are built from requirements.lock alone)."""
    import re
    root = Path(__file__).resolve().parent.parent

    def pins(name: str) -> dict[str, str]:
        text = (root / "packaging" / name).read_text()
        blocks = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}.*\n)+)",
                            text, re.M)
        assert len(blocks) == len(re.findall(r"^[A-Za-z0-9][A-Za-z0-9._-]*==", text, re.M)), name
        return {package.lower(): version for package, version, _ in blocks}

    runtime, plot = pins("requirements.lock"), pins("plot-requirements.lock")
    assert {name: plot.get(name) for name in runtime} == runtime
    assert "matplotlib" in plot and "matplotlib" not in runtime and "pillow" in plot
