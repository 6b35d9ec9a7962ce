"""Simulator throughput: pulse slots per second of the photon-level Monte Carlo on one core.

    python -m bench.simulate --protocol bb84 --distance-km 50 --pulses 1e10

Runs the simulator frame by frame (records materialised as numpy columns, as the HAL driver consumes
them) and prints {"pulse_slots_per_s", "detections", "seconds", ...}. Real time for a 1 GHz source is
10^9 slots per second. Parameters: the simulator defaults (GYS link of Ma-Qi-Zhao-Lo Table I), with
`--afterpulse P` for detectors with afterpulses (the sim driver's default system has P = 0.04).
"""
from __future__ import annotations

import argparse
import json
import time

from qkdd.hal.sim import SimParams, Simulator
from qkdd.hal.sim.cli import pulses_count

FRAME_RECORDS = 1 << 20


def measure(protocol: str, distance_km: float, pulses: int, seed: int, afterpulse_prob: float = 0.0) -> dict:
    sim = Simulator(SimParams(protocol=protocol, distance_km=distance_km, afterpulse_prob=afterpulse_prob), seed=seed)
    detections = 0
    frames = 0
    started = time.perf_counter()
    for frame in sim.frames(pulses, FRAME_RECORDS):
        detections += len(frame.bob)
        frames += 1
    seconds = time.perf_counter() - started
    return {"benchmark": "simulate", "protocol": protocol, "distance_km": distance_km,
            "afterpulse_prob": afterpulse_prob, "pulses": pulses,
            "detections": detections, "frames": frames, "seconds": round(seconds, 4),
            "pulse_slots_per_s": pulses / seconds, "detections_per_s": detections / seconds,
            "ns_per_detection": seconds / detections * 1e9 if detections else None,
            "real_time_factor_1ghz": pulses / seconds / 1e9,
            "click_prob": sim.expected()["click_prob"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("bb84", "e91"), default="bb84")
    parser.add_argument("--distance-km", type=float, action="append", default=None)
    parser.add_argument("--pulses", type=pulses_count, default=10 ** 10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--afterpulse", type=float, default=0.0, help="afterpulse probability per click")
    args = parser.parse_args(argv)
    for distance in args.distance_km or [50.0]:
        print(json.dumps(measure(args.protocol, distance, args.pulses, args.seed, args.afterpulse)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
