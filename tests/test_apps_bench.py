"""The ETSI 004 and SKIP benchmarks run end to end in a short form (two real daemons each) and print their
JSON line with every chunk and key equal at both ends."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("bench, load", [("etsi004", "--streams"), ("skip", "--clients")])
def test_004_and_skip_benchmarks_print_figures_with_no_mismatch(bench, load):
    done = subprocess.run([sys.executable, "-m", f"bench.{bench}", load, "2", "--seconds", "2", "--no-etsi014"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("{")]
    figures = json.loads(line)
    assert figures["bench"] == bench and figures["mismatches"] == 0 and figures["failures"] == 0
    rate = figures["chunks_per_s" if bench == "etsi004" else "keys_per_s"]
    assert rate > 0 and figures["p99_ms"] >= figures["p50_ms"] > 0
    assert figures["machine"]["cpus"] >= 1 and len(figures["machine"]["load_1m"]) == 2
