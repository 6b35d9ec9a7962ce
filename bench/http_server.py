"""HTTP server throughput and latency: plain and TLS (client certificates required), with and without idle
connections held open.

    python -m bench.http_server [--requests 2000] [--clients 4] [--idle 0,500]

The server runs in a child process (one trio thread, as in the daemon); clients are threads here with
keep-alive httpx clients. Prints one JSON object per configuration: requests_per_s over all clients,
p50/p99 latency of keep-alive requests, and p50 of requests that each open a new connection
(TCP + TLS handshake). Client-side Python overhead is part of every figure: compare configurations
from one run, not across machines.
"""
from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx

SERVER_CODE = """
import sys, trio
from qkdd.http import HTTPLimits, HTTPServer, Response, Router, TLSSettings

async def hello(request):
    return Response.json({"hello": "world"})

async def main():
    router = Router()
    router.get("/hello", hello)
    tls = TLSSettings(sys.argv[1], sys.argv[2], sys.argv[3], "required") if len(sys.argv) > 1 else None
    server = HTTPServer("bench", "127.0.0.1", 0, router, tls=tls, limits=HTTPLimits(max_connections=4096))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.run)
        print(port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)   # until the parent closes stdin
        server.shutdown()

trio.run(main)
"""


def percentile_ms(samples_s: list[float], fraction: float) -> float:
    ordered = sorted(samples_s)
    return round(1000.0 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)


def _client_context(pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert_file))
    sae = pki.saes["sae-bench"]
    context.load_cert_chain(str(sae.cert_file), str(sae.key_file))
    return context


def run_configuration(pki, use_tls: bool, idle_count: int, requests: int, clients: int) -> dict:
    args = [sys.executable, "-c", SERVER_CODE]
    if use_tls:
        kme = pki.kmes["kme-bench"]
        args += [str(kme.cert_file), str(kme.key_file), str(pki.ca_cert_file)]
    server = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    idle: list[socket.socket] = []
    try:
        port = int(server.stdout.readline())
        scheme = "https" if use_tls else "http"
        url = f"{scheme}://127.0.0.1:{port}/hello"
        verify = _client_context(pki) if use_tls else False
        for _ in range(idle_count):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        latencies_s: list[float] = []
        lock = threading.Lock()

        def client_thread(count: int) -> None:
            own: list[float] = []
            with httpx.Client(verify=verify) as client:
                client.get(url)                      # connect (and handshake) outside the timing
                for _ in range(count):
                    started = time.perf_counter()
                    response = client.get(url)
                    own.append(time.perf_counter() - started)
                    assert response.status_code == 200
            with lock:
                latencies_s.extend(own)

        threads = [threading.Thread(target=client_thread, args=(requests // clients,)) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed_s = time.perf_counter() - started

        connect_s = []
        for _ in range(50):
            begin = time.perf_counter()
            with httpx.Client(verify=verify) as client:
                assert client.get(url).status_code == 200
            connect_s.append(time.perf_counter() - begin)
        return {"bench": "http_server", "tls": use_tls, "idle_connections": idle_count, "clients": clients,
                "requests": len(latencies_s), "requests_per_s": round(len(latencies_s) / elapsed_s, 1),
                "p50_ms": percentile_ms(latencies_s, 0.5), "p99_ms": percentile_ms(latencies_s, 0.99),
                "new_connection_p50_ms": round(1000.0 * statistics.median(connect_s), 3)}
    finally:
        for sock in idle:
            sock.close()
        server.stdin.close()
        server.wait(timeout=30)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--idle", default="0,500", help="comma-separated idle connection counts")
    args = parser.parse_args(argv)
    from qkdd.pki import init_pki
    with tempfile.TemporaryDirectory() as directory:
        pki = init_pki(directory, ["kme-bench"], ["sae-bench"])
        for use_tls in (False, True):
            for idle_count in (int(value) for value in args.idle.split(",")):
                print(json.dumps(run_configuration(pki, use_tls, idle_count, args.requests, args.clients)),
                      flush=True)


if __name__ == "__main__":
    main()
