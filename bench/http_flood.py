"""Memory of a real `qkdd run` under a flood of large request bodies, and after it.

    python -m bench.http_flood [--connections 300] [--body-bytes 1048576] [--after-s 30] [--case NAME ...]

Each case starts its own daemon (the example configuration etc/qkdd/qkdd.toml, loopback ports, a fresh
state directory; the TLS cases add `[api.tls]` with client certificates optional from a development PKI
and `key_clients = ["cn:sae-a"]`), waits for /healthz, then opens `--connections` connections at once,
each sending one request head announcing `--body-bytes` and then the body, reading the answer, and
holding the connection until all have answered or given up. The cases:

    health            POST /healthz on port 8072 (plain HTTP): 405, decided on the head
    api-plain         POST /v1/keys/request on port 8071, plain HTTP from loopback: allowed, so each body is
                      read, within the listener's body budget (400: not JSON, or 503: no room in time)
    api-tls-nocert    the same over TLS without a client certificate: 401 on the head
    api-tls-cert      the same over TLS with the listed client certificate: read as api-plain

The daemon's resident set (VmRSS) is read before, every 0.1 s during (peak), 2 s after the clients
closed their connections (the moment tests/…/w2-10-hardening looks at) and `--after-s` later. Prints
one JSON object: per case the RSS figures in MB and the count of each answer status.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import trio

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "etc" / "qkdd" / "qkdd.toml"
CASES = ("health", "api-plain", "api-tls-nocert", "api-tls-cert")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(workdir: Path, tls: bool) -> tuple[Path, ssl.SSLContext | None, ssl.SSLContext | None]:
    """The example config (plus TLS for the API); the client contexts without and with a certificate."""
    text = EXAMPLE.read_text()
    if not tls:
        return EXAMPLE, None, None
    from qkdd.pki import init_pki
    pki = init_pki(workdir / "pki", ["kme-a"], ["sae-a"])
    kme = pki.kmes["kme-a"]
    api_tls = (f'key_clients = ["cn:sae-a"]\n[api.tls]\ncert_file = "{kme.cert_file}"\nkey_file = "{kme.key_file}"\n'
               f'client_ca_file = "{pki.ca_cert_file}"\nclient_cert = "optional"\n')
    text = re.sub(r"^\[api\]\nlisten = .*\n", lambda m: m.group(0) + api_tls, text, count=1, flags=re.M)
    path = workdir / "qkdd.toml"
    path.write_text(text)
    bare = ssl.create_default_context(cafile=str(pki.ca_cert_file))
    with_cert = ssl.create_default_context(cafile=str(pki.ca_cert_file))
    with_cert.load_cert_chain(str(pki.saes["sae-a"].cert_file), str(pki.saes["sae-a"].key_file))
    return path, bare, with_cert


async def one_client(port: int, request: bytes, body_bytes: int, context: ssl.SSLContext | None,
                     statuses: Counter, done: trio.Event, answered: list[int]) -> None:
    stream = None
    try:
        with trio.move_on_after(60):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            if context is not None:
                stream = trio.SSLStream(stream, context, server_hostname="localhost")
                await stream.do_handshake()
            async with trio.open_nursery() as nursery:
                async def send() -> None:
                    await stream.send_all(request)
                    chunk = b"a" * 65536
                    left = body_bytes
                    while left > 0:
                        await stream.send_all(chunk[:left])
                        left -= len(chunk)
                nursery.start_soon(send)
                head = b""
                while b"\r\n" not in head:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    head += data
                statuses[head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/1.1 ") else "closed"] += 1
                nursery.cancel_scope.cancel()
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
        statuses["reset"] += 1
    finally:
        answered.append(1)
    await done.wait()
    if stream is not None:
        await trio.aclose_forcefully(stream)


async def flood(pid: int, port: int, path: str, connections: int, body_bytes: int,
                context: ssl.SSLContext | None) -> tuple[Counter, float]:
    request = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               f"Content-Length: {body_bytes}\r\n\r\n").encode()
    statuses: Counter = Counter()
    answered: list[int] = []
    done = trio.Event()
    peak = 0.0
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one_client, port, request, body_bytes, context, statuses, done, answered)
        while len(answered) < connections:
            peak = max(peak, rss_mb(pid))
            await trio.sleep(0.1)
        peak = max(peak, rss_mb(pid))
        done.set()
    return statuses, peak


def run_case(case: str, connections: int, body_bytes: int, after_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="qkdd-flood-") as workdir_text:
        workdir = Path(workdir_text)
        tls = case.startswith("api-tls")
        config, bare, with_cert = write_config(workdir, tls)
        api_port, health_port = free_port(), free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith(("QKD_", "KMS_"))}
        env.update(QKD_API_LISTEN=f"127.0.0.1:{api_port}", QKD_HEALTH_LISTEN=f"127.0.0.1:{health_port}",
                   QKD_STATE_DIR=str(workdir / "state"), QKD_LOG_LEVEL="warning")
        daemon = subprocess.Popen([sys.executable, "-m", "qkdd", "run", "--config", str(config)], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=open(workdir / "log", "wb"))
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or daemon.poll() is not None:
                        raise RuntimeError((workdir / "log").read_text()[-2000:])
                    time.sleep(0.2)
            time.sleep(1.0)
            before = rss_mb(daemon.pid)
            port, path, context = {"health": (health_port, "/healthz", None),
                                   "api-plain": (api_port, "/v1/keys/request", None),
                                   "api-tls-nocert": (api_port, "/v1/keys/request", bare),
                                   "api-tls-cert": (api_port, "/v1/keys/request", with_cert)}[case]
            started = time.monotonic()
            statuses, peak = trio.run(flood, daemon.pid, port, path, connections, body_bytes, context)
            flood_s = time.monotonic() - started
            time.sleep(2.0)
            after_2s = rss_mb(daemon.pid)
            time.sleep(max(after_s - 2.0, 0.0))
            after = rss_mb(daemon.pid)
            healthy = httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=5).status_code
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        return {"case": case, "rss_before_mb": round(before, 1), "rss_peak_mb": round(peak, 1),
                "rss_after_2s_mb": round(after_2s, 1), f"rss_after_{after_s:g}s_mb": round(after, 1),
                "growth_after_2s_mb": round(after_2s - before, 1), "flood_s": round(flood_s, 2),
                "statuses": dict(statuses), "healthz_after": healthy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_flood", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--body-bytes", type=int, default=1 << 20)
    parser.add_argument("--after-s", type=float, default=30.0)
    parser.add_argument("--case", action="append", choices=CASES)
    args = parser.parse_args(argv)
    results = [run_case(case, args.connections, args.body_bytes, args.after_s) for case in (args.case or CASES)]
    print(json.dumps({"connections": args.connections, "body_bytes": args.body_bytes, "cases": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
