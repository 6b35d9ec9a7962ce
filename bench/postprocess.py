"""BB84 post-processing of simulated frames in one process, stage by stage: CPU seconds, minor page faults and
the C heap's large requests (>= 256 KiB) of each end's frame steps, without daemons, sockets or devices.

    python -m bench.postprocess [--system yuan2018] [--distance-km 10] [--detections 33554432] [--frames 1]
                                [--reconciliation ldpc] [--seed 1] [--no-alloc-count]
    -> one JSON line per frame: {"frame", "detections", "secret_bits", "keys_sha256", "load_avg_1m",
       "stages": {stage: {"cpu_s", "minor_faults", "large_allocs", "large_alloc_mbytes"}},
       "by_end": {"alice": {...stage: {...}}, "bob": {...}}, "total": {...}}

The frame comes from the simulator of the preset (qkdd.hal.sim.systems), as the devices hand it to the link
engine (qkdd.hal.sim.frames.raw_frames); its simulation is not counted. The two ends' FramePipelines then run
against each other in memory, each call in this thread timed by thread CPU and attributed to the stage the
link engine counts it in (qkdd.link.engine.STAGES, by the end's state before the call), plus "release" (the
engine's pipeline.release()). The C heap is bounded as in the daemon (qkdd.malloc_tuning: blocks of 256 KiB
and more come fresh from mmap), so minor_faults is about the frame-sized temporaries' pages the kernel zeroes.

Large requests are counted by a small shim (bench/malloc_count.c), compiled with the system C compiler and
preloaded: the module runs itself again under LD_PRELOAD unless --no-alloc-count is given. Every source of
fresh randomness of post-processing (qkdd.postprocess.randomness.fresh_bytes) is replaced by a generator
seeded from --seed, so the same frame gives the same keys on any version of the code: keys_sha256 (the hash
of both ends' stored key ids and material, which must agree) compares versions bit for bit.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHIM_SOURCE = Path(__file__).with_name("malloc_count.c")
SHIM_ENV = "BENCH_MALLOC_COUNT"
RELEASE = "release"


class Counters:
    """Thread CPU, minor faults and (with the shim) large requests, read before and after each step."""

    def __init__(self):
        try:
            lib = ctypes.CDLL(None)
            self._allocs = ctypes.c_ulonglong.in_dll(lib, "bench_large_allocs")
            self._bytes = ctypes.c_ulonglong.in_dll(lib, "bench_large_alloc_bytes")
        except ValueError:          # no shim preloaded
            self._allocs = self._bytes = None
        self.stages: dict[tuple[str, str], dict[str, float]] = {}

    def read(self) -> tuple[float, int, int, int]:
        allocs = (self._allocs.value, self._bytes.value) if self._allocs is not None else (0, 0)
        return time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD).ru_minflt, *allocs

    def run(self, role: str, stage: str, fn, *args):
        before = self.read()
        try:
            return fn(*args)
        finally:
            after = self.read()
            sums = self.stages.setdefault((role, stage), {"cpu_s": 0.0, "minor_faults": 0, "large_allocs": 0,
                                                          "large_alloc_mbytes": 0.0})
            sums["cpu_s"] += after[0] - before[0]
            sums["minor_faults"] += after[1] - before[1]
            if self._allocs is not None:
                sums["large_allocs"] += after[2] - before[2]
                sums["large_alloc_mbytes"] += (after[3] - before[3]) / 1e6


def deterministic_randomness(seed: int) -> None:
    """Post-processing's fresh randomness from a seeded generator (a bench only: never in the daemon)."""
    from qkdd.postprocess import randomness
    rng = np.random.default_rng(seed)
    randomness.fresh_bytes = lambda n_bytes: rng.bytes(n_bytes)


