"""Key-store CPU per stored key when the link stores a frame: put_pending, then commit_frame (real SQLite file, WAL).

    python -m bench.store_frame [--frames 6] [--keys 30000] [--audit both|on|off] [--dir /var/tmp]

Stores --frames frames of --keys 256-bit keys of one link into a fresh store, each call its own transaction
as qkdd.link.store_guard makes them (ids as the link derives them, every other key this end's share, one
expiry and error rate per frame), and times the CPU of the calling thread (time.thread_time: the store and
SQLite run there) in each call. With an audit trail attached as the daemon attaches one (`[audit] enabled`:
an AuditTrail signing a head with an ML-DSA-65 identity every 256 records), and without. The first frame is
a warm-up and is not counted. Prints one JSON line per variant:

    put_us_per_key      median over frames of put_pending's CPU / keys
    commit_us_per_key   median over frames of commit_frame's CPU / keys
    store_us_per_key    the sum of the two (one end's store work per key)
    put_wall_ms, commit_wall_ms   median wall time of one call (fsyncs included)

Run as a script (python bench/store_frame.py) it imports the `qkdd` on PYTHONPATH, so one copy of this file
measures two checkouts side by side. Key material is random; nothing of it is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from qkdd.keystore import KeyStore
from qkdd.link.linkmsg import KEY_ID_SEED_BYTES, derive_key_ids

LINK = "a-b"
KEY_BYTES = 32
EXPIRY_S = 3600.0
SIGN_EVERY = 256          # [audit] sign_every_records' default


def _frame(frame_id: int, count: int) -> list[tuple[str, bytes]]:
    frame_id += 1_796_000_000_000_000         # a frame id as the simulated device numbers them (microseconds)
    ids = derive_key_ids(os.urandom(KEY_ID_SEED_BYTES), count, frame_id)
    material = os.urandom(KEY_BYTES * count)
    return [(key_id, material[i * KEY_BYTES:(i + 1) * KEY_BYTES]) for i, key_id in enumerate(ids)]


def _trail(path: str):
    from qkdd.audit.trail import AuditTrail
    from qkdd.peer.identity import generate_identity
    return AuditTrail(path, signer=generate_identity().sign, sign_every_records=SIGN_EVERY)


def _timed(fn, *args, **kwargs) -> tuple[float, float]:
    """(thread CPU seconds, wall seconds) of one call."""
    cpu, wall = time.thread_time(), time.perf_counter()
    fn(*args, **kwargs)
    return time.thread_time() - cpu, time.perf_counter() - wall


def measure(directory: str, frames: int, count: int, audit: bool) -> dict:
    path = os.path.join(directory, f"frame-{int(audit)}.db")
    store = KeyStore(path, os.urandom(32))
    trail = _trail(os.path.join(directory, f"audit-{int(audit)}.log")) if audit else None
    store.audit = trail
    flags = [i % 2 == 0 for i in range(count)]
    put, commit = [], []
    for frame_id in range(frames + 1):
        keys = _frame(frame_id, count)
        expires_at = time.time() + EXPIRY_S
        put_t = _timed(store.put_pending, LINK, frame_id, keys, expires_at=expires_at, allocatable=flags, qber=0.02)
        commit_t = _timed(store.commit_frame, LINK, frame_id)
        if frame_id:                          # frame 0 warms up caches and the statement cache
            put.append(put_t)
            commit.append(commit_t)
    counts = store.counts(LINK)
    assert counts[next(iter(counts))] is not None
    store.close()
    if trail is not None:
        trail.close()
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    put_us = statistics.median(c for c, _ in put) * 1e6 / count
    commit_us = statistics.median(c for c, _ in commit) * 1e6 / count
    return {"audit": audit, "frames": frames, "keys_per_frame": count,
            "put_us_per_key": round(put_us, 3), "commit_us_per_key": round(commit_us, 3),
            "store_us_per_key": round(put_us + commit_us, 3),
            "put_wall_ms": round(statistics.median(w for _, w in put) * 1e3, 1),
            "commit_wall_ms": round(statistics.median(w for _, w in commit) * 1e3, 1),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6, help="frames timed (after one warm-up frame)")
    parser.add_argument("--keys", type=int, default=30_000, help="keys per frame (yuan2018 record rate: ~30 000)")
    parser.add_argument("--audit", choices=("both", "on", "off"), default="both")
    parser.add_argument("--dir", default=None, help="directory for the store files (default: a temporary one)")
    args = parser.parse_args(argv)
    variants = {"both": (False, True), "on": (True,), "off": (False,)}[args.audit]
    for audit in variants:
        with tempfile.TemporaryDirectory(dir=args.dir) as directory:
            print(json.dumps(measure(directory, args.frames, args.keys, audit)), flush=True)


if __name__ == "__main__":
    main()
