"""ETSI 014 Get key (`enc_keys`) throughput and latency against one qkdd KME, next to its ceiling.

    python -m bench.etsi014 [--clients 50] [--seconds 20] [--rounds 4] [--log-level info|warning]   # from the repo root

Starts KME A and KME B (two `qkdd run` processes joined by the classical channel, key stores seeded with
identical keys as in tests/etsi014_support.py), then `--clients` keep-alive mTLS connections each send
`GET /api/v1/keys/sae-b/enc_keys` back to back for `--seconds` in all: every request reserves a key, records the
reservation at KME B over the classical channel and erases KME A's copy before the answer. In the same
run the same load goes to the ceiling: a minimal server on the same stack (qkdd.http: h11 over trio TLS,
client certificates required) answering a key-container-sized JSON at once. The load generator is one
trio process speaking raw HTTP/1.1, so its own cost is small and equal for both. Prints one JSON object.

Two phases per server. Saturation (closed loop, what the issue's ratio is about): each client sends its
next request as soon as the previous answer is in, so the servers run flat out; `req_per_s` is the
throughput, and the latencies are queueing at saturation. By Little's law mean latency = clients /
throughput there, so with 50 clients a p99 below 20 ms needs well over 2500 requests/s, more than even
the ceiling reaches on a small shared machine: a saturated p99 measures the machine, not the daemon.
Paced (open loop, `paced_*` and `ceiling_paced_*`): the same clients together offer a fixed load,
`--paced-fraction` of the ceiling's saturated rate (stated in `paced_offered_req_per_s`), each on a fixed
schedule; latency runs from the scheduled send time, so time a request spends waiting behind a slow one
is counted rather than hidden. This is the latency an SAE sees when the KME is not overloaded, at an
equal offered load for the KME and the ceiling. Order: the saturated phase in `--rounds` rounds of
`--seconds / --rounds` alternating ceiling and KME (the KMEs idle while the ceiling runs and the other
way round), so that a change in the machine's other load falls on both alike; then KME paced, ceiling
paced. Connections are opened before each round's clock starts. CPU figures are for the saturated
phase (from /proc, per request answered).
"""
from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from bench.http_server import percentile_ms

PACED_FRACTION = 0.5
ROUNDS = 4
SEEDED_FOR_REQ_PER_S = 4000     # a fast machine ran the KME at 2700 requests/s: seed for more

CEILING_SERVER = """
import sys, trio
from qkdd.http import HTTPLimits, HTTPServer, Response, Router, TLSSettings

BODY = {"keys": [{"key_ID": "bc490419-7d60-487f-adc1-4ddcc177c139",
                  "key": "wHHVxRwDJs3/bXd38GHP3oe4svTuRpZS0yCC7x4Ly+s="}]}

async def enc_keys(request):
    return Response.json(BODY, headers=[("Cache-Control", "no-store")])

async def main():
    router = Router()
    router.get("/api/v1/keys/{slave_SAE_ID}/enc_keys", enc_keys)
    tls = TLSSettings(sys.argv[1], sys.argv[2], sys.argv[3], "optional")
    server = HTTPServer("ceiling", "127.0.0.1", 0, router, tls=tls, limits=HTTPLimits(max_connections=4096,
                                                                                  max_requests_per_connection=10**9))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.run)
        print(port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)   # until the parent closes stdin
        server.shutdown()

trio.run(main)
"""


async def _read_response(stream: trio.SSLStream, buffer: bytearray) -> tuple[int, bool]:
    """Read one response (Content-Length framed); returns the status code and whether the server closes."""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        buffer += data
    head_end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:head_end]).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = 0
    closing = False
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "connection":
            closing = value.strip().lower() == "close"
    while len(buffer) < head_end + length:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        buffer += data
    del buffer[:head_end + length]
    return status, closing


async def open_client(host: str, port: int, context: ssl.SSLContext) -> trio.SSLStream:
    """One keep-alive mTLS connection, handshake done."""
    stream = trio.SSLStream(await trio.open_tcp_stream(host, port), context, server_hostname=host)
    await stream.do_handshake()
    return stream


class _Connection:
    """One keep-alive connection sending the same GET, reopened when the server closes it (its
    requests-per-connection limit)."""

    def __init__(self, host: str, port: int, path: str, context: ssl.SSLContext) -> None:
        self.address = (host, port, context)
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n".encode()
        self.stream: trio.SSLStream | None = None
        self.buffer = bytearray()

    async def open(self) -> None:
        self.stream = await open_client(*self.address)
        self.buffer.clear()

    async def exchange(self) -> int:
        """Send the request and read its answer; returns the status code."""
        await self.stream.send_all(self.request)
        status, closing = await _read_response(self.stream, self.buffer)
        if closing:
            await trio.aclose_forcefully(self.stream)
            await self.open()
        return status

    async def aclose(self) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)


