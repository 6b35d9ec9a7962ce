"""The key store's schedule (qkdd.keystore.housekeeping) on a real SQLite file: expired keys lose their
material and old tombstones go, on the interval, while the daemon runs."""
import logging
import os
import time
import uuid

import trio

from qkdd.keystore import KeyState, KeyStore
from qkdd.keystore.housekeeping import run_housekeeping
from qkdd.keystore.resync import TOMBSTONE_GRACE_S

LINK = "link-ab"


def test_housekeeping_expires_keys_and_purges_old_tombstones_on_its_schedule(tmp_path, caplog, monkeypatch):
    """On trio's MockClock, with the store's clock following it: a pass at start, then one every
    HOUSEKEEPING_INTERVAL_S (the daemon's own 300 s), each doing exactly what is due by its time."""
    from trio.testing import MockClock

    from qkdd.keystore import housekeeping

    caplog.set_level(logging.INFO, logger="qkdd.keystore")
    clock = MockClock(autojump_threshold=0)
    wall_s = time.time()
    store = KeyStore(str(tmp_path / "keys.db"), bytes(32), clock=lambda: wall_s + clock.current_time())
    interval_s = housekeeping.HOUSEKEEPING_INTERVAL_S
    ids = [str(uuid.uuid4()) for _ in range(5)]
    store.put_pending(LINK, 1, [(ids[0], os.urandom(32))], expires_at=wall_s - TOMBSTONE_GRACE_S - 60)
    store.put_pending(LINK, 2, [(ids[1], os.urandom(32))], expires_at=wall_s + 1.5 * interval_s)
    store.put_pending(LINK, 3, [(ids[2], os.urandom(32)), (ids[3], os.urandom(32))], expires_at=wall_s + 4e5)
    store.put_pending(LINK, 4, [(ids[4], os.urandom(32))], expires_at=wall_s + 4e5)
    for frame in (1, 2, 3, 4):
        store.commit_frame(LINK, frame)
    store.deliver(LINK, ids[3])
    store.deliver(LINK, ids[4])
    # a tombstone whose key expired almost its grace ago, as after a long run (aged on disk)
    store._db.execute("UPDATE keys SET expires_at = ? WHERE key_id = ?",
                      (wall_s - TOMBSTONE_GRACE_S + 2.5 * interval_s, ids[4]))
    sweep = housekeeping.sweep

    async def main():
        done_in, done = trio.open_memory_channel(10)

        def noted_sweep(store_):          # in the worker thread: the pass, then its (mock time, result)
            expired, purged = sweep(store_)
            trio.from_thread.run_sync(lambda: done_in.send_nowait((trio.current_time(), expired, purged)))
            return expired, purged

        monkeypatch.setattr(housekeeping, "sweep", noted_sweep)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_housekeeping, store)
            passes = [await done.receive() for _ in range(4)]       # no other deadline: time stands still
            nursery.cancel_scope.cancel()                           # while a pass runs in its thread
        return passes

    passes = trio.run(main, clock=clock)
    assert passes == [(0.0, 1, 1),                   # the long-expired key, through EXPIRED to gone
                      (interval_s, 0, 0),            # nothing due
                      (2 * interval_s, 1, 0),        # the key that expired meanwhile: a tombstone (resync needs it)
                      (3 * interval_s, 0, 1)]        # the delivered key's tombstone, past its grace
    assert store.inventory(LINK) == {ids[1]: KeyState.EXPIRED, ids[2]: KeyState.AVAILABLE,
                                     ids[3]: KeyState.DELIVERED}
    assert any(getattr(r, "tombstones_purged", 0) == 1 for r in caplog.records)
    store.close()


def test_the_daemon_runs_housekeeping_on_its_key_store(tmp_path):
    """`qkdd run` as a real process: at start it erases the expired key and deletes the old tombstone."""
    from daemon_support import Daemon, base_config
    from qkdd.link.service import open_keystore

    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    store = open_keystore(str(state_dir))
    now = time.time()
    stale, live = str(uuid.uuid4()), str(uuid.uuid4())
    store.put_pending("sim-1", 1, [(stale, os.urandom(32))], expires_at=now - 60)
    store.put_pending("sim-1", 2, [(live, os.urandom(32))], expires_at=now + 3600)
    old_tombstone = str(uuid.uuid4())
    store.put_pending("sim-1", 3, [(old_tombstone, os.urandom(32))], expires_at=now + 3600)
    for frame in (1, 2, 3):
        store.commit_frame("sim-1", frame)
    store.deliver("sim-1", old_tombstone)
    # the delivered key's expiry lies more than the grace in the past, as after a long run (aged on disk)
    store._db.execute("UPDATE keys SET expires_at = ? WHERE key_id = ?", (now - TOMBSTONE_GRACE_S - 60, old_tombstone))
    store.close()
    daemon = Daemon(base_config(state_dir), tmp_path).start()
    try:
        line = daemon.wait_for("key store housekeeping")
        assert "expired=1" in line and "tombstones_purged=1" in line, line
    finally:
        assert daemon.stop() == 0
    store = open_keystore(str(state_dir))
    assert store.inventory("sim-1") == {stale: KeyState.EXPIRED, live: KeyState.AVAILABLE}
    store.close()


def test_expire_and_purge_search_the_expiry_index_also_in_a_file_made_without_it(tmp_path):
    """The statements expire() and purge_tombstones() really run (as SQLite traces them) use the expiry
    index, in a store file written before the index existed; the allocation queries keep their own."""
    import sqlite3

    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32))
    now = time.time()
    for frame in range(20):
        store.put_pending(LINK, frame, [(str(uuid.uuid4()), os.urandom(32)) for _ in range(50)],
                          expires_at=now + (frame - 10) * 600 + 300)
        store.commit_frame(LINK, frame)
    store.close()
    with sqlite3.connect(path) as old:
        old.execute("DROP INDEX IF EXISTS keys_by_expires_at")
        old.execute("DROP INDEX IF EXISTS keys_material_by_expiry")
    store = KeyStore(path, bytes(32))
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    assert store.expire() == 500
    assert store.purge_tombstones() == 4 * 50            # expired more than an hour ago: frames 0..3
    store._db.set_trace_callback(None)
    # (SQLite traces a statement again for each row its triggers run on: the distinct ones count)
    housekeeping = sorted({s for s in statements if "expires_at" in s})
    assert len(housekeeping) == 2, housekeeping
    for statement in housekeeping:
        plan = " | ".join(row[3] for row in store._db.execute("EXPLAIN QUERY PLAN " + statement))
        # expire() looks among the keys that hold material, purge_tombstones() among all
        index = "keys_material_by_expiry" if statement.startswith("SELECT") else "keys_by_expires_at"
        assert f"USING INDEX {index} (expires_at<?)" in plan, (statement, plan)
    # the new index does not draw the allocation queries away from theirs (they would need a sort)
    for allocate in (lambda: store.reserve_available(LINK, 1, "holder"), lambda: store.take_bits(LINK, 256)):
        statements.clear()
        store._db.set_trace_callback(statements.append)
        allocate()
        store._db.set_trace_callback(None)
        [allocation] = [s for s in statements if "expires_at" in s]
        plan = " | ".join(row[3] for row in store._db.execute("EXPLAIN QUERY PLAN " + allocation))
        assert "keys_allocatable" in plan and "TEMP B-TREE" not in plan, plan
    store.close()
