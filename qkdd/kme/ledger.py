"""The slave KME's record of ETSI 014 reservations (SQLite, WAL, synchronous=FULL): which keys, made of
which stored keys, for which master and slave SAEs, and who has received each key.

It holds no key material: the material stays sealed in the key store (reserved for the reservation)
until every slave has its copy; then the stored keys are erased. A recipient's delivery time is set once,
in one transaction for the whole request, so no key reaches the same SAE twice, also across a crash
(kill -9) and restart.

By default the ledger's tables live in the key store's own file and connection (`Ledger(database=
store.database)`): a reservation and the key-store reservation of its stored keys then commit together,
with one fsync. Two tables, one row per key and one per stored key in use, so recording a reservation
writes few pages: the recipients of a key are a JSON object in its row, and each stored key counts the
deliveries still due from it (`undelivered`); at 0 it may be erased, and its row then goes.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from qkdd.kme.reservation import Reservation, ReservedKey, Segment
from qkdd.sqlite_batch import Database, SavepointTransactions, create_schema

# Fully delivered keys stay this long (answering a second dec_keys "delivered before"), then go.
DELIVERED_GRACE_S = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS etsi014_keys (
    key_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    master_sae_id TEXT NOT NULL,
    size_bits INTEGER NOT NULL,
    segments TEXT NOT NULL,           -- JSON [[stored_key_id, offset_bytes, length_bytes], ...]
    recipients TEXT NOT NULL,         -- JSON {sae_id: delivered_at or null}, the slave first
    undelivered INTEGER NOT NULL,     -- recipients that have not fetched the key yet
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS etsi014_stored_keys (
    stored_key_id TEXT PRIMARY KEY,
    link_id TEXT NOT NULL,
    undelivered INTEGER NOT NULL      -- (key, recipient) deliveries still due from it, 0: erase it
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS etsi014_keys_delivered ON etsi014_keys (created_at) WHERE undelivered = 0;
CREATE INDEX IF NOT EXISTS etsi014_stored_keys_spent ON etsi014_stored_keys (stored_key_id) WHERE undelivered = 0;
"""


class LedgerError(Exception):
    """The ledger cannot do what was asked (never carries key material, which it never holds)."""


@dataclass(frozen=True)
class LedgerEntry:
    key_id: str
    request_id: str
    link_id: str
    master_sae_id: str
    size_bits: int
    key: ReservedKey
    recipients: dict[str, float | None]      # sae_id -> delivered_at


