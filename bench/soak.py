"""Memory and disk of a live link over hours: two daemons on the chaos lab's simulated link (network
namespaces, consumers taking keys over /v1 and ETSI 014 at both ends all along), each with a key-store
capacity small enough to be reached, sampled every --sample-s: resident memory of each daemon (and its
anonymous / file-backed split from /proc/PID/smaps_rollup), SQLite's heap in it (qkd_sqlite_memory_bytes
on its /metrics), the size of each key store's files, keys handed out. One JSON line per sample, then a
summary line: memory at the start, its peak, and the slopes over the second half of the run of RSS, of
SQLite's heap and of RSS less SQLite's heap (a bounded daemon's are about zero), and whether any key was
served twice or lost.

    python -m bench.soak --minutes 60 [--sample-s 30] [--max-key-bits 8000000] [--cache-mib 64]     (root)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return None


def smaps_mb(pid: int) -> dict[str, float] | None:
    """Anonymous and file-backed (Rss less Anonymous) resident memory from /proc/PID/smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup if line.endswith("kB\n")}
    except OSError:
        return None
    return {"anon": fields["Anonymous"] / 1024, "file": (fields["Rss"] - fields["Anonymous"]) / 1024}


def scrape(text: str) -> dict[str, float]:
    """The soak's figures from a /metrics exposition: SQLite's heap, the store's data and held key bytes."""
    wanted = {"qkd_sqlite_memory_bytes": "sqlite", "qkd_keystore_bytes": "keystore_data",
              "qkd_keystore_key_bytes": "key_material"}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in wanted:
            found[wanted[name]] = found.get(wanted[name], 0.0) + float(line.rsplit(" ", 1)[1]) / (1 << 20)
    return found


def metrics_mb(lab, end: str) -> dict[str, float]:
    """scrape() of `end`'s /metrics on its health port, inside its network namespace ({} without an answer)."""
    import httpx
    from tests.chaos_lab import HEALTH_PORT, in_thread
    from tests.chaos_net import hop

    def get() -> dict[str, float]:
        hop(lab.side(end).netns)
        try:
            return scrape(httpx.get(f"http://127.0.0.1:{HEALTH_PORT}/metrics", timeout=5).text)
        except httpx.HTTPError:
            return {}
    return in_thread(get)


def store_mb(state_dir: Path) -> float:
    return sum(path.stat().st_size for path in state_dir.glob("keys.sqlite3*")) / 1e6


def slope_per_hour(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) pairs, per hour."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in samples)
    if var_t == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in samples) / var_t * 3600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--max-key-bits", type=int, default=8_000_000,
                        help="[keystore] max_key_bits at both ends (the seeded keys hold 7.68 Mbit)")
    parser.add_argument("--cache-mib", type=int, default=None,
                        help="[keystore] cache_mib at both ends (SQLite's page cache; the daemon's default if absent)")
    parser.add_argument("--clock-hz", type=float, default=2e7)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.sample_s <= 0:
        parser.error("--minutes and --sample-s must be positive")
    sys.path.insert(0, os.getcwd())
    from tests.chaos_lab import ENDS, Lab
    from tests.chaos_load import mismatched, served_twice
    from tests.chaos_net import missing_requirements

    missing = missing_requirements()
    if missing:
        print(json.dumps({"error": missing}), flush=True)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="qkdd-soak-"))
    extra = f"\n[keystore]\nmax_key_bits = {args.max_key_bits}\n"
    if args.cache_mib is not None:
        extra += f"cache_mib = {args.cache_mib}\n"
    memory: dict[str, list[tuple[float, float]]] = {end: [] for end in ENDS}
    sqlite: dict[str, list[tuple[float, float]]] = {end: [] for end in ENDS}
    rest: dict[str, list[tuple[float, float]]] = {end: [] for end in ENDS}
    stores: dict[str, list[float]] = {end: [] for end in ENDS}
    with Lab(workdir, clock_hz=args.clock_hz, extra_config=extra) as lab:
        lab.wait_for_session()
        lab.driver.start()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < args.minutes * 60:
            sample = {"t_s": round(elapsed), "handed_out": lab.book.handed_out()}
            for end in ENDS:
                pid = lab.daemons[end].process.pid
                rss = rss_mb(pid) if lab.alive(end) else None
                split = smaps_mb(pid) if rss is not None else None
                scraped = metrics_mb(lab, end) if rss is not None else {}
                size = store_mb(lab.store_path(end).parent)
                sample[f"rss_mb_{end}"] = None if rss is None else round(rss, 1)
                sample[f"anon_mb_{end}"] = None if split is None else round(split["anon"], 1)
                sample[f"rss_file_mb_{end}"] = None if split is None else round(split["file"], 1)
                for name, value in scraped.items():
                    sample[f"{name}_mib_{end}"] = round(value, 2)
                sample[f"store_mb_{end}"] = round(size, 1)
                if rss is not None:
                    memory[end].append((elapsed, rss))
                    if "sqlite" in scraped:
                        sqlite[end].append((elapsed, scraped["sqlite"]))
                        rest[end].append((elapsed, rss - scraped["sqlite"]))
                stores[end].append(size)
            print(json.dumps(sample), flush=True)
            time.sleep(args.sample_s)
        handouts = lab.book.snapshot()
        audit = lab.audit()
        alive = {end: lab.alive(end) for end in ENDS}
    summary: dict = {"minutes": args.minutes, "handed_out": len(handouts), "served_twice": len(served_twice(handouts)),
                     "mismatched": len(mismatched(handouts)), "lost": len(audit.lost), "alive": alive}
    for end in ENDS:
        series = memory[end]
        half = [(t, v) for t, v in series if t >= args.minutes * 30]
        summary[f"rss_mb_{end}"] = {
            "start": round(series[0][1], 1) if series else None,
            "peak": round(max(v for _, v in series), 1) if series else None,
            "end": round(series[-1][1], 1) if series else None,
            "second_half_slope_mb_per_h": None if (s := slope_per_hour(half)) is None else round(s, 1)}
        for name, series_of in (("sqlite_mib", sqlite), ("rss_less_sqlite_mb", rest)):
            values = series_of[end]
            slope = slope_per_hour([(t, v) for t, v in values if t >= args.minutes * 30])
            summary[f"{name}_{end}"] = {
                "start": round(values[0][1], 1) if values else None,
                "end": round(values[-1][1], 1) if values else None,
                "second_half_slope_per_h": None if slope is None else round(slope, 1)}
        summary[f"store_mb_{end}"] = {"start": round(stores[end][0], 1), "peak": round(max(stores[end]), 1),
                                      "end": round(stores[end][-1], 1)}
    print(json.dumps(summary), flush=True)
    ok = all(alive.values()) and not summary["served_twice"] and not summary["lost"] and not summary["mismatched"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
