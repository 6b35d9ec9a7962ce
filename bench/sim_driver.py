"""Sim driver throughput: frames through both devices over the loopback quantum channel, unpaced.

    python -m bench.sim_driver --distance-km 10 --distance-km 25 --frames 8

Alice's device simulates each frame (C kernel in a worker thread), sends Bob's detections over TCP and
waits for Bob's ACK; Bob's device checks and yields them. One JSON object per distance:
{"detections_per_s", "wire_mbytes_per_s", "wire_bytes_per_detection", "real_time_factor"} where
real_time_factor is simulated source time over wall time (>= 1: the pair keeps up with the configured
clock). Defaults: the driver's system (qkdd.hal.sim.settings), 2^28-slot frames.
"""
from __future__ import annotations

import argparse
import json
import time

import trio

from qkdd.hal.sim.alice import SimAliceDevice
from qkdd.hal.sim.bob import SimBobDevice
from qkdd.hal.sim.settings import DEFAULT_FRAME_SLOTS, SimConfig


async def measure(distance_km: float, frames: int, frame_slots: int, prefetch: bool = True) -> dict:
    config = SimConfig(distance_km=distance_km)
    alice = SimAliceDevice(config.params("bb84"), listen_port=0, frame_slots=frame_slots, realtime=False, seed=1,
                           prefetch=prefetch)
    await alice.init()
    host, port = alice.address
    bob = SimBobDevice(host=host, port=port)
    detections = 0

    async def alice_side():
        for _ in range(frames + 1):
            await alice.next_frame()

    async def bob_side():
        nonlocal detections, started, first_frame_slots, first_frame_bytes
        for index in range(frames + 1):
            frame = await bob.next_frame()
            if index == 0:                     # the first frame includes connection set-up
                started = time.perf_counter()
                first_frame_slots = frame.slot_count
                first_frame_bytes = bob.wire_bytes_received
                continue
            detections += frame.bob.slots.size

    started = 0.0
    first_frame_slots = first_frame_bytes = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(alice_side)
        nursery.start_soon(bob_side)
    seconds = time.perf_counter() - started
    slots = alice.stats["slots"] - first_frame_slots
    await bob.close()
    await alice.close()
    return {"benchmark": "sim_driver", "distance_km": distance_km, "prefetch": prefetch, "frames": frames,
            "frame_slots": frame_slots,
            "seconds": round(seconds, 4), "detections_per_s": detections / seconds,
            "wire_mbytes_per_s": (bob.wire_bytes_received - first_frame_bytes) / seconds / 1e6,
            "wire_bytes_per_detection": round((bob.wire_bytes_received - first_frame_bytes) / detections, 3),
            "real_time_factor": slots / config.clock_hz / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_driver", description=__doc__.splitlines()[0])
    parser.add_argument("--distance-km", type=float, action="append", default=None)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--frame-slots", type=int, default=DEFAULT_FRAME_SLOTS)
    parser.add_argument("--compare-prefetch", action="store_true", help="also run without prefetching")
    args = parser.parse_args(argv)
    for distance_km in args.distance_km or [10.0, 25.0]:
        for prefetch in (True, False) if args.compare_prefetch else (True,):
            print(json.dumps(trio.run(measure, distance_km, args.frames, args.frame_slots, prefetch)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