class _Tally:
    """Latencies of the answered requests, and how many failed."""

    def __init__(self) -> None:
        self.latencies_s: list[float] = []
        self.failures = 0
        self.elapsed_s = 0.0

    def count(self, status: int, since: float) -> None:
        if status == 200:
            self.latencies_s.append(time.perf_counter() - since)
        else:
            self.failures += 1

    def result(self, elapsed_s: float | None = None) -> dict:
        elapsed_s = self.elapsed_s if elapsed_s is None else elapsed_s
        latencies_s = self.latencies_s
        return {"requests": len(latencies_s), "failures": self.failures,
                "req_per_s": round(len(latencies_s) / elapsed_s, 1),
                "p50_ms": percentile_ms(latencies_s, 0.5) if latencies_s else None,
                "p99_ms": percentile_ms(latencies_s, 0.99) if latencies_s else None}


async def load(host: str, port: int, path: str, context: ssl.SSLContext, clients: int, seconds: float,
               tally: "_Tally | None" = None) -> "_Tally":
    """Closed loop: `clients` keep-alive connections (their handshakes before the clock starts) each send
    the next request when the last is answered. Adds to `tally`, if given, and returns it."""
    tally = tally if tally is not None else _Tally()
    connections = [_Connection(host, port, path, context) for _ in range(clients)]
    try:
        for connection in connections:
            await connection.open()

        async def client(connection: _Connection, deadline: float) -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                tally.count(await connection.exchange(), started)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for connection in connections:
                nursery.start_soon(client, connection, started + seconds)
        tally.elapsed_s += time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.aclose()
    return tally


async def paced_load(host: str, port: int, path: str, context: ssl.SSLContext, clients: int, seconds: float,
                     rate: float) -> dict:
    """Open loop: `clients` keep-alive connections together send `rate` requests/s on a fixed schedule
    (client i sends at t0 + (i + k * clients) / rate). Latency runs from the scheduled send time, so a
    request that waits for a slow predecessor on its connection counts its wait (no coordinated omission)."""
    tally = _Tally()
    interval_s = clients / rate

    async def client(connection: _Connection, scheduled: float, deadline: float) -> None:
        try:
            while scheduled < deadline:
                now = time.perf_counter()
                if scheduled > now:
                    await trio.sleep(scheduled - now)
                tally.count(await connection.exchange(), scheduled)
                scheduled += interval_s
        finally:
            await connection.aclose()

    connections = [_Connection(host, port, path, context) for _ in range(clients)]
    for connection in connections:                       # handshakes outside the schedule
        await connection.open()
    start_s = time.perf_counter() + 0.05
    async with trio.open_nursery() as nursery:
        for index, connection in enumerate(connections):
            nursery.start_soon(client, connection, start_s + index / rate, start_s + seconds)
    return tally.result(time.perf_counter() - start_s)


def wait_for_channel(host: str, port: int, context: ssl.SSLContext, timeout_s: float = 30.0) -> None:
    """Until KME A hands out a key (its classical channel to KME B is up)."""
    import httpx
    deadline = time.monotonic() + timeout_s
    with httpx.Client(verify=context) as client:
        while time.monotonic() < deadline:
            if client.get(f"https://{host}:{port}/api/v1/keys/sae-b/enc_keys").status_code == 200:
                return
            time.sleep(0.2)
    raise RuntimeError("KME A did not reach KME B")


def cpu_s(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_context(pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert_file))
    sae = pki.saes["sae-a"]
    context.load_cert_chain(str(sae.cert_file), str(sae.key_file))
    return context