def run_frame(args: argparse.Namespace, index: int) -> dict:
    from qkdd.hal.sim.frames import decoy_settings, raw_frames
    from qkdd.hal.sim.settings import SimConfig
    from qkdd.hal.sim.simulator import Simulator
    from qkdd.link.engine import STAGES
    from qkdd.link.pipeline import ALICE, BOB, FramePipeline, PipelineSettings, Send, StorePending

    config = SimConfig(**SimConfig.expand_table({"system": args.system, "distance_km": args.distance_km}, "sim"))
    params = config.params("bb84")
    simulated = Simulator(params, seed=args.seed + index).run(1 << 50, args.detections)
    alice_frame, bob_frame = raw_frames(simulated, index + 1)
    detections = int(simulated.bob.slot.size)
    del simulated
    deterministic_randomness(args.seed + index)
    settings = PipelineSettings(reconciliation=args.reconciliation)
    counters = Counters()
    ends = {ALICE: FramePipeline(ALICE, alice_frame, settings, decoy=decoy_settings(params)),
            BOB: FramePipeline(BOB, bob_frame, settings)}
    del alice_frame, bob_frame
    stored = {ALICE: [], BOB: []}

    def step(role: str, fn, *call_args) -> list:
        stage = STAGES.get((role, ends[role].state), "other")
        return counters.run(role, stage, fn, *call_args)

    queue = [(BOB, action) for action in step(BOB, ends[BOB].start)]
    while queue:
        role, action = queue.pop(0)
        if isinstance(action, StorePending):
            stored[role].extend(action.keys)
        elif isinstance(action, Send):
            peer = ALICE if role == BOB else BOB
            queue.extend((peer, a) for a in step(peer, ends[peer].receive, action.record))
    outcome = ends[ALICE].outcome
    for role, end in ends.items():
        counters.run(role, RELEASE, end.release)
    if stored[ALICE] != stored[BOB]:
        raise SystemExit("the two ends stored different keys")
    digest = hashlib.sha256()
    for key_id, material in stored[ALICE]:
        digest.update(key_id.encode() + material)
    return {"frame": index, "system": args.system, "distance_km": args.distance_km, "detections": detections,
            "reconciliation": args.reconciliation, "aborted": outcome.aborted, "secret_bits": outcome.secret_bits,
            "qber": outcome.qber, "keys_sha256": digest.hexdigest(), "load_avg_1m": os.getloadavg()[0],
            **_tables(counters.stages)}


def _tables(stages: dict[tuple[str, str], dict[str, float]]) -> dict:
    by_end: dict[str, dict] = {}
    merged: dict[str, dict] = {}
    total = {"cpu_s": 0.0, "minor_faults": 0, "large_allocs": 0, "large_alloc_mbytes": 0.0}
    for (role, stage), sums in sorted(stages.items()):
        by_end.setdefault(role, {})[stage] = _rounded(sums)
        into = merged.setdefault(stage, dict.fromkeys(total, 0))
        for name, value in sums.items():
            into[name] += value
            total[name] += value
    return {"stages": {name: _rounded(sums) for name, sums in merged.items()}, "by_end": by_end,
            "total": _rounded(total)}


def _rounded(sums: dict) -> dict:
    return {name: round(value, 3) if isinstance(value, float) else int(value) for name, value in sums.items()}


def _rerun_with_shim() -> None:
    """Run this module again with the counting shim preloaded (compiled into a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        shim = Path(tmp) / "malloc_count.so"
        subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-O2", "-shared", "-fPIC", "-o", str(shim),
                        str(SHIM_SOURCE)], check=True)
        env = {**os.environ, SHIM_ENV: "1",
               "LD_PRELOAD": " ".join(filter(None, [os.environ.get("LD_PRELOAD"), str(shim)]))}
        sys.exit(subprocess.run([sys.executable, "-m", "bench.postprocess", *sys.argv[1:]], env=env).returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="yuan2018")
    parser.add_argument("--distance-km", type=float, default=10.0)
    parser.add_argument("--detections", type=int, default=1 << 25)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--reconciliation", choices=("ldpc", "cascade"), default="ldpc")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-alloc-count", action="store_true")
    args = parser.parse_args()
    if not args.no_alloc_count and SHIM_ENV not in os.environ:
        _rerun_with_shim()
    from qkdd.malloc_tuning import tune_malloc
    tune_malloc()
    for index in range(args.frames):
        print(json.dumps(run_frame(args, index)), flush=True)


if __name__ == "__main__":
    main()
