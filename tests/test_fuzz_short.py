"""A short run of every fuzz target (tests/fuzz/) under atheris: each in its own libFuzzer process over its
seed corpus, for a bounded number of executions; any crash, hang or out-of-memory fails. The long run that
the README's figures come from is `python -m tests.fuzz.run --runs 1000000`."""
from __future__ import annotations

import importlib

import pytest

from tests.fuzz.run import CORPUS_DIR, TARGETS, run_target

# Executions per target: a few seconds each on a 2-core machine (the HTTP target is the slowest, ~800/s).
RUNS = {"http": 1500, "peer_handshake": 2000}
DEFAULT_RUNS = 4000
EXPECTED_TARGETS = {"config", "etsi004", "etsi014", "http", "inventory", "key_relay", "link_messages", "peer_handshake",
                    "peer_records", "relay_network", "reservation", "serial_frames", "sim_wire", "wg_epoch"}


def test_every_parser_of_outside_bytes_has_a_target_and_a_small_seed_corpus():
    assert set(TARGETS) == EXPECTED_TARGETS
    for target in TARGETS:
        seeds = sorted((CORPUS_DIR / target).iterdir())
        assert 1 <= len(seeds) <= 16, target
        assert sum(seed.stat().st_size for seed in seeds) <= 64 * 1024, target
        module = importlib.import_module(f"tests.fuzz.fuzz_{target}")
        assert callable(module.TestOneInput) and callable(module.seeds)
        # today's encoders still write seeds the target takes (a changed message or wire format breaks a stale
        # seeds() or target here, not only in `python -m tests.fuzz.run --make-corpus`)
        for seed in module.seeds():
            module.TestOneInput(seed)


@pytest.mark.parametrize("target", TARGETS)
def test_a_short_fuzz_run_finds_no_crash_hang_or_leak(target, tmp_path):
    runs = RUNS.get(target, DEFAULT_RUNS)
    figures = run_target(target, runs, artifacts=tmp_path / "artifacts", nice=0, log=tmp_path / "libfuzzer.log")
    print(f"{target}: {figures.executions} executions in {figures.seconds} s, {figures.corpus_inputs} inputs")
    assert figures.clean, (figures, (tmp_path / "libfuzzer.log").read_text()[-3000:])
    assert figures.executions == runs
