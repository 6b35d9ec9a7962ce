"""SQLite key store (WAL, synchronous=FULL): key rows, their states and AES-256-GCM-sealed material.

Every method is one transaction, so a crash (kill -9 at any moment) leaves each frame either wholly
stored or not at all, and each key in exactly one state. Methods are blocking and thread-safe; the
daemon calls them through trio.to_thread. Material is sealed with AES-256-GCM under the KEK with the
key's id, link and length as associated data, so a row cannot be moved to another key id undetected.
Delivered and expired keys lose their material (secure_delete zeroes the freed pages) and keep a
tombstone row, so no key id is handed out twice, until purge_tombstones() deletes it once the other
end cannot need it any more (resync.py says when).

With an audit trail attached (`audit`, qkdd.audit.trail.AuditTrail), every change of a key's lifecycle
(generated, reserved, released, delivered and to whom, expired, erased) is one audit record of ids and
sizes, written once the change is made. checkpoint() (housekeeping) empties the WAL, so erased material's
old pages leave the files too.

Every SQLite error of a write surfaces as StoreWriteError (with `disk_full` when the file system has no
room), never as a raw sqlite3 error. With a capacity (capacity.py), put_pending() refuses a frame with
StoreFull once the link or the file holds its bound. The `fill` table keeps each link's key bits in the
states that hold material, changed in the same transaction by every method that stores or erases
material (one statement per call, not per key), so the check costs one row read however many keys
are stored.
"""
from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, compress, islice, repeat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qkdd.keystore.capacity import DEFAULT_CACHE_MIB, MAX_CACHE_MIB, Fill, StoreCapacity
from qkdd.keystore.kek import KEK_BYTES
from qkdd.keystore.model import (
    TRANSITIONS,
    IllegalTransition,
    KeyAlreadyDelivered,
    KeyNotFound,
    KeyState,
    KeyStoreError,
    KeyUnavailable,
    StoredKey,
    StoreFull,
    StoreWriteError,
    canonical_key_id,
    canonical_key_ids,
)
from qkdd.keystore.resync import STORE_ID_BYTES, TOMBSTONE_GRACE_S, FrameSummary, ResyncPoint
from qkdd.sqlite_batch import Database, SavepointTransactions, create_schema

SCHEMA_VERSION = 1
_NONCE_BYTES = 12
_VERIFIER_PLAINTEXT = b"qkdd key store v1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    link_id TEXT NOT NULL,
    frame_id INTEGER NOT NULL,
    bits INTEGER NOT NULL CHECK (bits > 0),
    state TEXT NOT NULL,
    allocatable INTEGER NOT NULL,       -- 1: this end may reserve it on its own, 0: only by id
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    holder TEXT,                        -- reservation: opaque text naming who may receive it
    delivered_at REAL,
    nonce BLOB,
    sealed BLOB,
    qber REAL                           -- the frame's error rate after reconciliation (NULL: not known)
);
CREATE INDEX IF NOT EXISTS keys_by_frame ON keys (link_id, frame_id);
-- This end's share in age order: without `allocatable` in the index, every reservation would step over
-- all of the other end's (never locally allocated) available keys first, a cost growing with use. Its
-- (link_id, state) prefix also serves the per-state counts and sums.
CREATE INDEX IF NOT EXISTS keys_allocatable ON keys (link_id, state, allocatable, created_at);
-- Housekeeping (expire, purge_tombstones) by expiry time. Every index that holds `state` is rewritten
-- at each state change (reserve, deliver, commit), so this one does not: the few expired rows it finds
-- are checked in the table. For the same reason there is no second index on (link_id, state, ...).
CREATE INDEX IF NOT EXISTS keys_by_expires_at ON keys (expires_at);
DROP INDEX IF EXISTS keys_by_expiry;
DROP INDEX IF EXISTS keys_by_link_state;
CREATE TABLE IF NOT EXISTS fill (link_id TEXT PRIMARY KEY, key_bits INTEGER NOT NULL);
-- ETSI 004 chunks are found by their holder ("004:<stream>:<index>", tentative "004?:..."): a partial index
-- of those rows alone, so that no other consumer's reservation writes it (stream_keys() names its condition).
CREATE INDEX IF NOT EXISTS keys_by_stream_holder ON keys (link_id, holder) WHERE holder LIKE '004%';
-- Keys and bits per (link, state, share), kept in the transaction that changes a key (by put_pending for the
-- keys it inserts, by the triggers below for the rest), so counts() and available_bits() read a few rows instead
-- of scanning the link's keys.
CREATE TABLE IF NOT EXISTS state_counts (
    link_id TEXT NOT NULL, state TEXT NOT NULL, allocatable INTEGER NOT NULL,
    keys INTEGER NOT NULL, bits INTEGER NOT NULL,
    PRIMARY KEY (link_id, state, allocatable)
) WITHOUT ROWID;
-- Keys holding material by expiry time: expire() and available_bits() find what is past its expiry without
-- stepping over tombstones. Its condition is on `sealed` (NULL exactly once the material is erased), not on
-- `state`: an entry is written when a key is stored and removed when its material goes, never rewritten by
-- commit or reserve, which therefore need no new page (they still succeed on a full disk).
CREATE INDEX IF NOT EXISTS keys_material_by_expiry ON keys (expires_at) WHERE sealed IS NOT NULL;
-- The resynchronisation point of each link (resync.py): this end's generation, the peer's store id and
-- generation as of the last resynchronisation applied here, and the frames that lost keys holding material
-- since (written by the trigger below), so the next one summarises only what changed.
CREATE TABLE IF NOT EXISTS resync_points (
    link_id TEXT PRIMARY KEY, generation INTEGER NOT NULL, peer_store_id BLOB NOT NULL,
    peer_generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS resync_dirty (
    link_id TEXT NOT NULL, frame_id INTEGER NOT NULL, PRIMARY KEY (link_id, frame_id)
) WITHOUT ROWID
"""
# One statement each (create_schema splits at semicolons, which a trigger body contains).
# Inserts are not among them: put_pending, the one statement that inserts keys, counts a frame's keys itself in one
# statement per share (a trigger's upsert per row cost 20 us a key, two thirds of storing a frame; bench.store_scale).
# An earlier version's insert trigger is dropped when the store opens (_migrate), which then recounts.
# Nor does the update trigger count a frame's commit: while the meta row _COUNTED_HERE exists (inside
# commit_frame's transaction only, which deletes it again) the trigger leaves state_counts alone, and
# commit_frame counts the frame's keys itself, one query and an upsert per share and state (the trigger's two
# statements per key were 1 us of a commit's 4; bench.store_frame). A version that never writes that row (an earlier
# one, after a downgrade) has every change counted by the trigger as before. _migrate replaces a trigger whose text
# differs from these.
_DROPPED_TRIGGERS = ("keys_count_insert",)
_COUNTED_HERE = "counted_by_statement"
_COUNT_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS keys_count_delete AFTER DELETE ON keys BEGIN
        UPDATE state_counts SET keys = keys - 1, bits = bits - OLD.bits
        WHERE link_id = OLD.link_id AND state = OLD.state AND allocatable = OLD.allocatable;
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS keys_count_update AFTER UPDATE OF link_id, state, allocatable, bits ON keys
    WHEN (OLD.link_id IS NOT NEW.link_id OR OLD.state IS NOT NEW.state OR OLD.allocatable IS NOT NEW.allocatable
          OR OLD.bits IS NOT NEW.bits) AND NOT EXISTS (SELECT 1 FROM meta WHERE name = '{_COUNTED_HERE}') BEGIN
        UPDATE state_counts SET keys = keys - 1, bits = bits - OLD.bits
        WHERE link_id = OLD.link_id AND state = OLD.state AND allocatable = OLD.allocatable;
        INSERT INTO state_counts VALUES (NEW.link_id, NEW.state, NEW.allocatable, 1, NEW.bits)
        ON CONFLICT (link_id, state, allocatable) DO UPDATE SET keys = keys + 1, bits = bits + excluded.bits;
    END""",
    """CREATE TRIGGER IF NOT EXISTS keys_note_changed_frame AFTER DELETE ON keys
    WHEN OLD.state IN ('pending', 'available', 'reserved') BEGIN
        INSERT OR IGNORE INTO resync_dirty VALUES (OLD.link_id, OLD.frame_id);
    END""",
)

