"""The key store's per-state counts (state_counts, kept by put_pending and triggers) against a scan of the keys,
through every method that changes a key, across a reopen, rebuilt in a file written before they existed and in
one whose writer counted inserts by trigger; and the queries behind counts() and available_bits() read no key rows
(their cost does not grow with the store)."""
import json
import os
import sqlite3
import uuid

import pytest

from qkdd.audit.trail import AuditTrail
from qkdd.audit.verify import verify_file
from qkdd.keystore import KeyState, KeyStore, KeyUnavailable
from qkdd.peer.identity import generate_identity

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


def _counted_by_table(db, link_id):
    """state_counts as stored, against a scan of the keys (either through the store or a raw connection)."""
    stored = {(state, share): (n, bits) for state, share, n, bits in db.execute(
        "SELECT state, allocatable, keys, bits FROM state_counts WHERE link_id = ? AND keys != 0", (link_id,))}
    scanned = {(state, share): (n, bits) for state, share, n, bits in db.execute(
        "SELECT state, allocatable, COUNT(*), SUM(bits) FROM keys WHERE link_id = ? GROUP BY state, allocatable",
        (link_id,))}
    return stored, scanned


def test_a_frames_commit_is_counted_per_share_and_later_changes_by_the_trigger(tmp_path):
    """commit_frame counts its frame itself (the trigger stands aside inside its transaction only): with keys of
    two lengths and both shares, inside a batch with changes after it, and after one that rolled back."""
    clock = Clock()
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32), clock=clock)
    keys = _keys(9) + _keys(5, nbytes=16)
    store.put_pending(LINK, 0, keys, expires_at=clock.now + 100, allocatable=[i % 3 == 0 for i in range(14)])
    store.put_pending(LINK, 1, _keys(4), expires_at=clock.now + 100, allocatable=[True, False] * 2)
    with store.batch():
        assert store.commit_frame(LINK, 0) == 14
        assert store.commit_frame(LINK, 0) == 0              # done before: nothing changes
        store.reserve_available(LINK, 2, "sae")               # counted by the trigger, after the commit
        store.reserve_ids(LINK, [key_id for key_id, _ in keys[1:3]], "peer", peer_share_only=True)
    _check(store)
    stored, scanned = _counted_by_table(store._db, LINK)
    assert stored == scanned
    with pytest.raises(RuntimeError):
        with store.batch():
            store.commit_frame(LINK, 1)
            raise RuntimeError("the group fails: frame 1 stays pending")
    assert store.counts(LINK)[KeyState.PENDING] == 4
    store.release(LINK, [key_id for key_id, _ in keys[1:3]])
    _check(store)
    assert store._db.execute("SELECT COUNT(*) FROM meta WHERE name = 'counted_by_statement'").fetchone()[0] == 0
    assert store.commit_frame(LINK, 1) == 4
    _check(store)
    store.close()
    store = KeyStore(path, bytes(32), clock=clock)
    _check(store)
    store.close()


def test_a_commit_by_an_earlier_version_is_counted_by_the_trigger(tmp_path):
    """After a downgrade, a version that commits a frame with a plain UPDATE (the flag row never written) opens the
    file with this version's trigger in place (CREATE TRIGGER IF NOT EXISTS keeps it): every key still counted."""
    clock = Clock()
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32), clock=clock)
    store.put_pending(LINK, 0, _keys(12), expires_at=clock.now + 100, allocatable=[True, False, False] * 4)
    store.close()
    with sqlite3.connect(path) as old:
        old.execute("UPDATE keys SET state = 'available' WHERE link_id = ? AND frame_id = 0 AND state = 'pending' "
                    "RETURNING key_id, bits", (LINK,)).fetchall()
        stored, scanned = _counted_by_table(old, LINK)
        assert stored == scanned and scanned[("available", 0)] == (8, 8 * 256)
    old.close()


def test_an_earlier_versions_update_trigger_is_replaced_and_the_counts_checked(tmp_path):
    """A file whose update trigger counts every change (as an earlier version wrote it) opens with this version's,
    so commit_frame does not count its frame twice; counts a version without triggers left wrong are rebuilt."""
    clock = Clock()
    path = str(tmp_path / "keys.db")
    store = KeyStore(path, bytes(32), clock=clock)
    store.put_pending(LINK, 0, _keys(6), expires_at=clock.now + 100)
    store.close()
    with sqlite3.connect(path) as old:
        old.execute("DROP TRIGGER keys_count_update")
        old.execute("""CREATE TRIGGER keys_count_update AFTER UPDATE OF link_id, state, allocatable, bits ON keys
    WHEN OLD.link_id IS NOT NEW.link_id OR OLD.state IS NOT NEW.state OR OLD.allocatable IS NOT NEW.allocatable
         OR OLD.bits IS NOT NEW.bits BEGIN
        UPDATE state_counts SET keys = keys - 1, bits = bits - OLD.bits
        WHERE link_id = OLD.link_id AND state = OLD.state AND allocatable = OLD.allocatable;
        INSERT INTO state_counts VALUES (NEW.link_id, NEW.state, NEW.allocatable, 1, NEW.bits)
        ON CONFLICT (link_id, state, allocatable) DO UPDATE SET keys = keys + 1, bits = bits + excluded.bits;
    END""")
        old.execute("UPDATE state_counts SET keys = keys + 5")       # and a count gone wrong
    old.close()
    store = KeyStore(path, bytes(32), clock=clock)
    _check(store)
    sql = store._db.execute("SELECT sql FROM sqlite_master WHERE name = 'keys_count_update'").fetchone()[0]
    assert "counted_by_statement" in sql
    assert store.commit_frame(LINK, 0) == 6
    store.put_pending(LINK, 1, _keys(3), expires_at=clock.now + 100)
    assert store.counts(LINK)[KeyState.AVAILABLE] == 6 and store.counts(LINK)[KeyState.PENDING] == 3
    _check(store)
    store.close()


def test_a_large_frame_keeps_the_counts_and_its_audit_record(tmp_path):
    """A frame of many keys stored and committed with an audit trail attached: counts exact, one generated record
    naming every key with its length, and the trail verifies."""
    clock = Clock()
    store = KeyStore(str(tmp_path / "keys.db"), bytes(32), clock=clock)
    identity = generate_identity()
    store.audit = AuditTrail(str(tmp_path / "audit.log"), signer=identity.sign)
    keys = _keys(3000) + _keys(10, nbytes=16)
    store.put_pending(LINK, 0, keys, expires_at=clock.now + 100, allocatable=[i % 2 == 0 for i in range(3010)])
    assert store.commit_frame(LINK, 0) == 3010
    store.audit.close()
    _check(store)
    records = [json.loads(line) for line in open(tmp_path / "audit.log")]
    generated = [record for record in records if record["event"] == "generated"]
    assert len(generated) == 1
    assert sorted(map(tuple, generated[0]["keys"])) == sorted((key_id, len(m) * 8) for key_id, m in keys)
    report = verify_file(str(tmp_path / "audit.log"), identity.public_key())
    assert report.intact and report.records == len(records) and report.unsigned_tail == 0
    store.close()