class Ledger(SavepointTransactions):
    """`Ledger(path)`: a file of its own; `Ledger(database=store.database)`: tables in the key store's."""

    def __init__(self, path: str | None = None, *, database: Database | None = None, clock=time.time) -> None:
        if (path is None) == (database is None):
            raise ValueError("a ledger needs either a path or a database")
        self.path = path if path is not None else database.path
        self._clock = clock
        self._owns_database = database is None
        try:
            self._init_transactions(database if database is not None else Database(path))
            with self._tx() as db:
                create_schema(db, _SCHEMA)
                _import_version_1(db)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ETSI 014 ledger {self.path}: {exc}") from None
        if path is not None:
            os.chmod(path, 0o600)

    def close(self) -> None:
        """Close the ledger's own file (a shared database is its owner's to close)."""
        if self._owns_database:
            super().close()

    def record(self, link_id: str, reservation: Reservation) -> bool:
        """Record a reservation (all keys, all recipients); False if it was recorded before (a resend).
        LedgerError if a key id is already taken by another request."""
        now = self._clock()
        slaves = reservation.slave_sae_ids
        recipients = json.dumps(dict.fromkeys(slaves))
        due: Counter[str] = Counter()
        for key in reservation.keys:
            for stored_key_id in {segment.stored_key_id for segment in key.segments}:
                due[stored_key_id] += len(slaves)
        try:
            with self._tx() as db:
                db.executemany("INSERT INTO etsi014_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [(key.key_id, reservation.request_id, link_id, reservation.master_sae_id,
                                 reservation.size_bits, _segments_json(key), recipients, len(slaves), now)
                                for key in reservation.keys])
                db.executemany("INSERT INTO etsi014_stored_keys VALUES (?, ?, ?) ON CONFLICT (stored_key_id) "
                               "DO UPDATE SET undelivered = undelivered + excluded.undelivered",
                               [(stored_key_id, link_id, count) for stored_key_id, count in due.items()])
            return True
        except sqlite3.IntegrityError:     # rolled back; a resend of this request, or a key id taken
            pass
        with self._lock:
            row = self._db.execute("SELECT request_id FROM etsi014_keys WHERE key_id = ?",
                                   (reservation.keys[0].key_id,)).fetchone()
        if row is not None and row[0] == reservation.request_id:
            return False
        raise LedgerError(f"request {reservation.request_id}: a key id is already recorded")

    def lookup(self, key_ids: Sequence[str]) -> dict[str, LedgerEntry]:
        """The entries of the key ids that are recorded (missing ids are absent from the result)."""
        entries: dict[str, LedgerEntry] = {}
        with self._lock:
            for key_id in key_ids:
                row = self._db.execute("SELECT request_id, link_id, master_sae_id, size_bits, segments, recipients "
                                       "FROM etsi014_keys WHERE key_id = ?", (key_id,)).fetchone()
                if row is not None:
                    entries[key_id] = LedgerEntry(key_id, row[0], row[1], row[2], row[3],
                                                  _key_from_json(key_id, row[4]), json.loads(row[5]))
        return entries

    def mark_delivered(self, key_ids: Sequence[str], sae_id: str) -> None:
        """Mark the keys delivered to `sae_id`, all or none; AlreadyDelivered if any reached it before."""
        now = self._clock()
        with self._tx() as db:
            for key_id in key_ids:
                row = db.execute("SELECT segments, recipients FROM etsi014_keys WHERE key_id = ?",
                                 (key_id,)).fetchone()
                if row is None:
                    raise LedgerError(f"key {key_id} is not recorded")
                recipients = json.loads(row[1])
                if sae_id not in recipients:
                    raise LedgerError(f"key {key_id} was not reserved for this SAE")
                if recipients[sae_id] is not None:
                    raise AlreadyDelivered(f"key {key_id} was delivered to this SAE before")
                recipients[sae_id] = now
                db.execute("UPDATE etsi014_keys SET recipients = ?, undelivered = undelivered - 1 WHERE key_id = ?",
                           (json.dumps(recipients), key_id))
                db.executemany("UPDATE etsi014_stored_keys SET undelivered = undelivered - 1 WHERE stored_key_id = ?",
                               [(stored_key_id,) for stored_key_id in {segment[0] for segment in json.loads(row[0])}])

    def spent_stored_keys(self) -> list[tuple[str, str]]:
        """(link_id, stored_key_id) of stored keys not yet erased whose every key has reached every
        recipient: the key store may erase them now."""
        with self._lock:
            return self._db.execute("SELECT link_id, stored_key_id FROM etsi014_stored_keys "
                                    "WHERE undelivered = 0 ORDER BY stored_key_id").fetchall()

    def mark_erased(self, stored_key_ids: Sequence[str]) -> None:
        """The key store erased these spent stored keys: the ledger forgets them."""
        with self._tx() as db:
            db.executemany("DELETE FROM etsi014_stored_keys WHERE stored_key_id = ? AND undelivered = 0",
                           [(stored_key_id,) for stored_key_id in stored_key_ids])

    def waiting_keys(self, created_before: float) -> list[tuple[str, str, list[str]]]:
        """(key_id, link_id, stored key ids) of keys some recipient has not fetched, recorded before
        `created_before` (housekeeping: those whose stored keys expired can never be delivered)."""
        with self._lock:
            rows = self._db.execute("SELECT key_id, link_id, segments FROM etsi014_keys "
                                    "WHERE undelivered > 0 AND created_at < ?", (created_before,)).fetchall()
        return [(key_id, link_id, list(dict.fromkeys(segment[0] for segment in json.loads(segments))))
                for key_id, link_id, segments in rows]

    def forget(self, key_ids: Sequence[str], stored_key_ids: Sequence[str]) -> None:
        """Drop keys that can never be delivered and the stored keys they were cut from (gone from the key
        store): nothing is left to erase, and a dec_keys for them answers "not found"."""
        with self._tx() as db:
            db.executemany("DELETE FROM etsi014_keys WHERE key_id = ?", [(key_id,) for key_id in key_ids])
            db.executemany("DELETE FROM etsi014_stored_keys WHERE stored_key_id = ?",
                           [(stored_key_id,) for stored_key_id in stored_key_ids])

    def purge_delivered(self, now: float | None = None, grace_s: float = DELIVERED_GRACE_S) -> int:
        """Forget keys every recipient fetched, recorded more than `grace_s` before `now`; how many."""
        cutoff = (self._clock() if now is None else now) - grace_s
        with self._tx() as db:
            return db.execute("DELETE FROM etsi014_keys WHERE undelivered = 0 AND created_at < ?", (cutoff,)).rowcount


class AlreadyDelivered(LedgerError):
    """A key was delivered to this SAE before."""


def _segments_json(key: ReservedKey) -> str:
    return json.dumps([[s.stored_key_id, s.offset_bytes, s.length_bytes] for s in key.segments])


def _key_from_json(key_id: str, text: str) -> ReservedKey:
    return ReservedKey(key_id, tuple(Segment(stored, offset, length) for stored, offset, length in json.loads(text)))


def _import_version_1(db: sqlite3.Connection) -> None:
    """Move the rows of an earlier layout (tables reserved_keys, recipients, sources, stored_keys, one
    row per key, recipient and source) into the current tables, in the caller's transaction."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reserved_keys'").fetchone() is None:
        return
    for key_id, request_id, link_id, master, size_bits, segments, created_at in db.execute(
            "SELECT key_id, request_id, link_id, master_sae_id, size_bits, segments, created_at "
            "FROM reserved_keys").fetchall():
        recipients = dict(db.execute("SELECT sae_id, delivered_at FROM recipients WHERE key_id = ? ORDER BY rowid",
                                     (key_id,)).fetchall())
        undelivered = sum(1 for delivered_at in recipients.values() if delivered_at is None)
        db.execute("INSERT INTO etsi014_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (key_id, request_id, link_id, master, size_bits, segments, json.dumps(recipients),
                    undelivered, created_at))
    db.execute("INSERT INTO etsi014_stored_keys SELECT st.stored_key_id, st.link_id, "
               "(SELECT COUNT(*) FROM sources so JOIN recipients r ON r.key_id = so.key_id "
               " WHERE so.stored_key_id = st.stored_key_id AND r.delivered_at IS NULL) "
               "FROM stored_keys st WHERE st.erased_at IS NULL")
    for table in ("sources", "recipients", "stored_keys", "reserved_keys"):
        db.execute(f"DROP TABLE {table}")