def _per_request_ms(cpu_seconds: float, requests: int) -> float | None:
    return round(1000.0 * cpu_seconds / requests, 3) if requests else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--log-level", default="info", choices=["info", "warning"],
                        help="daemon log level; info writes an access log line per request (the default)")
    parser.add_argument("--stored-keys", type=int, default=0,
                        help=f"keys seeded per end (default: enough for {SEEDED_FOR_REQ_PER_S} requests/s)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="saturated phase: alternate ceiling and KME this many times, --seconds in all each")
    parser.add_argument("--paced-fraction", type=float, default=PACED_FRACTION,
                        help="paced phase: offered load as a fraction of the ceiling's saturated rate")
    parser.add_argument("--paced-seconds", type=float, default=0.0,
                        help="length of each paced phase (default: --seconds / 2; a negative value skips them)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds positive")
    sys.path.insert(0, os.getcwd())
    from tests.etsi014_support import make_pair

    paced_seconds = args.paced_seconds or args.seconds / 2
    round_s = args.seconds / args.rounds
    # Each end may hand out half of the seeded keys (the key store's `allocatable` partition).
    stored = args.stored_keys or int(2 * SEEDED_FOR_REQ_PER_S * (args.seconds + max(paced_seconds, 0))) + 1000
    path = "/api/v1/keys/sae-b/enc_keys"
    with tempfile.TemporaryDirectory() as directory:
        pair, _ = make_pair(Path(directory), stored_keys=stored)
        issued = pair.pki.kmes["kme-a"]
        context = client_context(pair.pki)
        ceiling_server = subprocess.Popen(
            [sys.executable, "-c", CEILING_SERVER, str(issued.cert_file), str(issued.key_file),
             str(pair.pki.ca_cert_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            ceiling_port = int(ceiling_server.stdout.readline())
            try:
                pair.start("kme-b", log_to_file=True, log_level=args.log_level)
                pair.start("kme-a", log_to_file=True, log_level=args.log_level)
                host, port = pair.daemons["kme-a"].api_address
                wait_for_channel(host, port, context)
                pids = [pair.daemons[name].process.pid for name in ("kme-a", "kme-b")]
                # Saturated: rounds alternating between the ceiling and the KME, so a change in the
                # machine's other load during the run falls on both alike.
                ceiling, kme = _Tally(), _Tally()
                ceiling_cpu_s, kme_cpu_s = 0.0, [0.0, 0.0]
                for _ in range(args.rounds):
                    before = cpu_s(ceiling_server.pid)
                    trio.run(load, "127.0.0.1", ceiling_port, path, context, args.clients, round_s, ceiling)
                    ceiling_cpu_s += cpu_s(ceiling_server.pid) - before
                    before_kme = [cpu_s(pid) for pid in pids]
                    trio.run(load, host, port, path, context, args.clients, round_s, kme)
                    kme_cpu_s = [total + cpu_s(pid) - before for total, pid, before in zip(kme_cpu_s, pids, before_kme)]
                ceiling, kme = ceiling.result(), kme.result()
                paced_rate = round(args.paced_fraction * ceiling["req_per_s"], 1)
                if paced_seconds > 0 and paced_rate > 0:
                    kme_paced = trio.run(paced_load, host, port, path, context, args.clients, paced_seconds,
                                         paced_rate)
            finally:
                pair.stop_all()
            if paced_seconds > 0 and paced_rate > 0:
                ceiling_paced = trio.run(paced_load, "127.0.0.1", ceiling_port, path, context, args.clients,
                                         paced_seconds, paced_rate)
        finally:
            ceiling_server.stdin.close()
            ceiling_server.wait(timeout=30)
    result = {"bench": "etsi014", "clients": args.clients, "seconds": args.seconds, "rounds": args.rounds,
              "log_level": args.log_level,
              "req_per_s": kme["req_per_s"], "p50_ms": kme["p50_ms"], "p99_ms": kme["p99_ms"],
              "failures": kme["failures"], "ceiling_req_per_s": ceiling["req_per_s"],
              "ceiling_p50_ms": ceiling["p50_ms"], "ceiling_p99_ms": ceiling["p99_ms"],
              "cpu_ms_per_request_kme_a": _per_request_ms(kme_cpu_s[0], kme["requests"]),
              "cpu_ms_per_request_kme_b": _per_request_ms(kme_cpu_s[1], kme["requests"]),
              "cpu_ms_per_request_ceiling": _per_request_ms(ceiling_cpu_s, ceiling["requests"]),
              "ratio_to_ceiling": round(kme["req_per_s"] / ceiling["req_per_s"], 3) if ceiling["req_per_s"] else None}
    if paced_seconds > 0 and paced_rate > 0:
        result.update({"paced_seconds": paced_seconds, "paced_offered_req_per_s": paced_rate,
                       "paced_req_per_s": kme_paced["req_per_s"], "paced_p50_ms": kme_paced["p50_ms"],
                       "paced_p99_ms": kme_paced["p99_ms"], "paced_failures": kme_paced["failures"],
                       "ceiling_paced_req_per_s": ceiling_paced["req_per_s"],
                       "ceiling_paced_p50_ms": ceiling_paced["p50_ms"],
                       "ceiling_paced_p99_ms": ceiling_paced["p99_ms"]})
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
