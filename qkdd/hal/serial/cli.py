"""`qkdctl device serve --pty`: a serial QKD device pair emulated on two real ptys, played from the
simulator (qkdd.hal.serial.emulator). Prints the two device paths, one per line ("alice PATH", "bob
PATH"), then serves until interrupted; point each link end's `device_addr` at its path."""
from __future__ import annotations

import argparse
import sys

import trio

from qkdd.hal.sim.params import SimParams
from qkdd.hal.sim.settings import MODERN_SYSTEM, OPTIMISED_SOURCE


def register(commands: argparse._SubParsersAction) -> None:
    device = commands.add_parser("device", help="emulated QKD devices for the serial driver")
    device_commands = device.add_subparsers(dest="device_command", required=True, metavar="DEVICE_COMMAND")
    serve = device_commands.add_parser("serve", help="play the simulator's frames on two ptys (Alice, Bob)")
    serve.add_argument("--pty", action="store_true", required=True, help="emulate on pseudo-terminals")
    serve.add_argument("--distance-km", type=float, default=25.0)
    serve.add_argument("--detections", type=int, default=250_000, help="Bob's detections per frame")
    serve.add_argument("--frames", type=int, default=None, help="stop after this many frames (default: never)")
    serve.add_argument("--seed", type=int, default=None, help="reproducible frames (tests only: keys predictable)")
    serve.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from qkdd.hal.serial.emulator import Emulator
    if not 0 <= args.distance_km <= 1000 or not 1 <= args.detections <= 1 << 24:
        print("qkdctl device serve: --distance-km in [0, 1000], --detections in [1, 16777216]", file=sys.stderr)
        return 2

    async def serve() -> None:
        emulator = Emulator(SimParams(distance_km=args.distance_km, **MODERN_SYSTEM, **OPTIMISED_SOURCE),
                            max_detections=args.detections, seed=args.seed, frames=args.frames)
        print(f"alice {emulator.alice.path}\nbob {emulator.bob.path}", flush=True)
        try:
            await emulator.serve()
        finally:
            await emulator.aclose()

    try:
        trio.run(serve)
    except KeyboardInterrupt:
        pass
    return 0
