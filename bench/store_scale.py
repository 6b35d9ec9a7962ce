"""Key-store cost per operation against the number of keys it holds (real SQLite file, WAL, synchronous=FULL).

    python -m bench.store_scale --keys 1e4 --keys 1e6 [--keys 1e7] [--dir /var/tmp]

For each --keys N: a fresh store is filled with N keys of one link (frames of 1000 256-bit keys, ids as
the link derives them, half of them this end's share, 1 % already past their expiry), then each operation
the daemon performs is timed as it runs there (with fewer than 500 frames, 5 frames expire instead of 1 %,
so that the sweeps still have a median). Prints one JSON line per N; every *_ms field is the median
wall time of one call (of --reps), the figure that must not grow with N:

    store_frame_ms      put_pending + commit_frame of one 1000-key frame (what the link engine does per frame)
    reserve_ms          reserve_available of 10 keys (ETSI 014 enc_keys, /v1 reservations)
    deliver_ms          deliver of one reserved key by id (dec_keys, a consumer's fetch)
    take_bits_ms        take_bits of 8 keys' bits (a consumer's pool refill)
    reserve_ids_ms      reserve_ids of 10 keys named by the peer
    counts_ms           counts() (the /v1 metrics' `counts`)
    available_bits_ms   available_bits() (ETSI 014 Get status)
    fill_ms             fill() (the capacity check before each frame)
    expire_1000_ms      expire() sweeping 1000 keys past their expiry (housekeeping; the same work at any N)
    purge_1000_ms       purge_tombstones() deleting 1000 tombstones

and, not per request but per stored key (an inventory is O(N) by nature): inventory_us_per_key (the
store's inventory read) and plan_us_per_key (plan_resync of two equal inventories), next to
summary_us_per_key (the frame summaries a resynchronisation reads instead, then lists key by key only the
frames they leave open: none between two equal stores), with fill_s the time to build the store. And
resync_unchanged_ms: this end's whole store work in the resynchronisation of a restart, when both ends
remember each other as they are (only the frames changed since are summarised: resync_unchanged_frames). Key material
is random; nothing of it is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from qkdd.keystore import KeyStore
from qkdd.keystore.resync import (STORE_ID_BYTES, TOMBSTONE_GRACE_S, ResyncPoint, frames_to_list, plan_resync,
                                  resync_scope)
from qkdd.link.linkmsg import KEY_ID_SEED_BYTES, derive_key_ids

LINK = "a-b"
FRAME_KEYS = 1000
KEY_BYTES = 32
EXPIRY_S = 3600.0
FILL_GROUP = 20
MIN_SWEEPS = 5


class Clock:
    """The store's clock, moved by the benchmark (expiry without waiting)."""

    def __init__(self) -> None:
        self.now = 1.0e9

    def __call__(self) -> float:
        return self.now


def _frame(frame_id: int) -> list[tuple[str, bytes]]:
    frame_id += 1_796_000_000_000_000         # a frame id as the simulated device numbers them (microseconds)
    ids = derive_key_ids(os.urandom(KEY_ID_SEED_BYTES), FRAME_KEYS, frame_id)   # as the link derives them
    material = os.urandom(KEY_BYTES * FRAME_KEYS)
    return [(key_id, material[i * KEY_BYTES:(i + 1) * KEY_BYTES]) for i, key_id in enumerate(ids)]


def _put(store: KeyStore, frame_id: int, expires_at: float) -> list[str]:
    keys = _frame(frame_id)
    store.put_pending(LINK, frame_id, keys, expires_at=expires_at, allocatable=[i % 2 == 0 for i in range(len(keys))])
    store.commit_frame(LINK, frame_id)
    return [key_id for key_id, _ in keys]


