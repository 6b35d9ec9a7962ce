"""Record throughput of the hardware drivers on this machine.

    python -m bench.devices serial --seconds 5   a real pty: pre-encoded DETECTIONS frames written by one
                                                 task, read by SerialDevice (pyserial in a worker thread,
                                                 framing, CRC-32C, assembly into RawFrames)
    python -m bench.devices sdk --seconds 5      the reference vendor library (compiled here with cc, the
                                                 photon-level simulator inside) through cffi's ABI mode
                                                 into numpy buffers; --replay: one simulated frame handed
                                                 out again and again (the ABI path alone)
    -> {"driver", "records", "seconds", "records_per_s", ...}
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import tempfile
import time

import numpy as np
import trio

ROOT = pathlib.Path(__file__).resolve().parent.parent


def serial_rate(seconds: float, records_per_frame: int = 250_000) -> dict:
    from qkdd.hal.base import BobDetections, RawFrame
    from qkdd.hal.serial import frames as wire
    from qkdd.hal.serial.device import SerialDevice
    from qkdd.hal.serial.emulator import Pty, chunks
    from qkdd.hal.serial.settings import SerialConfig

    rng = np.random.default_rng(1)
    slots = np.sort(rng.choice(np.uint64(1) << np.uint64(40), records_per_frame, replace=False)).astype(np.uint64)
    raw = RawFrame(0, 1 << 40, bob=BobDetections(slots=slots, bases=rng.integers(0, 2, slots.size, np.uint8),
                                                 outcomes=rng.integers(0, 2, slots.size, np.uint8)))
    payloads = [wire.detections_payload(chunk) for chunk in chunks(raw, "bob")]
    result = {}

    async def main():
        pty = Pty()
        device = SerialDevice(pty.path, "bob", SerialConfig(max_records_per_frame=records_per_frame))
        async with trio.open_nursery() as nursery:
            await nursery.start(device.run)
            while device.problem != "opened; waiting for the device's HELLO":
                await trio.sleep(0.01)

            async def write():
                await pty.send(wire.FrameType.HELLO, wire.hello_payload("bob", "bench"))
                while True:
                    for payload in payloads:
                        await pty.send(wire.FrameType.DETECTIONS, payload)
            nursery.start_soon(write)
            await device.next_frame()                       # warm up
            records, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                records += (await device.next_frame()).bob.slots.size
            elapsed = time.perf_counter() - start
            result.update(driver="serial", records=records, seconds=round(elapsed, 2),
                          records_per_s=round(records / elapsed), bytes_per_record=wire.RECORD.itemsize,
                          crc_errors=device.crc_errors)
            nursery.cancel_scope.cancel()
        await pty.aclose()
    trio.run(main)
    return result


def sdk_rate(seconds: float, records_per_frame: int = 1 << 20, replay: bool = False) -> dict:
    from qkdd.hal.sdk import abi
    compiler = shutil.which("cc") or shutil.which("gcc")
    with tempfile.TemporaryDirectory(prefix="qkdd-bench-sdk-") as workdir:
        library_path = pathlib.Path(workdir) / "libqkd_ref.so"
        native = ROOT / "native"
        sources = [str(native / "src" / f"{part}.c") for part in ("sim_chacha", "sim_channel", "sim_sampler", "bits")]
        subprocess.run([compiler, "-std=c11", "-O2", "-D_GNU_SOURCE", "-shared", "-fPIC", "-Wl,-Bsymbolic",
                        f"-I{native / 'include'}", f"-I{native / 'src'}", "-o", str(library_path),
                        str(native / "sdk_reference" / "qkd_device_ref.c"), *sources, "-lm"], check=True)
        library = abi.Library(str(library_path))
        handle = library.open(f"detections={records_per_frame},replay={int(replay)}", "alice")
        buffers = (np.empty(records_per_frame, np.uint64), *(np.empty(records_per_frame, np.uint8) for _ in range(3)))
        handle.read_frame(*buffers)
        records, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            records += handle.read_frame(*buffers).records
        elapsed = time.perf_counter() - start
        handle.close()
        library.close()
    return {"driver": "sdk", "replay": replay, "records": records, "seconds": round(elapsed, 2),
            "records_per_s": round(records / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("driver", choices=["serial", "sdk"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--replay", action="store_true", help="sdk: the library replays one simulated frame "
                        "(the ABI path alone, without the simulator's cost)")
    args = parser.parse_args()
    print(json.dumps(serial_rate(args.seconds) if args.driver == "serial" else
                     sdk_rate(args.seconds, replay=args.replay)))


if __name__ == "__main__":
    main()
