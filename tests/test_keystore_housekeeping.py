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


def test_housekeeping_expires_keys_and_purges_old_tombstones_on_its_schedule(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="qkdd.keystore")
    store = KeyStore(str(tmp_path / "keys.db"), bytes(32))
    now = time.time()
    ids = [str(uuid.uuid4()) for _ in range(4)]
    store.put_pending(LINK, 1, [(ids[0], os.urandom(32))], expires_at=now - TOMBSTONE_GRACE_S - 60)
    store.put_pending(LINK, 2, [(ids[1], os.urandom(32))], expires_at=now + 0.3)   # expires while it runs
    store.put_pending(LINK, 3, [(ids[2], os.urandom(32)), (ids[3], os.urandom(32))], expires_at=now + 3600)
    for frame in (1, 2, 3):
        store.commit_frame(LINK, frame)
    store.deliver(LINK, ids[3])

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_housekeeping(store, interval_s=0.1))
            with trio.fail_after(5):
                while ids[0] in store.inventory(LINK) or store.state(LINK, ids[1]) is not KeyState.EXPIRED:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    trio.run(main)
    # the long-expired key went through EXPIRED to gone; the newly expired one is a tombstone (still
    # needed by resync); the live key and the young delivered tombstone are untouched
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
