"""Relayed key throughput and latency: a chain of qkdd daemons in network namespaces (tests/relay_lab.py,
simulated links with seeded key stores), keys requested at the first node for the last (--hops links
away) and for its neighbour (one hop), each for --seconds, by --workers concurrent consumers; every key
is fetched at the destination and compared. Each node's key store is on a tmpfs of its own by default
(--store-fs-mib 0: the working directory's disk). Needs root.

    python -m bench.relay --hops 5 --seconds 20
    -> one JSON line: relayed bits/s, requests, p50/p99 request latency at --hops and at one hop, and
       their throughput ratio (target: >= 0.5 at 5 hops)
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import threading
import time
from pathlib import Path



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time of each of the two runs")
    parser.add_argument("--bits", type=int, default=256, help="bits per requested key (a multiple of 8)")
    parser.add_argument("--workers", type=int, default=256,
                        help="concurrent consumers (enough to keep a 5-hop route's pipeline full)")
    parser.add_argument("--store-fs-mib", type=int, default=256,
                        help="each node's key store on a tmpfs of this size, as the chaos lab's (0: on the "
                             "working directory's disk, whose flushes this shared machine's other users share)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, stores)")
    args = parser.parse_args(argv)
    if not 1 <= args.hops <= 16 or args.seconds <= 0 or args.bits <= 0 or args.bits % 8 or args.workers < 1:
        parser.error("--hops in [1, 16], --seconds > 0, --bits a positive multiple of 8, --workers >= 1")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.chaos_net import missing_requirements
    from tests.relay_lab import RelayLab
    problem = missing_requirements()
    if problem is not None:
        print(f"bench.relay: {problem}", file=sys.stderr)
        return 2
    nodes = [f"N{i}" for i in range(args.hops + 1)]
    links = list(zip(nodes, nodes[1:]))
    # enough seeded key for both runs at a generous rate (each request takes one stored key per hop)
    keys_per_link = max(8000, int((args.seconds + 2) * 1000 * 2 * max(1, args.bits // 256)))
    workdir = Path(tempfile.mkdtemp(prefix="qkdd-bench-relay-"))
    with RelayLab(workdir, nodes, links, seeded_keys=keys_per_link, announce_interval_s=5.0,
                  store_fs_bytes=args.store_fs_mib << 20 if args.store_fs_mib else 0) as lab:
        lab.wait_route(nodes[0], nodes[-1], lambda r: r["hops"] == args.hops, timeout_s=120)
        run(lab, nodes[0], nodes[1], args.bits, args.workers, 2.0)           # warm-up (connections, caches)
        before, latency_0 = cpu_s(lab), source_latency(lab, nodes[0])
        one = run(lab, nodes[0], nodes[1], args.bits, args.workers, args.seconds)
        middle, latency_1 = cpu_s(lab), source_latency(lab, nodes[0])
        many = run(lab, nodes[0], nodes[-1], args.bits, args.workers, args.seconds)
        after, latency_2 = cpu_s(lab), source_latency(lab, nodes[0])
    one["source_mean_ms"] = _mean_ms(latency_0, latency_1)
    many["source_mean_ms"] = _mean_ms(latency_1, latency_2)
    one["cpu_s"] = {node: round(middle[node] - before[node], 2) for node in nodes}
    many["cpu_s"] = {node: round(after[node] - middle[node], 2) for node in nodes}
    if not args.keep:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"hops": args.hops, "bits_per_key": args.bits, "workers": args.workers, "seconds": args.seconds,
              f"relayed_{args.hops}hop_bits_per_s": many["bits_per_s"], f"{args.hops}hop_requests": many["ok"],
              f"{args.hops}hop_failed": many["failed"], f"{args.hops}hop_p50_ms": many["p50_ms"],
              f"{args.hops}hop_p99_ms": many["p99_ms"],
              "relayed_1hop_bits_per_s": one["bits_per_s"], "1hop_requests": one["ok"], "1hop_failed": one["failed"],
              "1hop_p50_ms": one["p50_ms"], "1hop_p99_ms": one["p99_ms"],
              f"{args.hops}hop_source_mean_ms": many["source_mean_ms"], "1hop_source_mean_ms": one["source_mean_ms"],
              f"{args.hops}hop_client_cpu_s": many["client_cpu_s"], "1hop_client_cpu_s": one["client_cpu_s"],
              f"{args.hops}hop_daemon_cpu_s": many["cpu_s"], "1hop_daemon_cpu_s": one["cpu_s"],
              "mismatched_keys": one["mismatched"] + many["mismatched"],
              f"throughput_ratio_{args.hops}hop_to_1hop": round(many["bits_per_s"] / one["bits_per_s"], 3)
              if one["bits_per_s"] else None}
    print(json.dumps(result), flush=True)
    return 0 if result["mismatched_keys"] == 0 else 1


def source_latency(lab, node: str) -> tuple[float, float]:
    """(sum of seconds, count) of qkd_relay_latency_seconds at `node`: the relay's own time per request."""
    total = count = 0.0
    for line in lab.metrics(node).splitlines():
        if line.startswith("qkd_relay_latency_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("qkd_relay_latency_seconds_count"):
            count = float(line.split()[-1])
    return total, count


def _mean_ms(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    count = after[1] - before[1]
    return round((after[0] - before[0]) / count * 1000, 2) if count else None


def cpu_s(lab) -> dict[str, float]:
    """CPU seconds (user + system) each node's daemon has used so far."""
    import os
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for node, daemon in lab.daemons.items():
        fields = Path(f"/proc/{daemon.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[node] = (int(fields[11]) + int(fields[12])) / tick
    return used


IDLE_S = 1.0           # a connection idle longer is replaced before use (servers close idle ones)


class _Http:
    """One keep-alive HTTP/1.1 connection (h11 over a trio socket) to a daemon's API on the loopback of
    namespace `netns`: the socket is made while this thread is in that namespace (tests.chaos_net.hop),
    with no checkpoint in between, so that every consumer task shares one thread and one event loop."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.stream = None
        self.conn = None
        self.used = 0.0

    async def _connect(self) -> None:
        import h11
        import trio
        from tests.chaos_net import hop
        hop(self.netns)
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", 8071))
        self.stream = trio.SocketStream(sock)
        self.conn = h11.Connection(h11.CLIENT)
        self.used = time.monotonic()

    async def call(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        import h11
        if self.conn is None or self.conn.our_state is not h11.IDLE or time.monotonic() - self.used > IDLE_S:
            await self.close()              # the server may have closed an idle connection meanwhile
            await self._connect()
        headers = [("Host", "127.0.0.1")]
        if body:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        data = self.conn.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status, chunks = 0, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        self.used = time.monotonic()
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return status, b"".join(chunks)

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None


def run(lab, src: str, dst: str, bits: int, workers: int, seconds: float) -> dict:
    """`workers` consumers request keys at `src` for `dst` and fetch each at `dst` for `seconds`; the
    consumers are trio tasks of one thread (a cheap client, so that it measures the daemons)."""
    import resource

    import h11
    import trio
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0, "mismatched": 0}
    request = json.dumps({"dst": dst, "bits": bits}).encode()
    timing = {}

    async def consumer(requester: _Http, fetcher: _Http, deadline: float) -> None:
        while trio.current_time() < deadline:
            try:
                await one_key(requester, fetcher)
            except (OSError, trio.BrokenResourceError, ValueError, KeyError, h11.ProtocolError) as exc:
                counts["failed"] += 1
                counts.setdefault("errors", {}).setdefault(type(exc).__name__, 0)
                counts["errors"][type(exc).__name__] += 1
                await requester.close()
                await fetcher.close()

    async def one_key(requester: _Http, fetcher: _Http) -> None:
        started = trio.current_time()
        status, text = await requester.call("POST", "/v1/relay/keys/request", request)
        elapsed = trio.current_time() - started
        if status != 200:
            counts["failed"] += 1
            counts.setdefault("refused", {}).setdefault(status, 0)
            counts["refused"][status] += 1
            return
        body = json.loads(text)
        status, text = await fetcher.call("GET", f"/v1/keys/{body['key_id']}")
        same = status == 200 and json.loads(text)["key"] == body["key"]
        same = same and len(base64.b64decode(body["key"])) * 8 == bits
        latencies.append(elapsed)
        counts["ok" if same else "mismatched"] += 1

    async def main() -> None:
        pairs = [(_Http(lab.netns[src]), _Http(lab.netns[dst])) for _ in range(workers)]
        for requester, fetcher in pairs:         # every connection before the clock starts
            await requester._connect()
            await fetcher._connect()
        timing["cpu"] = resource.getrusage(resource.RUSAGE_SELF)
        timing["started"] = time.monotonic()
        deadline = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            for requester, fetcher in pairs:
                nursery.start_soon(consumer, requester, fetcher, deadline)
        timing["elapsed"] = time.monotonic() - timing["started"]
        for requester, fetcher in pairs:
            await requester.close()
            await fetcher.close()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)     # two sockets per consumer
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * workers + 256)), hard))
    thread = threading.Thread(target=trio.run, args=(main,))   # its own thread: it enters the namespaces
    thread.start()
    thread.join()
    now, before = resource.getrusage(resource.RUSAGE_SELF), timing["cpu"]
    counts["client_cpu_s"] = round(now.ru_utime + now.ru_stime - before.ru_utime - before.ru_stime, 2)
    latencies.sort()

    def quantile(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) if latencies else None
    return {**counts, "bits_per_s": round(counts["ok"] * bits / timing["elapsed"], 1), "p50_ms": quantile(0.5),
            "p99_ms": quantile(0.99)}


if __name__ == "__main__":
    sys.exit(main())
