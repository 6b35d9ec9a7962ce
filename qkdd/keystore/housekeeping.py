"""The key store's schedule: erase keys past their expiry, then purge tombstones no end needs any more.

Runs in the daemon's root nursery for as long as the daemon does; the SQLite work runs in a worker
thread. The purge rule (a tombstone goes TOMBSTONE_GRACE_S after its key's expiry) is in resync.py.
"""
from __future__ import annotations

import logging
import sqlite3

import trio

from qkdd.keystore.model import KeyStoreError
from qkdd.keystore.store import KeyStore

log = logging.getLogger("qkdd.keystore")

HOUSEKEEPING_INTERVAL_S = 300.0


def sweep(store: KeyStore) -> tuple[int, int]:
    """One pass: (keys expired, tombstones purged); then the WAL is checkpointed and emptied, so no old page
    image of erased material stays in it (secure_delete zeroes the database file's own pages)."""
    counts = store.expire(), store.purge_tombstones()
    store.checkpoint()
    return counts


async def run_housekeeping(store: KeyStore, *, interval_s: float = HOUSEKEEPING_INTERVAL_S) -> None:
    """Sweep at start and then every `interval_s`; a failed pass is logged and tried again next time."""
    while True:
        try:
            expired, purged = await trio.to_thread.run_sync(sweep, store)
        except (KeyStoreError, sqlite3.Error) as exc:
            log.warning("key store housekeeping failed: %s", exc)
        else:
            if expired or purged:
                log.info("key store housekeeping", extra={"expired": expired, "tombstones_purged": purged})
        await trio.sleep(interval_s)