# The states whose keys hold material and count towards a link's fill.
_HELD = "('pending', 'available', 'reserved')"
# keys_material_by_expiry's condition: a query names it in these words for SQLite to use that partial index.
_HAS_MATERIAL = "sealed IS NOT NULL"
_SQLITE_IOERR, _SQLITE_FULL = 10, 13
LOW_SPACE_BYTES = 1 << 20           # an I/O error with less free space than this counts as a full disk
_FRAMES_PER_QUERY = 500             # frame ids bound into one inventory query (SQLite allows 32766 parameters)
_KEYS_PER_STATEMENT = 500           # key ids bound into one UPDATE (_erase, reserve_ids, release)


class KeyStore(SavepointTransactions):
    """The keys of every link of this daemon, in one SQLite file."""

    def __init__(self, path: str, kek: bytes, *, clock=time.time, capacity: StoreCapacity = StoreCapacity(),
                 cache_mib: int = DEFAULT_CACHE_MIB):
        if len(kek) != KEK_BYTES:
            raise KeyStoreError(f"key-encryption key must be {KEK_BYTES} bytes")
        if isinstance(cache_mib, bool) or not isinstance(cache_mib, int) or not 1 <= cache_mib <= MAX_CACHE_MIB:
            raise KeyStoreError(f"page cache must be a whole number of MiB in [1, {MAX_CACHE_MIB}], got {cache_mib!r}")
        self._write_failure_observers: list[Callable[[StoreWriteError], None]] = []
        self.path = path
        self.capacity = capacity
        self.audit = None                  # an AuditTrail, or None
        self._aead = AESGCM(kek)
        self._clock = clock
        try:
            self._init_transactions(Database(path, secure_delete=True))
            # A negative cache_size is a bound in KiB (sqlite.org/pragma.html#pragma_cache_size): the page
            # cache grows with the file up to it, and is most of SQLite's heap (qkd_sqlite_memory_bytes).
            self.database.connection.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
            with self.database.transaction() as db:
                self._migrate(db)
                self._check_meta(db)
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"key store {path}: {exc}") from None
        os.chmod(path, 0o600)

    # -- writing a frame's keys ------------------------------------------------------------------

    def put_pending(self, link_id: str, frame_id: int, keys: Sequence[tuple[str, bytes]], *,
                    expires_at: float, allocatable: Iterable[bool] | None = None,
                    created_at: float | None = None, qber: float | None = None) -> None:
        """Store one frame's keys as PENDING (all or none). `keys` are (key_id, material) pairs; `qber` is
        the frame's error rate, kept with each key. StoreFull, storing nothing, when the link or the file
        holds its capacity."""
        created = self._clock() if created_at is None else created_at
        if not math.isfinite(expires_at):
            raise KeyStoreError(f"link {link_id} frame {frame_id}: expiry time is not a finite number")
        flags = [1 if flag else 0 for flag in allocatable] if allocatable is not None else [1] * len(keys)
        if len(flags) != len(keys):
            raise KeyStoreError("allocatable flags and keys differ in number")
        # Column by column, each per-key step one comprehension (a frame holds tens of thousands of keys)
        key_ids = canonical_key_ids([key_id for key_id, _ in keys])
        materials = [bytes(material) for _, material in keys]
        if not all(materials):
            raise KeyStoreError(f"key {key_ids[materials.index(b'')]}: empty key material")
        bits = [len(material) * 8 for material in materials]
        # Nonce and sealed material as bytearray: sqlite3 binds an exact bytearray (like int, float, str) at once, and
        # a bytes object only after looking for an adapter, 0.3 us a parameter (0.6 of put_pending's 7 us a key)
        nonce_bytes = bytearray(os.urandom(_NONCE_BYTES * len(keys)))    # each key's own random nonce, in one call
        nonces = [nonce_bytes[start:start + _NONCE_BYTES] for start in range(0, len(nonce_bytes), _NONCE_BYTES)]
        encrypt = self._aead.encrypt
        sealed = [bytearray(encrypt(nonce, material, _associated_data(key_id, link_id, key_bits)))
                  for nonce, material, key_id, key_bits in zip(nonces, materials, key_ids, bits)]
        # The rows, made one at a time as SQLite takes them (no list of tens of thousands of tuples for the garbage
        # collector to walk)
        rows = zip(key_ids, repeat(link_id), repeat(frame_id), bits, repeat(KeyState.PENDING.value), flags,
                   repeat(created), repeat(expires_at), nonces, sealed, repeat(qber))
        with self._tx() as db:
            if self.capacity.bounded:
                fill = self._fill(db, link_id)
                if fill.full:
                    raise StoreFull(f"key store at capacity: {fill.describe()}", fill)
            try:
                _insert_keys(db, rows, len(key_ids))
            except sqlite3.IntegrityError:
                raise KeyStoreError(f"link {link_id} frame {frame_id}: a key id is already stored") from None
            own_keys, own_bits, all_bits = sum(flags), sum(compress(bits, flags)), sum(bits)
            _add_held_bits(db, link_id, all_bits)
            _count_keys(db, link_id, KeyState.PENDING, [(1, own_keys, own_bits),
                                                        (0, len(key_ids) - own_keys, all_bits - own_bits)])

    def commit_frame(self, link_id: str, frame_id: int) -> int:
        """PENDING → AVAILABLE for every key of the frame; returns how many changed (0 when done before)."""
        audited = self.audit is not None
        where, params = "WHERE link_id = ? AND frame_id = ? AND state = ?", (link_id, frame_id, KeyState.PENDING.value)
        with self._tx() as db:
            # keys_by_frame: the planner would walk every pending key of the link (keys_allocatable's prefix),
            # and update an index it walks
            shares = db.execute("SELECT allocatable, COUNT(*), SUM(bits) FROM keys INDEXED BY keys_by_frame "
                                f"{where} GROUP BY allocatable", params).fetchall()
            if not shares:
                return 0
            # The statement's changes are counted below, per share, not by the trigger per key (_COUNTED_HERE)
            db.execute("INSERT INTO meta VALUES (?, 1)", (_COUNTED_HERE,))
            cursor = db.execute(f"UPDATE keys INDEXED BY keys_by_frame SET state = ? {where}"
                                + (" RETURNING key_id, bits" if audited else ""), (KeyState.AVAILABLE.value, *params))
            keys = cursor.fetchall() if audited else []
            changed = len(keys) if audited else cursor.rowcount
            db.execute("DELETE FROM meta WHERE name = ?", (_COUNTED_HERE,))
            _count_keys(db, link_id, KeyState.PENDING, [(share, -n, -bits) for share, n, bits in shares])
            _count_keys(db, link_id, KeyState.AVAILABLE, shares)
        self._audit("generated", link_id, keys)
        return changed

    def discard_frame(self, link_id: str, frame_id: int) -> int:
        """Delete a frame's PENDING keys (the other end never stored them); returns how many."""
        with self._tx() as db:
            keys = db.execute("DELETE FROM keys WHERE link_id = ? AND frame_id = ? AND state = ? "
                              "RETURNING key_id, bits",
                              (link_id, frame_id, KeyState.PENDING.value)).fetchall()
            _add_held_bits(db, link_id, -sum(bits for _, bits in keys))
        self._audit("erased", link_id, keys)
        return len(keys)

    # -- reserving and delivering ----------------------------------------------------------------

    def reserve_available(self, link_id: str, count: int, holder: str, *, bits: int | None = None) -> list[str]:
        """Reserve the `count` oldest allocatable AVAILABLE keys (of `bits` length if given) for `holder`.

        All or nothing: KeyUnavailable when fewer are stored.
        """
        if count <= 0:
            raise KeyStoreError("count must be positive")
        query = ("SELECT key_id, bits FROM keys WHERE link_id = ? AND state = ? AND allocatable = 1 AND expires_at > ?"
                 + (" AND bits = ?" if bits is not None else "") + " ORDER BY created_at, rowid LIMIT ?")
        with self._tx() as db:
            params: list = [link_id, KeyState.AVAILABLE.value, self._clock()]
            if bits is not None:
                params.append(bits)
            keys = db.execute(query, (*params, count)).fetchall()
            if len(keys) < count:
                raise KeyUnavailable(f"link {link_id}: {len(keys)} keys available, {count} requested")
            db.executemany("UPDATE keys SET state = ?, holder = ? WHERE key_id = ?",
                           [(KeyState.RESERVED.value, holder, key_id) for key_id, _ in keys])
        self._audit("reserved", link_id, keys, holder)
        return [key_id for key_id, _ in keys]

    def take_bits(self, link_id: str, min_total_bits: int, want_bits: int | None = None) -> list[StoredKey]:
        """Deliver (hand out once and erase) the oldest allocatable AVAILABLE keys until they hold
        `want_bits` together, or at least `min_total_bits` when fewer are stored; one transaction.

        Returns the keys with their material in age order. KeyUnavailable, delivering nothing, when the
        link holds fewer than `min_total_bits`. (A consumer keeping a pool of this end's share in memory.)
        """
        if min_total_bits <= 0:
            raise KeyStoreError("requested bits must be positive")
        want_bits = max(want_bits or 0, min_total_bits)
        with self._tx() as db:
            rows = db.execute("SELECT key_id, bits, created_at, expires_at, nonce, sealed, frame_id, qber FROM keys "
                              "WHERE link_id = ? AND state = ? AND allocatable = 1 AND expires_at > ? "
                              "ORDER BY created_at, rowid", (link_id, KeyState.AVAILABLE.value, self._clock()))
            chosen = []
            total_bits = 0
            for row in rows:
                if total_bits >= want_bits:
                    break
                chosen.append(row)
                total_bits += row[1]
            rows.close()
            if total_bits < min_total_bits:
                raise KeyUnavailable(f"link {link_id}: {total_bits} bits available, {min_total_bits} requested")
            taken = [StoredKey(key_id, link_id, bits, created_at, expires_at,
                               self._open(key_id, link_id, bits, nonce, sealed), frame_id, qber)
                     for key_id, bits, created_at, expires_at, nonce, sealed, frame_id, qber in chosen]
            self._erase(db, link_id, [(row[0], row[1]) for row in chosen], KeyState.DELIVERED)
        self._audit("delivered", link_id, [(row[0], row[1]) for row in chosen], "etsi014-kme")
        return taken

    def reserve_ids(self, link_id: str, key_ids: Sequence[str], holder: str, *,
                    peer_share_only: bool = False) -> dict[str, int]:
        """Reserve the named keys for `holder` (the other end reserved them first). Idempotent for the same
        holder. Returns each key's length in bits, by canonical key id. With `peer_share_only`, a key of
        this end's own share (`allocatable`: this end hands it out on its own) is KeyUnavailable: the
        other end names only keys of its share.

        The common case, an available key becoming reserved, goes _KEYS_PER_STATEMENT keys to a statement: one
        statement a key grew as the square of the keys inside a group commit, as _erase did (70 000 keys in
        batch(): 1057 us a key against 14 alone; in statements of 500, 7 us either way). The keys it leaves
        follow one by one, in the order given, so errors, audit order and repeated ids are as one at a time."""
        bits: dict[str, int] = {}
        with self._tx() as db:
            for chunk in _id_chunks(key_ids):
                self._reserve_chunk(db, link_id, chunk, holder, peer_share_only, bits)
        self._audit("reserved", link_id, bits.items(), holder)
        return bits

    def _reserve_chunk(self, db: sqlite3.Connection, link_id: str, key_ids: list[str], holder: str,
                       peer_share_only: bool, bits: dict[str, int]) -> None:
        """reserve_ids for canonical `key_ids` (at most _KEYS_PER_STATEMENT), each one's bits added to `bits`."""
        # Unary + on link_id and state: left to itself the planner walks the link's available keys
        # (keys_allocatable) instead of looking each id up
        reserved = dict(db.execute(
            f"UPDATE keys SET state = ?, holder = ? WHERE key_id IN ({_marks(key_ids)}) AND +link_id = ? "
            "AND +state = ?" + (" AND allocatable = 0" if peer_share_only else "") + " RETURNING key_id, bits",
            (KeyState.RESERVED.value, holder, *key_ids, link_id, KeyState.AVAILABLE.value)).fetchall())
        for key_id in key_ids:
            if key_id in reserved:
                bits[key_id] = reserved[key_id]
                continue
            state, current_holder, bits[key_id], allocatable = self._row_of(db, link_id, key_id)
            if peer_share_only and allocatable:
                raise KeyUnavailable(f"key {key_id} is this end's to hand out, not the other end's")
            if state is not KeyState.RESERVED or current_holder != holder:
                self._check_transition(key_id, state, KeyState.RESERVED)
                db.execute("UPDATE keys SET state = ?, holder = ? WHERE key_id = ?",
                           (KeyState.RESERVED.value, holder, key_id))

    def release(self, link_id: str, key_ids: Sequence[str]) -> None:
        """Cancel reservations: RESERVED → AVAILABLE. The reserved keys go _KEYS_PER_STATEMENT to a statement, the
        rest one by one, as in reserve_ids (70 000 keys in batch(): 785 us a key against 17 alone; in statements
        of 500, 6 us either way)."""
        released: list[tuple[str, int]] = []
        with self._tx() as db:
            for chunk in _id_chunks(key_ids):
                self._release_chunk(db, link_id, chunk, released)
        self._audit("released", link_id, released)

    def _release_chunk(self, db: sqlite3.Connection, link_id: str, key_ids: list[str],
                       released: list[tuple[str, int]]) -> None:
        """release for canonical `key_ids` (at most _KEYS_PER_STATEMENT), each released key's (key_id, bits) added
        to `released`; each key the statement changed counts once (named again, it is available: an illegal
        transition, as one at a time)."""
        changed = dict(db.execute(
            f"UPDATE keys SET state = ?, holder = NULL WHERE key_id IN ({_marks(key_ids)}) AND +link_id = ? "
            "AND +state = ? RETURNING key_id, bits",
            (KeyState.AVAILABLE.value, *key_ids, link_id, KeyState.RESERVED.value)).fetchall())
        for key_id in key_ids:
            if key_id in changed:
                released.append((key_id, changed.pop(key_id)))
                continue
            state, _ = self._state_of(db, link_id, key_id)
            self._check_transition(key_id, state, KeyState.AVAILABLE)
            released += db.execute("UPDATE keys SET state = ?, holder = NULL WHERE key_id = ? AND link_id = ? "
                                   "RETURNING key_id, bits", (KeyState.AVAILABLE.value, key_id, link_id)).fetchall()

    def deliver(self, link_id: str, key_id: str, *, holder: str | None = None) -> StoredKey:
        """Hand out one key exactly once: return its material, erase it, leave a tombstone.

        With `holder`, the key must be reserved for that holder (or be available); without, it must be
        available or reserved. A delivered or expired key raises KeyAlreadyDelivered.
        """
        key_id = canonical_key_id(key_id)
        with self._tx() as db:
            row = db.execute("SELECT state, holder, bits, created_at, expires_at, nonce, sealed, frame_id, qber "
                             "FROM keys WHERE key_id = ? AND link_id = ?", (key_id, link_id)).fetchone()
            if row is None:
                raise KeyNotFound(f"key {key_id} is not stored for link {link_id}")
            state = KeyState(row[0])
            if not state.holds_material:
                raise KeyAlreadyDelivered(f"key {key_id} was {state.value} before")
            if state is KeyState.PENDING:
                raise KeyUnavailable(f"key {key_id} is not yet confirmed by the other end")
            if holder is not None and state is KeyState.RESERVED and row[1] != holder:
                raise KeyUnavailable(f"key {key_id} is reserved for another holder")
            if row[4] <= self._clock():
                self._erase(db, link_id, [(key_id, row[2])], KeyState.EXPIRED)   # committed; the caller is told below
                expired = True
            else:
                expired = False
                material = self._open(key_id, link_id, row[2], row[5], row[6])
                self._erase(db, link_id, [(key_id, row[2])], KeyState.DELIVERED)
        self._audit("expired" if expired else "delivered", link_id, [(key_id, row[2])],
                    None if expired else (holder or row[1]))
        if expired:
            raise KeyAlreadyDelivered(f"key {key_id} has expired")
        return StoredKey(key_id, link_id, row[2], row[3], row[4], material, row[7], row[8])

    def peek(self, link_id: str, key_id: str) -> StoredKey:
        """A key's record and material without changing its state (for tests and resync checks)."""
        key_id = canonical_key_id(key_id)
        with self._lock:
            row = self._db.execute("SELECT state, bits, created_at, expires_at, nonce, sealed, frame_id, qber "
                                   "FROM keys WHERE key_id = ? AND link_id = ?", (key_id, link_id)).fetchone()
        if row is None:
            raise KeyNotFound(f"key {key_id} is not stored for link {link_id}")
        if not KeyState(row[0]).holds_material:
            raise KeyAlreadyDelivered(f"key {key_id} was {row[0]} before")
        return StoredKey(key_id, link_id, row[1], row[2], row[3], self._open(key_id, link_id, row[1], row[4], row[5]),
                         row[6], row[7])

    # -- housekeeping and inventory --------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Erase every key past its expiry time; returns how many."""
        now = self._clock() if now is None else now
        with self._tx() as db:
            by_link: dict[str, list[tuple[str, int]]] = {}
            for key_id, link_id, bits in db.execute(
                    f"SELECT key_id, link_id, bits FROM keys WHERE expires_at <= ? AND {_HAS_MATERIAL}",
                    (now,)).fetchall():
                by_link.setdefault(link_id, []).append((key_id, bits))
            for link_id, keys in by_link.items():
                self._erase(db, link_id, keys, KeyState.EXPIRED)
        for link_id, keys in by_link.items():
            self._audit("expired", link_id, keys)
        return sum(len(keys) for keys in by_link.values())

    def purge_tombstones(self, now: float | None = None, grace_s: float = TOMBSTONE_GRACE_S) -> int:
        """Delete the rows of delivered and expired keys whose expiry is more than `grace_s` past (the rule
        and why it is safe: resync.py); returns how many."""
        now = self._clock() if now is None else now
        with self._tx() as db:
            return db.execute("DELETE FROM keys WHERE expires_at <= ? AND state IN (?, ?)",
                              (now - grace_s, KeyState.DELIVERED.value, KeyState.EXPIRED.value)).rowcount

    def state(self, link_id: str, key_id: str) -> KeyState:
        with self._lock:
            state, _ = self._state_of(self._db, link_id, canonical_key_id(key_id))
        return state

    def holder_of(self, link_id: str, key_id: str) -> str | None:
        """Who a key is reserved for (None when not reserved); KeyNotFound for an unknown key."""
        with self._lock:
            _, holder = self._state_of(self._db, link_id, canonical_key_id(key_id))
        return holder

    def counts(self, link_id: str) -> dict[KeyState, int]:
        """Number of keys per state for one link (from state_counts: the same cost at any store size)."""
        counts = dict.fromkeys(KeyState, 0)
        with self._lock:
            for state, n in self._db.execute("SELECT state, SUM(keys) FROM state_counts WHERE link_id = ? "
                                             "GROUP BY state", (link_id,)):
                counts[KeyState(state)] = n
        return counts

    def available_bits(self, link_id: str, *, allocatable_only: bool = True) -> int:
        """Bits of the link's AVAILABLE keys not yet past their expiry (this end's share only by default):
        the count kept in state_counts less the few keys past their expiry that housekeeping has not erased
        yet (found through keys_material_by_expiry), so the cost does not grow with the store."""
        share = " AND allocatable = 1" if allocatable_only else ""
        with self._lock:
            stored = self._db.execute("SELECT COALESCE(SUM(bits), 0) FROM state_counts WHERE link_id = ? AND state = ?"
                                      + share, (link_id, KeyState.AVAILABLE.value)).fetchone()[0]
            # INDEXED BY: left to itself the planner walks all of the link's available keys (keys_allocatable)
            lapsed = self._db.execute(f"SELECT COALESCE(SUM(bits), 0) FROM keys INDEXED BY keys_material_by_expiry "
                                      f"WHERE expires_at <= ? AND {_HAS_MATERIAL} AND link_id = ? AND state = ?"
                                      + share,
                                      (self._clock(), link_id, KeyState.AVAILABLE.value)).fetchone()[0]
        return int(stored) - int(lapsed)

    def fill(self, link_id: str) -> Fill:
        """What `link_id` holds and what the store takes, against the capacity (two cheap reads)."""
        try:
            with self._lock:
                return self._fill(self._db, link_id)
        except sqlite3.Error as exc:
            raise _write_error(exc, self.path) from None

    def free_bytes(self) -> int:
        """Bytes free for this process on the store's file system (a large number when unknown)."""
        return _free_bytes(self.path)

    def observe_write_failures(self, observer: Callable[[StoreWriteError], None]) -> None:
        """Call `observer(error)` on every write that fails, in the thread that wrote (so it must be quick and
        thread-safe): how each link's store guard learns that the store cannot write from the writes of
        the KME, key requests and consumers as well as from its own frames'."""
        self._write_failure_observers.append(observer)

    def probe_write(self) -> None:
        """One small durable write (a row of the meta table): StoreWriteError while the store cannot write."""
        with self._tx() as db:
            db.execute("INSERT INTO meta VALUES ('write_probe', ?) ON CONFLICT (name) DO UPDATE SET value = "
                       "excluded.value", (repr(self._clock()),))

    def rehold(self, link_id: str, key_ids: Sequence[str], holder: str, new_holder: str) -> None:
        """Move keys RESERVED for `holder` to `new_holder` in one transaction (a consumer's tentative
        reservation confirmed by the other end); KeyUnavailable, changing nothing, if one is not."""
        with self._tx() as db:
            for key_id in key_ids:
                key_id = canonical_key_id(key_id)
                state, current = self._state_of(db, link_id, key_id)
                if state is not KeyState.RESERVED or current != holder:
                    raise KeyUnavailable(f"key {key_id} is not reserved for that holder")
                db.execute("UPDATE keys SET holder = ? WHERE key_id = ?", (new_holder, key_id))

    def stream_keys(self, link_id: str, holder: str) -> list[tuple[str, KeyState]]:
        """Every key ever reserved for ETSI 004 holder `holder` ("004..."), tombstones included: (key id,
        state). Through the partial index keys_by_stream_holder, whose condition the query repeats."""
        if not holder.startswith("004"):
            raise KeyStoreError("not an ETSI 004 holder")
        with self._lock:
            return [(row[0], KeyState(row[1])) for row in self._db.execute(
                "SELECT key_id, state FROM keys WHERE link_id = ? AND holder = ? AND holder LIKE '004%'",
                (link_id, holder))]

    def stream_holders(self, link_id: str) -> list[str]:
        """The ETSI 004 holders ("004...") that still hold RESERVED keys of the link: chunks assigned and not
        handed out (their TTL restored at start-up). Through the partial index keys_by_stream_holder."""
        with self._lock:
            return [row[0] for row in self._db.execute(
                "SELECT DISTINCT holder FROM keys WHERE link_id = ? AND holder LIKE '004%' AND state = ?",
                (link_id, KeyState.RESERVED.value))]

    def reserved_for(self, link_id: str, holder: str) -> list[str]:
        """Ids of the keys RESERVED for `holder` (a consumer finding its own after a restart)."""
        with self._lock:
            return [row[0] for row in self._db.execute(
                "SELECT key_id FROM keys WHERE link_id = ? AND state = ? AND holder = ? ORDER BY created_at, rowid",
                (link_id, KeyState.RESERVED.value, holder))]

    def inventory(self, link_id: str, frames: Iterable[int] | None = None) -> dict[str, KeyState]:
        """Every key id of the link with its state (tombstones included), for resynchronisation; only the
        keys of `frames` when given."""
        states = {state.value: state for state in KeyState}
        return {key_id: states[state] for key_id, state in
                self._rows_of_frames("SELECT key_id, state FROM keys WHERE link_id = ?", (link_id,), "", frames)}

    def frame_summaries(self, link_id: str, frames: Iterable[int] | None = None) -> dict[int, FrameSummary]:
        """Per frame of the link (of `frames` when given): how many keys, how many pending, holding
        material, expired, and the lowest and highest key id (resync.py). Aggregate queries over the frame
        index, in SQLite, instead of one Python object per key."""
        query = (f"SELECT frame_id, COUNT(*), SUM(state = ?), SUM(state IN {_HELD}), SUM(state = ?), "
                 "MIN(key_id), MAX(key_id) FROM keys WHERE link_id = ?")
        return {frame_id: FrameSummary(*row) for frame_id, *row in self._rows_of_frames(
            query, (KeyState.PENDING.value, KeyState.EXPIRED.value, link_id), " GROUP BY frame_id", frames)}

    def _rows_of_frames(self, query: str, params: tuple, tail: str, frames: Iterable[int] | None) -> list[tuple]:
        """The rows of `query` + `tail` over the whole link, or over `frames` only (a frame_id IN (...) clause
        added, at most _FRAMES_PER_QUERY ids a statement)."""
        with self._lock:
            if frames is None:
                return self._db.execute(query + tail, params).fetchall()
            rows = []
            for chunk in _runs(list(frames), _FRAMES_PER_QUERY):
                rows += self._db.execute(f"{query} AND frame_id IN ({_marks(chunk)}){tail}",
                                         (*params, *chunk)).fetchall()
            return rows

    @property
    def store_id(self) -> bytes:
        """This store's random id, made when the file was created (resync.py: the resynchronisation point)."""
        with self._lock:
            return self._db.execute("SELECT value FROM meta WHERE name = 'store_id'").fetchone()[0]

    def resync_point(self, link_id: str) -> ResyncPoint:
        """The link's resynchronisation point: ids and generations as of the last resynchronisation applied
        here (zeros before the first), and the frames changed since: pending, or noted by the trigger."""
        with self._lock:
            row = self._db.execute("SELECT generation, peer_store_id, peer_generation FROM resync_points "
                                   "WHERE link_id = ?", (link_id,)).fetchone()
            changed = {frame_id for (frame_id,) in self._db.execute(
                "SELECT DISTINCT frame_id FROM keys WHERE link_id = ? AND state = ? "
                "UNION SELECT frame_id FROM resync_dirty WHERE link_id = ?",
                (link_id, KeyState.PENDING.value, link_id))}
        generation, peer_store_id, peer_generation = row or (0, bytes(STORE_ID_BYTES), 0)
        return ResyncPoint(self.store_id, generation, peer_store_id, peer_generation, frozenset(changed))

    def apply_resync(self, link_id: str, promote: Iterable[str], discard: Iterable[str],
                     expire: Iterable[str], *, peer: ResyncPoint | None = None,
                     scope: Sequence[int] | None = None) -> None:
        """Carry out a resynchronisation plan (resync.py) in one transaction. With `peer` (its point as it
        sent it), the point moves on in the same transaction: this end's generation and the peer's as it
        will be once it applies its own plan, and the changed frames of `scope` (None: every frame) done."""
        promoted, discarded, expired = [], [], []
        with self._tx() as db:
            self._apply_plan(db, link_id, promote, discard, expire, promoted, discarded, expired)
            if peer is not None:
                self._advance_point(db, link_id, peer, scope)
        self._audit("generated", link_id, promoted)
        self._audit("erased", link_id, discarded)
        self._audit("expired", link_id, expired)

    def _advance_point(self, db: sqlite3.Connection, link_id: str, peer: ResyncPoint,
                       scope: Sequence[int] | None) -> None:
        if scope is None:
            db.execute("DELETE FROM resync_dirty WHERE link_id = ?", (link_id,))
        else:
            db.executemany("DELETE FROM resync_dirty WHERE link_id = ? AND frame_id = ?",
                           [(link_id, frame_id) for frame_id in scope])
        db.execute("INSERT INTO resync_points VALUES (?, 1, ?, ?) ON CONFLICT (link_id) DO UPDATE SET "
                   "generation = generation + 1, peer_store_id = excluded.peer_store_id, "
                   "peer_generation = excluded.peer_generation", (link_id, peer.store_id, peer.generation + 1))

    def _apply_plan(self, db: sqlite3.Connection, link_id: str, promote: Iterable[str], discard: Iterable[str],
                    expire: Iterable[str], promoted: list, discarded: list, expired: list) -> None:
        """The plan's changes, each key's (key_id, bits) added to the three lists."""
        for key_id in promote:
            promoted += db.execute("UPDATE keys SET state = ? WHERE key_id = ? AND link_id = ? AND state = ? "
                                   "RETURNING key_id, bits", (KeyState.AVAILABLE.value, key_id, link_id,
                                                              KeyState.PENDING.value)).fetchall()
        for key_id in discard:
            discarded += db.execute("DELETE FROM keys WHERE key_id = ? AND link_id = ? AND state IN (?, ?, ?) "
                                    "RETURNING key_id, bits", (key_id, link_id, KeyState.PENDING.value,
                                                               KeyState.AVAILABLE.value,
                                                               KeyState.RESERVED.value)).fetchall()
        _add_held_bits(db, link_id, -sum(bits for _, bits in discarded))
        for key_id in expire:
            state, _, bits, _ = self._row_of(db, link_id, key_id)
            if state.holds_material:
                self._erase(db, link_id, [(key_id, bits)], KeyState.EXPIRED)
                expired.append((key_id, bits))

    # -- internals -------------------------------------------------------------------------------

    def _audit(self, event: str, link_id: str, keys, holder: str | None = None) -> None:
        """One audit record for a change just made (nothing when no trail is attached or no key changed)."""
        keys = list(keys)
        if self.audit is not None and keys:
            self.audit.event(event, link_id, keys, holder=holder)

    @contextlib.contextmanager
    def _tx(self):
        """A transaction (or a savepoint inside batch()); any SQLite error becomes StoreWriteError."""
        try:
            with self.database.transaction() as db:
                yield db
        except sqlite3.Error as exc:
            error = _write_error(exc, self.path)
            for observer in self._write_failure_observers:
                observer(error)
            raise error from None

    def _migrate(self, db: sqlite3.Connection) -> None:
        """The schema, with what later versions added to a store an earlier one wrote (the `qber` column),
        and the fill and state_counts tables counted afresh from the keys when they differ (a version that did
        not keep them may have written)."""
        had_keys = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keys'").fetchone()
        if had_keys and "qber" not in {row[1] for row in db.execute("PRAGMA table_info(keys)")}:
            db.execute("ALTER TABLE keys ADD COLUMN qber REAL")
        create_schema(db, _SCHEMA)
        if db.execute("SELECT 1 FROM meta WHERE name = ?", (_COUNTED_HERE,)).fetchone():
            db.execute("DELETE FROM meta WHERE name = ?", (_COUNTED_HERE,))     # never committed; counts checked below
        for trigger in _DROPPED_TRIGGERS:
            db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        for trigger in _COUNT_TRIGGERS:
            name = trigger.split()[5]          # CREATE TRIGGER IF NOT EXISTS <name>
            stored = db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", (name,)).fetchone()
            if stored is not None and stored[0] != trigger.replace(" IF NOT EXISTS", "", 1):
                db.execute(f"DROP TRIGGER {name}")          # an earlier version's: the counts are checked below
            db.execute(trigger)
        by_state = db.execute("SELECT link_id, state, allocatable, COUNT(*), SUM(bits) FROM keys "
                              "GROUP BY link_id, state, allocatable").fetchall()
        if sorted(by_state) != sorted(db.execute("SELECT * FROM state_counts WHERE keys != 0").fetchall()):
            db.execute("DELETE FROM state_counts")    # first open by this version, or written by an older one
            db.executemany("INSERT INTO state_counts VALUES (?, ?, ?, ?, ?)", by_state)
        counted = dict(db.execute(f"SELECT link_id, SUM(bits) FROM keys WHERE state IN {_HELD} GROUP BY link_id"))
        if counted != dict(db.execute("SELECT link_id, key_bits FROM fill WHERE key_bits != 0")):
            db.execute("DELETE FROM fill")       # written only when it differs: a full disk still opens the store
            db.executemany("INSERT INTO fill (link_id, key_bits) VALUES (?, ?)", counted.items())

    def _fill(self, db: sqlite3.Connection, link_id: str) -> Fill:
        row = db.execute("SELECT key_bits FROM fill WHERE link_id = ?", (link_id,)).fetchone()
        page_bytes = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return Fill(link_id, int(row[0]) if row else 0, pages * page_bytes, self.capacity)

    def _check_meta(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if row is None:
            nonce = os.urandom(_NONCE_BYTES)
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("INSERT INTO meta VALUES ('kek_verifier', ?)",
                       (nonce + self._aead.encrypt(nonce, _VERIFIER_PLAINTEXT, b"verifier"),))
            db.execute("INSERT INTO meta VALUES ('store_id', ?)", (_new_store_id(),))
            return
        if int(row[0]) != SCHEMA_VERSION:
            raise KeyStoreError(f"key store {self.path}: schema version {row[0]}, this qkdd reads {SCHEMA_VERSION}")
        verifier = db.execute("SELECT value FROM meta WHERE name = 'kek_verifier'").fetchone()[0]
        try:
            self._aead.decrypt(verifier[:_NONCE_BYTES], verifier[_NONCE_BYTES:], b"verifier")
        except InvalidTag:
            raise KeyStoreError(f"key store {self.path}: the key-encryption key does not match this store") from None
        db.execute("INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (_new_store_id(),))   # a store written before

    def _state_of(self, db: sqlite3.Connection, link_id: str, key_id: str) -> tuple[KeyState, str | None]:
        return self._row_of(db, link_id, key_id)[:2]

    def _row_of(self, db: sqlite3.Connection, link_id: str,
                key_id: str) -> tuple[KeyState, str | None, int, bool]:
        """(state, holder, bits, allocatable) of a stored key; KeyNotFound if the link holds no such key."""
        row = db.execute("SELECT state, holder, bits, allocatable FROM keys WHERE key_id = ? AND link_id = ?",
                         (key_id, link_id)).fetchone()
        if row is None:
            raise KeyNotFound(f"key {key_id} is not stored for link {link_id}")
        return KeyState(row[0]), row[1], row[2], bool(row[3])

    @staticmethod
    def _check_transition(key_id: str, current: KeyState, wanted: KeyState) -> None:
        if wanted not in TRANSITIONS[current]:
            if current in (KeyState.DELIVERED, KeyState.EXPIRED):
                raise KeyAlreadyDelivered(f"key {key_id} was {current.value} before")
            raise IllegalTransition(key_id, current, wanted)

    def _erase(self, db: sqlite3.Connection, link_id: str, keys: Sequence[tuple[str, int]], final: KeyState) -> None:
        """Erase the material of `keys` ((key_id, bits) of keys of `link_id` that hold material), up to
        _KEYS_PER_STATEMENT keys to a statement: inside a group commit (batch(), a SAVEPOINT) each statement's end
        costs SQLite time growing with the pages the transaction has changed, so one statement per key grew as the
        square of the keys (70 000 keys of one take: 65 s; 20 000: 161 us a key against 21 us for 5000)."""
        now = self._clock()
        for chunk in _runs([key_id for key_id, _ in keys], _KEYS_PER_STATEMENT):
            db.execute("UPDATE keys SET state = ?, nonce = NULL, sealed = NULL, delivered_at = ? "
                       f"WHERE key_id IN ({_marks(chunk)})", (final.value, now, *chunk))
        _add_held_bits(db, link_id, -sum(bits for _, bits in keys))

    def _open(self, key_id: str, link_id: str, bits: int, nonce: bytes, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, sealed, _associated_data(key_id, link_id, bits))
        except InvalidTag:
            raise KeyStoreError(f"key {key_id}: stored material fails authentication (tampered or wrong KEK)") from None


def _associated_data(key_id: str, link_id: str, bits: int) -> bytes:
    return f"qkdd-key-v1|{key_id}|{link_id}|{bits}".encode()


def _runs(values: list, size: int) -> Iterator[list]:
    """`values` in consecutive runs of at most `size` (one SQL statement each)."""
    for first in range(0, len(values), size):
        yield values[first:first + size]


def _marks(values: Sequence) -> str:
    """One SQL parameter per value, for an IN (...) list."""
    return ", ".join("?" * len(values))


def _id_chunks(key_ids: Iterable[str]) -> Iterator[list[str]]:
    """The canonical forms of `key_ids` in runs of up to _KEYS_PER_STATEMENT. An id that is not a UUID ends the
    run before it, and its KeyStoreError is raised once the caller has taken that run: the keys before it are
    handled first, as when each key was handled in turn."""
    canonical: list[str] = []
    for key_id in key_ids:
        try:
            canonical.append(canonical_key_id(key_id))
        except KeyStoreError:
            if canonical:
                yield canonical
            raise
        if len(canonical) == _KEYS_PER_STATEMENT:
            yield canonical
            canonical = []
    if canonical:
        yield canonical


def _add_held_bits(db: sqlite3.Connection, link_id: str, bits: int) -> None:
    """Change a link's count of key bits that hold material (the fill table), inside the caller's transaction."""
    if bits:
        db.execute("INSERT INTO fill (link_id, key_bits) VALUES (?, ?) ON CONFLICT (link_id) DO UPDATE SET "
                   "key_bits = key_bits + excluded.key_bits", (link_id, bits))


_INSERT_KEYS = ("INSERT INTO keys (key_id, link_id, frame_id, bits, state, allocatable, created_at, expires_at, nonce,"
                " sealed, qber) VALUES ")
_KEY_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_KEY_COLUMNS = _KEY_ROW.count("?")
# Rows in one INSERT statement: a statement per row opens its cursors on the table and its six indexes each time,
# a third of the SQL cost of storing a key (bench.store_frame's frames: the INSERT 4.6 us a row one by one, 2.9 in
# statements of 2000; put_pending 5.2 us a key in statements of 500, 4.7 of 2000, 4.8 of 4000). A frame goes in
# statements of the largest size first, the rest in smaller ones, the last few rows one by one. The prepared
# statement of 2000 rows takes 2.6 MB of SQLite's heap while sqlite3 caches it, that of 200 rows a tenth.
_ROWS_PER_INSERT = (2000, 200, 20)


def _insert_keys(db: sqlite3.Connection, rows: Iterator[tuple], count: int) -> None:
    """Insert `count` key rows (tuples of _KEY_COLUMNS values, taken from `rows` in order: the rowids keep it),
    inside the caller's transaction, in statements of _ROWS_PER_INSERT rows (fewer when SQLite binds fewer
    parameters to a statement)."""
    most = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _KEY_COLUMNS
    for per_statement in _ROWS_PER_INSERT:
        per_statement = min(per_statement, most)
        if per_statement > 1 and count >= per_statement:
            many = _INSERT_KEYS + ", ".join([_KEY_ROW] * per_statement)
            for _ in range(count // per_statement):
                db.execute(many, tuple(chain.from_iterable(islice(rows, per_statement))))
            count %= per_statement
    db.executemany(_INSERT_KEYS + _KEY_ROW, rows)


def _count_keys(db: sqlite3.Connection, link_id: str, state: KeyState, shares: Iterable[tuple[int, int, int]]) -> None:
    """Add to the link's state_counts of `state` the (allocatable, keys, bits) of each share (negative: taken away),
    one statement per share, inside the caller's transaction."""
    for allocatable, keys, bits in shares:
        if keys:
            db.execute("INSERT INTO state_counts VALUES (?, ?, ?, ?, ?) ON CONFLICT (link_id, state, allocatable) "
                       "DO UPDATE SET keys = keys + excluded.keys, bits = bits + excluded.bits",
                       (link_id, state.value, allocatable, keys, bits))


def _free_bytes(path: str) -> int:
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return 1 << 62
    return stat.f_bavail * stat.f_frsize


def _write_error(exc: sqlite3.Error, path: str) -> StoreWriteError:
    """The StoreWriteError for a SQLite error (its message names no key material: SQLite's own text)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    disk_full = primary == _SQLITE_FULL or (primary == _SQLITE_IOERR and _free_bytes(path) < LOW_SPACE_BYTES)
    reason = str(exc) + (" (no space left)" if disk_full and primary != _SQLITE_FULL else "")
    return StoreWriteError(f"key store {path}: write failed: {reason}", reason=reason, disk_full=disk_full,
                           sqlite_code=code)


def _new_store_id() -> bytes:
    return os.urandom(STORE_ID_BYTES)
