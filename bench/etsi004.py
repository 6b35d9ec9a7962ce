"""ETSI GS QKD 004 key streams between two qkdd daemons: chunks per second agreed and handed out at both ends.

    python -m bench.etsi004 [--streams 20] [--seconds 20] [--chunk-bytes 32] [--no-etsi014]   # from the repo root

Starts daemons A and B (two `qkdd run` processes on one link whose key stores are seeded with identical
keys, tests/apps_pair.py), then `--streams` stream pairs: for each, one 004 application at A and one at B
(TLS with client certificates, the binary 004 framing) open the same Key_stream_ID and fetch indexes 0, 1,
2, ... in step, both ends asking for each index at once, so that both try to assign it and the link's
reservation exchange decides. Every chunk is compared with its twin from the other end. Then, unless
`--no-etsi014`, the same machine runs `python -m bench.etsi014 --clients <streams> --seconds <seconds>`
so that the ETSI 014 figure is measured in the same run.

Prints JSON lines: {"bench": "etsi004", ...} and then bench.etsi014's own line. `chunks_per_s` counts
index pairs (a chunk handed out at both ends), `key_bits_per_s` the key in them (counted once);
`p50_ms`/`p99_ms` are per GET_KEY; `mismatches` counts indexes whose two chunks differ (must be 0) and
`failures` GET_KEYs that did not return status 0. `machine` notes what else ran: the number of CPUs and the
one-minute load average before and after the run (`load_1m`), so that figures from a loaded machine say so.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

from bench.http_server import percentile_ms

SEEDED_FOR_CHUNKS_PER_S = 1500


async def run_streams(pair, streams: int, seconds: float, chunk_bytes: int) -> dict:
    from qkdd.etsi004.wire import GetKey, OpenConnect, Status
    from tests.etsi004_support import qos
    latencies: list[float] = []
    tally = {"chunks": 0, "mismatches": 0, "failures": 0}
    stream_qos = qos(chunk_bytes, timeout_ms=10_000)

    async def get(client, ksid: str, index: int, out: dict, end: str) -> None:
        started = time.perf_counter()
        response = await client.call(GetKey(ksid, index, 1024))
        latencies.append(time.perf_counter() - started)
        out[end] = response.key if response.status is Status.SUCCESSFUL else None

    async def stream_pair(a, b, deadline: float) -> None:
        ksid = str(uuid.uuid4())
        for client in (a, b):
            opened = await client.call(OpenConnect("app://bench", "app://bench", stream_qos, ksid))
            assert opened.status is Status.SUCCESSFUL, opened.status
        index = 0
        while time.perf_counter() < deadline:
            out: dict = {}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(get, a, ksid, index, out, "a")
                nursery.start_soon(get, b, ksid, index, out, "b")
            if out["a"] is None or out["b"] is None:
                tally["failures"] += (out["a"] is None) + (out["b"] is None)
            elif out["a"] != out["b"]:
                tally["mismatches"] += 1
            else:
                tally["chunks"] += 1
            index += 1

    clients = []
    try:
        for _ in range(streams):
            a, b = pair.client("kme-a", "app-a"), pair.client("kme-b", "app-b")
            await a.__aenter__()
            await b.__aenter__()
            clients.append((a, b))
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for a, b in clients:
                nursery.start_soon(stream_pair, a, b, start + seconds)
        elapsed = time.perf_counter() - start
    finally:
        for a, b in clients:
            await a.__aexit__()
            await b.__aexit__()
    return {"chunks_per_s": round(tally["chunks"] / elapsed, 1),
            "key_bits_per_s": round(tally["chunks"] * chunk_bytes * 8 / elapsed, 1),
            "get_keys": len(latencies), "p50_ms": percentile_ms(latencies, 0.5) if latencies else None,
            "p99_ms": percentile_ms(latencies, 0.99) if latencies else None,
            "mismatches": tally["mismatches"], "failures": tally["failures"]}


async def wait_open(pair, timeout_s: float = 30.0) -> None:
    """Until both daemons accept an OPEN (their link session is up)."""
    from qkdd.etsi004.wire import Close, OpenConnect, Status
    from tests.etsi004_support import qos
    deadline = time.monotonic() + timeout_s
    for name, app in (("kme-a", "app-a"), ("kme-b", "app-b")):
        while True:
            try:
                async with pair.client(name, app) as client:
                    ksid = str(uuid.uuid4())
                    opened = await client.call(OpenConnect("app://probe", "app://probe", qos(), ksid))
                    if opened.status is Status.SUCCESSFUL:
                        await client.call(Close(ksid))
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not accept an OPEN within {timeout_s} s")
            await trio.sleep(0.2)


def machine_load(before: float | None = None) -> dict:
    """The machine the figures come from: CPUs and the 1-minute load average (before the run, and now)."""
    now = round(os.getloadavg()[0], 2)
    return {"cpus": os.cpu_count(), "load_1m": [before, now] if before is not None else [now]}


def etsi014_line(clients: int, seconds: float) -> dict:
    """bench.etsi014's JSON line for the same machine, now (with the machine's load, as this bench's)."""
    load_before = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-m", "bench.etsi014", "--clients", str(clients), "--seconds",
                           str(seconds), "--paced-seconds", "-1"], capture_output=True, text=True,
                          timeout=seconds * 4 + 300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"bench": "etsi014", "error": done.stderr.strip().splitlines()[-1:] or ["no output"]}
    return {**json.loads(lines[-1]), "machine": machine_load(round(load_before, 2))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--chunk-bytes", type=int, default=32)
    parser.add_argument("--log-level", default="warning", choices=["info", "warning"])
    parser.add_argument("--no-etsi014", action="store_true", help="skip the ETSI 014 run of the same machine")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.seconds <= 0 or not 1 <= args.chunk_bytes <= 65536:
        parser.error("--streams at least 1, --seconds positive, --chunk-bytes in 1..65536")
    sys.path.insert(0, os.getcwd())
    load_before = os.getloadavg()[0]
    from tests.apps_pair import STORED_KEY_BITS, AppPair
    keys_per_chunk = -(-args.chunk_bytes * 8 // STORED_KEY_BITS)
    stored = int(2 * SEEDED_FOR_CHUNKS_PER_S * args.seconds * keys_per_chunk) + 1000
    with tempfile.TemporaryDirectory() as directory:
        pair = AppPair(Path(directory), seeded_keys=stored)
        try:
            pair.start("kme-a", log_to_file=True, log_level=args.log_level)
            pair.start("kme-b", log_to_file=True, log_level=args.log_level)
            trio.run(wait_open, pair)
            result = trio.run(run_streams, pair, args.streams, args.seconds, args.chunk_bytes)
        finally:
            pair.stop_all()
    print(json.dumps({"bench": "etsi004", "streams": args.streams, "seconds": args.seconds,
                      "chunk_bytes": args.chunk_bytes, "log_level": args.log_level, **result,
                      "machine": machine_load(round(load_before, 2))}), flush=True)
    if not args.no_etsi014:
        print(json.dumps(etsi014_line(args.streams, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
