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