def _median_ms(fn, reps: int, calls: int = 1) -> float:
    """Median over `reps` of the wall time of one call, each rep timing `calls` calls (reads that take
    microseconds are timed in hundreds, so that the clock's resolution and one preemption do not decide)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return round(statistics.median(times) * 1e3, 4)


def measure(directory: str, keys: int, reps: int) -> dict:
    clock = Clock()
    path = os.path.join(directory, f"scale-{keys}.db")
    store = KeyStore(path, os.urandom(32), clock=clock)
    frames = max(1, keys // FRAME_KEYS)
    # 1 % of the keys (frames 50, 150, ...) expire one frame per second from expire_from on, the rest later
    expire_from = clock.now + 10 * EXPIRY_S
    expiring = [frame_id for frame_id in range(frames) if frame_id % 100 == 50]
    if len(expiring) < MIN_SWEEPS:            # a small store: still several sweeps to take the median of
        expiring = list(range(0, frames, max(1, frames // MIN_SWEEPS)))[:MIN_SWEEPS]
    started = time.perf_counter()
    peer_share: list[str] = []
    for first in range(0, frames, FILL_GROUP):
        with store.batch():                   # the fill only: FILL_GROUP frames per transaction
            for frame_id in range(first, min(first + FILL_GROUP, frames)):
                expires_at = (expire_from + expiring.index(frame_id) if frame_id in expiring
                              else expire_from + 100 * EXPIRY_S)
                ids = _put(store, frame_id, expires_at)
                if frame_id == 0:
                    peer_share = ids[1::2]
                clock.now += 0.001
    fill_s = time.perf_counter() - started
    result = {"keys": keys, "fill_s": round(fill_s, 1)}

    next_frame = [frames]

    def store_frame():
        _put(store, next_frame[0], expire_from + 100 * EXPIRY_S)
        next_frame[0] += 1

    result["store_frame_ms"] = _median_ms(store_frame, reps)
    reserved: list[str] = []
    result["reserve_ms"] = _median_ms(lambda: reserved.extend(store.reserve_available(LINK, 10, "bench")), reps)
    result["deliver_ms"] = _median_ms(lambda: store.deliver(LINK, reserved.pop(), holder="bench"), reps)
    result["take_bits_ms"] = _median_ms(lambda: store.take_bits(LINK, 8 * KEY_BYTES * 8), reps)
    named = iter(range(0, len(peer_share), 10))
    result["reserve_ids_ms"] = _median_ms(
        lambda: store.reserve_ids(LINK, peer_share[(i := next(named)):i + 10], "peer", peer_share_only=True), reps)
    result["counts_ms"] = _median_ms(lambda: store.counts(LINK), reps, calls=200)
    result["available_bits_ms"] = _median_ms(lambda: store.available_bits(LINK), reps, calls=200)
    result["fill_ms"] = _median_ms(lambda: store.fill(LINK), reps, calls=200)

    started = time.perf_counter()
    inventory = store.inventory(LINK)
    result["inventory_us_per_key"] = round((time.perf_counter() - started) * 1e6 / len(inventory), 3)
    started = time.perf_counter()
    plan = plan_resync(inventory, dict(inventory))
    result["plan_us_per_key"] = round((time.perf_counter() - started) * 1e6 / len(inventory), 3)
    assert not (plan.promote or plan.discard or plan.expire)
    started = time.perf_counter()
    summaries = store.frame_summaries(LINK)
    result["summary_us_per_key"] = round((time.perf_counter() - started) * 1e6 / len(inventory), 3)
    assert frames_to_list(summaries, dict(summaries)) == [f for f, s in summaries.items() if s.pending]

    # A resynchronisation between stores that each remember the other as it is (a restart): this end's part,
    # as qkdd.link.inventory does it, with the peer's point made to match. A first one, over every frame,
    # sets the points.
    peer_id = os.urandom(STORE_ID_BYTES)
    store.apply_resync(LINK, [], [], [], peer=ResyncPoint(peer_id, 0, bytes(STORE_ID_BYTES), 0), scope=None)
    scopes = []

    def unchanged_resync():
        point = store.resync_point(LINK)
        peer = ResyncPoint(peer_id, point.peer_generation, point.store_id, point.generation)
        scope = resync_scope(point, peer)
        scopes.append(len(scope))
        summaries = store.frame_summaries(LINK, scope)
        local = store.inventory(LINK, frames_to_list(summaries, dict(summaries)))
        plan = plan_resync(local, dict(local))
        store.apply_resync(LINK, plan.promote, plan.discard, plan.expire, peer=peer, scope=scope)
    result["resync_unchanged_ms"] = _median_ms(unchanged_resync, reps)
    result["resync_unchanged_frames"] = max(scopes)

    # Housekeeping: the 1 % pass their expiry one frame (1000 keys) per sweep, as a daemon sweeping every
    # few seconds finds only what expired since the last sweep.
    sweeps = []
    for index in range(len(expiring)):
        clock.now = expire_from + index + 0.5
        start = time.perf_counter()
        expired = store.expire()
        sweeps.append((time.perf_counter() - start, expired))
    per_sweep = [t for t, n in sweeps if n]
    result["expire_1000_ms"] = round(statistics.median(per_sweep) * 1e3, 3) if per_sweep else None
    # Tombstones go one hour past their key's expiry: one frame's worth per purge, like the sweeps above.
    purges = []
    for index in range(len(expiring)):
        clock.now = expire_from + index + 0.5 + TOMBSTONE_GRACE_S
        start = time.perf_counter()
        purged = store.purge_tombstones()
        if purged:
            purges.append((time.perf_counter() - start) * 1000 / purged)
    result["purge_1000_ms"] = round(statistics.median(purges) * 1e3, 3) if purges else None
    store.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=float, action="append", help="stored keys (repeatable; default 1e4 and 1e6)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--dir", default=None, help="directory for the store files (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        for keys in args.keys or [1e4, 1e6]:
            print(json.dumps(measure(directory, int(keys), args.reps)), flush=True)


if __name__ == "__main__":
    main()
