"""Sifting throughput: both ends of one frame in one process, through serialized messages.

    python -m bench.sift --detections 10000000 [--slots-per-detection 4] [--classes 3] [--reps 3]

records_per_s counts Bob's detection records per wall second for the whole exchange (DETECTIONS,
ANSWER, REPORT: encode, decode, checks, match, counts and gather on both ends), best of --reps.
Alice's per-slot pass (pulses sent per class and basis) is part of it. cpu_records_per_s uses the
exchange's CPU time instead of wall time (telling on a shared, loaded machine).
kernel_records_per_s is the C kernels alone (slot encoding, Alice's and Bob's sifting) and
slots_per_s Alice's per-slot count, both by CPU time.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from qkdd.bindings import sift as kernel
from qkdd.postprocess.sifting import ALICE, BOB, AliceRecords, BobDetections, Sifting


def make_frame(detections: int, slots_per_detection: int, n_classes: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    n_slots = detections * slots_per_detection
    states = rng.integers(0, 4 * n_classes, n_slots, dtype=np.uint8)  # value, basis, class uniform
    slots = np.sort(rng.choice(n_slots, detections, replace=False)).astype(np.uint64)
    basis = rng.integers(0, 2, detections, dtype=np.uint8)
    outcome = (states[slots] & 1) ^ (rng.random(detections) < 0.02).astype(np.uint8)
    return AliceRecords(states, n_classes), BobDetections(n_slots, slots, basis, outcome.astype(np.uint8))


def exchange(records, detections, n_classes) -> float:
    alice = Sifting(ALICE, 7, records, n_classes, revealed_classes=tuple(range(1, n_classes)))
    bob = Sifting(BOB, 7, detections, n_classes)
    start, start_cpu = time.perf_counter(), time.thread_time()
    [answer] = alice.receive(bob.start()[0])
    [report] = bob.receive(answer)
    alice.receive(report)
    return time.perf_counter() - start, time.thread_time() - start_cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=int, default=10_000_000)
    parser.add_argument("--slots-per-detection", type=int, default=4)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    records, det = make_frame(args.detections, args.slots_per_detection, args.classes)
    runs = [exchange(records, det, args.classes) for _ in range(args.reps)]
    best, best_cpu = min(r[0] for r in runs), min(r[1] for r in runs)

    bases = np.zeros((args.detections + 63) // 64, dtype=np.uint64)
    packed = np.packbits(det.basis, bitorder="little")
    bases.view(np.uint8)[:packed.size] = packed
    kernel_best = slots_best = float("inf")
    for _ in range(args.reps):
        t0 = time.thread_time()
        code = kernel.encode_slots(det.slots, det.n_slots)
        a = kernel.alice(records.states, code, det.slots.size, bases, args.classes)
        kernel.bob(det.basis, det.outcome, a.match, a.classes, args.classes)
        t1 = time.thread_time()
        kernel.sent_counts(records.states, args.classes)
        t2 = time.thread_time()
        kernel_best, slots_best = min(kernel_best, t1 - t0), min(slots_best, t2 - t1)
    print(json.dumps({
        "detections": args.detections, "slots": records.n_slots, "classes": args.classes,
        "records_per_s": round(args.detections / best), "exchange_ms": round(best * 1e3, 2),
        "cpu_records_per_s": round(args.detections / best_cpu),
        "kernel_records_per_s": round(args.detections / kernel_best),
        "slots_per_s": round(records.n_slots / slots_best),
    }))


if __name__ == "__main__":
    main()
