"""SKIP (draft-cisco-skip-02) between two qkdd daemons: keys per second a router gets at one end and its peer
router fetches by id at the other, over TLS 1.2 PSK.

    python -m bench.skip [--clients 20] [--seconds 20] [--cipher PSK-AES256-GCM-SHA384] [--no-etsi014]

Starts daemons A and B (two `qkdd run` processes on one link whose key stores are seeded with identical
keys, tests/apps_pair.py), then `--clients` router pairs, each with one keep-alive TLS-PSK connection to A
(router-a's identity) and one to B (router-b's): GET /key?remoteSystemID=KP_Bob at A, then GET
/key/{keyId}?remoteSystemID=KP_Alice at B, back to back. Every key is compared with its twin. Then, unless
`--no-etsi014`, the same machine runs `python -m bench.etsi014 --clients <clients> --seconds <seconds>`, so
that the ETSI 014 figure is measured in the same run.

Prints JSON lines: {"bench": "skip", ...} and then bench.etsi014's own line. `keys_per_s` counts keys
handed out at both ends; `p50_ms`/`p99_ms` are of the new-key request at A (which records the reservation
at B over the classical channel), `by_id_p50_ms`/`by_id_p99_ms` of the fetch by id at B; `mismatches`
(must be 0) and `failures` (answers other than 200) count keys; `machine`: CPUs and the 1-minute load average
before and after the run (bench.etsi004.machine_load).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

from bench.etsi004 import etsi014_line, machine_load
from bench.http_server import percentile_ms

SEEDED_FOR_KEYS_PER_S = 1500


class Router:
    """One keep-alive HTTP/1.1 connection over TLS-PSK."""

    def __init__(self, address, identity: str, psk: bytes, cipher: str) -> None:
        self.address, self.identity, self.psk, self.cipher = address, identity, psk, cipher
        self.stream: trio.SSLStream | None = None
        self.buffer = bytearray()

    async def open(self) -> None:
        from qkdd.skip.psk import psk_client_context
        tcp = await trio.open_tcp_stream(*self.address)
        self.stream = trio.SSLStream(tcp, psk_client_context(self.identity, self.psk, self.cipher),
                                     server_hostname=None)
        await self.stream.do_handshake()

    async def get(self, target: str) -> tuple[int, dict]:
        await self.stream.send_all(f"GET {target} HTTP/1.1\r\nHost: kp\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self._more()
        head, _, _ = bytes(self.buffer).partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(self.buffer) < len(head) + 4 + length:
            self.buffer += await self._more()
        body = bytes(self.buffer[len(head) + 4:len(head) + 4 + length])
        del self.buffer[:len(head) + 4 + length]
        return int(head.split()[1]), json.loads(body)

    async def _more(self) -> bytes:
        data = await self.stream.receive_some(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    async def aclose(self) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)


async def run_routers(pair, clients: int, seconds: float, cipher: str) -> dict:
    from tests.etsi004_support import ROUTERS
    new_s: list[float] = []
    by_id_s: list[float] = []
    tally = {"keys": 0, "mismatches": 0, "failures": 0}

    async def router_pair(a: Router, b: Router, deadline: float) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status, key = await a.get("/key?remoteSystemID=KP_Bob")
            new_s.append(time.perf_counter() - started)
            if status != 200:
                tally["failures"] += 1
                continue
            started = time.perf_counter()
            status, twin = await b.get(f"/key/{key['keyId']}?remoteSystemID=KP_Alice")
            by_id_s.append(time.perf_counter() - started)
            if status != 200:
                tally["failures"] += 1
            elif twin != key:
                tally["mismatches"] += 1
            else:
                tally["keys"] += 1

    routers = []
    try:
        for _ in range(clients):
            a = Router(pair.skip_address("kme-a"), *ROUTERS["a"], cipher)
            b = Router(pair.skip_address("kme-b"), *ROUTERS["b"], cipher)
            routers.append((a, b))
            await a.open()
            await b.open()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for a, b in routers:
                nursery.start_soon(router_pair, a, b, start + seconds)
        elapsed = time.perf_counter() - start
    finally:
        for a, b in routers:
            await a.aclose()
            await b.aclose()
    return {"keys_per_s": round(tally["keys"] / elapsed, 1),
            "p50_ms": percentile_ms(new_s, 0.5) if new_s else None,
            "p99_ms": percentile_ms(new_s, 0.99) if new_s else None,
            "by_id_p50_ms": percentile_ms(by_id_s, 0.5) if by_id_s else None,
            "by_id_p99_ms": percentile_ms(by_id_s, 0.99) if by_id_s else None,
            "mismatches": tally["mismatches"], "failures": tally["failures"]}


async def wait_key(pair, timeout_s: float = 30.0) -> None:
    """Until A hands out a key for B (the link session is up); that key is fetched at B, as a router would."""
    from tests.etsi004_support import ROUTERS, skip_get
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, key = await skip_get(pair.skip_address("kme-a"), *ROUTERS["a"], "/key?remoteSystemID=KP_Bob")
            if status == 200:
                target = f"/key/{key['keyId']}?remoteSystemID=KP_Alice"
                await skip_get(pair.skip_address("kme-b"), *ROUTERS["b"], target)
                return
        except (OSError, trio.BrokenResourceError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no SKIP key within {timeout_s} s")
        await trio.sleep(0.2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--cipher", default="PSK-AES256-GCM-SHA384",
                        choices=["PSK-AES256-GCM-SHA384", "DHE-PSK-AES256-GCM-SHA384"])
    parser.add_argument("--log-level", default="warning", choices=["info", "warning"])
    parser.add_argument("--no-etsi014", action="store_true", help="skip the ETSI 014 run of the same machine")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients at least 1 and --seconds positive")
    sys.path.insert(0, os.getcwd())
    load_before = os.getloadavg()[0]
    from tests.apps_pair import AppPair
    stored = int(2 * SEEDED_FOR_KEYS_PER_S * args.seconds) + 1000
    with tempfile.TemporaryDirectory() as directory:
        pair = AppPair(Path(directory), seeded_keys=stored)
        try:
            pair.start("kme-a", log_to_file=True, log_level=args.log_level)
            pair.start("kme-b", log_to_file=True, log_level=args.log_level)
            trio.run(wait_key, pair)
            result = trio.run(run_routers, pair, args.clients, args.seconds, args.cipher)
        finally:
            pair.stop_all()
    print(json.dumps({"bench": "skip", "clients": args.clients, "seconds": args.seconds, "cipher": args.cipher,
                      "log_level": args.log_level, **result, "machine": machine_load(round(load_before, 2))}),
          flush=True)
    if not args.no_etsi014:
        print(json.dumps(etsi014_line(args.clients, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
