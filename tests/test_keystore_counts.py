"""The key store's per-state counts (state_counts, kept by put_pending and triggers) against a scan of the keys,
through every method that changes a key, across a reopen, rebuilt in a file written before they existed and in
one whose writer counted inserts by trigger; and the queries behind counts() and available_bits() read no key rows
(their cost does not grow with the store)."""
import os
import sqlite3
import uuid

import pytest

from qkdd.keystore import KeyState, KeyStore, KeyUnavailable

LINK, OTHER = "link-ab", "link-ac"


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def _keys(n, nbytes=32):
    return [(str(uuid.uuid4()), os.urandom(nbytes)) for _ in range(n)]


def _scanned(store, link_id):
    """counts() and available_bits() computed the slow way, from the key rows."""
    db = store._db
    counts = dict.fromkeys(KeyState, 0)
    for state, n in db.execute("SELECT state, COUNT(*) FROM keys WHERE link_id = ? GROUP BY state", (link_id,)):
        counts[KeyState(state)] = n
    bits = {share: db.execute("SELECT COALESCE(SUM(bits), 0) FROM keys WHERE link_id = ? AND state = 'available' "
                              "AND expires_at > ?" + (" AND allocatable = 1" if share else ""),
                              (link_id, store._clock())).fetchone()[0] for share in (True, False)}
    return counts, bits


def _check(store):
    for link_id in (LINK, OTHER):
        counts, bits = _scanned(store, link_id)
        assert store.counts(link_id) == counts
        assert store.available_bits(link_id) == bits[True]
        assert store.available_bits(link_id, allocatable_only=False) == bits[False]


def test_counts_follow_every_change(tmp_path):
    clock = Clock()
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32), clock=clock)
    frames = {}
    for frame in range(6):
        keys = _keys(20, nbytes=32 if frame % 2 else 16)
        frames[frame] = [key_id for key_id, _ in keys]
        store.put_pending(LINK if frame < 5 else OTHER, frame, keys, expires_at=clock.now + 100 * (frame + 1),
                          allocatable=[i % 2 == 0 for i in range(20)])
        _check(store)
    for frame in (0, 1, 2, 3, 5):
        store.commit_frame(LINK if frame < 5 else OTHER, frame)
        _check(store)
    store.discard_frame(LINK, 4)
    _check(store)
    reserved = store.reserve_available(LINK, 3, "sae")
    store.release(LINK, reserved[:1])
    store.deliver(LINK, reserved[1], holder="sae")
    _check(store)
    store.take_bits(LINK, 300)
    store.reserve_ids(LINK, frames[1][1::2][:4], "peer", peer_share_only=True)
    _check(store)
    store.apply_resync(LINK, [], frames[2][:5], frames[3][:2])
    _check(store)
    keys = _keys(6)
    store.put_pending(LINK, 6, keys, expires_at=clock.now + 700, allocatable=[True, False] * 3)
    _check(store)
    store.apply_resync(LINK, [key_id for key_id, _ in keys[:4]], [], [])     # promoted: PENDING -> AVAILABLE
    _check(store)
    clock.now += 150                                   # frame 0 (expiry +100) lapses: not available any more
    _check(store)
    assert store.expire() > 0
    _check(store)
    clock.now += 10_000
    store.expire()
    assert store.purge_tombstones() > 0
    _check(store)
    with pytest.raises(KeyUnavailable):                # a refused call changes nothing
        store.reserve_available(LINK, 1000, "sae")
    _check(store)
    store.close()
    store = KeyStore(path, bytes(32), clock=clock)     # the counts are durable, not rebuilt in memory
    _check(store)
    store.close()


def test_counts_are_rebuilt_in_a_file_written_without_them(tmp_path):
    clock = Clock()
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32), clock=clock)
    store.put_pending(LINK, 0, _keys(30), expires_at=clock.now + 100)
    store.commit_frame(LINK, 0)
    store.put_pending(LINK, 1, _keys(7), expires_at=clock.now + 100)
    store.close()
    with sqlite3.connect(path) as old:                 # as an earlier version left the file
        for trigger in ("keys_count_delete", "keys_count_update"):
            old.execute(f"DROP TRIGGER {trigger}")
        old.execute("DROP TABLE state_counts")
        old.execute("DELETE FROM keys WHERE rowid IN (SELECT rowid FROM keys LIMIT 3)")
    store = KeyStore(path, bytes(32), clock=clock)
    _check(store)
    assert store.counts(LINK)[KeyState.AVAILABLE] + store.counts(LINK)[KeyState.PENDING] == 34
    store.close()


def test_an_earlier_versions_insert_trigger_is_dropped_and_every_insert_counted_once(tmp_path):
    """A version that counted inserts by trigger may have written the file (or open it again after a downgrade):
    opening drops that trigger, else every stored key would be counted twice."""
    clock = Clock()
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32), clock=clock)
    store.put_pending(LINK, 0, _keys(5), expires_at=clock.now + 100)
    store.close()
    with sqlite3.connect(path) as old:                 # the earlier version's trigger, and a frame it stored
        old.execute("""CREATE TRIGGER keys_count_insert AFTER INSERT ON keys BEGIN
            INSERT INTO state_counts VALUES (NEW.link_id, NEW.state, NEW.allocatable, 1, NEW.bits)
            ON CONFLICT (link_id, state, allocatable) DO UPDATE SET keys = keys + 1, bits = bits + excluded.bits;
        END""")
    store = KeyStore(path, bytes(32), clock=clock)
    store.put_pending(LINK, 1, _keys(7), expires_at=clock.now + 100, allocatable=[False] * 7)
    store.commit_frame(LINK, 1)
    _check(store)
    assert store.counts(LINK)[KeyState.AVAILABLE] == 7 and store.counts(LINK)[KeyState.PENDING] == 5
    assert store._db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name = 'keys_count_insert'"
                             ).fetchone() is None
    store.close()


def test_count_queries_read_no_key_rows(tmp_path):
    store = KeyStore(str(tmp_path / "keys.db"), bytes(32))
    store.put_pending(LINK, 0, _keys(10), expires_at=store._clock() + 100)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.counts(LINK)
    store.available_bits(LINK)
    store._db.set_trace_callback(None)
    for statement in set(statements):
        plan = " | ".join(row[3] for row in store._db.execute("EXPLAIN QUERY PLAN " + statement))
        # state_counts by its key, or the keys past their expiry through the partial expiry index: never a scan
        assert "SCAN" not in plan, (statement, plan)
        assert "state_counts" in statement or "keys_material_by_expiry" in plan, (statement, plan)
    store.close()
