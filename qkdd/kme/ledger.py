"""The slave KME's record of ETSI 014 reservations (SQLite, WAL, synchronous=FULL): which keys, made of
which stored keys, for which master and slave SAEs, and who has received each key.

It holds no key material: the material stays sealed in the key store (reserved for the reservation)
until every slave has its copy; then the stored keys are erased. A recipient row's `delivered_at` is set
once, in one transaction for the whole request, so no key reaches the same SAE twice, also across a
crash (kill -9) and restart.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from qkdd.kme.reservation import Reservation, ReservedKey, Segment
from qkdd.sqlite_batch import SavepointTransactions, connect, create_schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reserved_keys (
    key_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    master_sae_id TEXT NOT NULL,
    size_bits INTEGER NOT NULL,
    segments TEXT NOT NULL,           -- JSON [[stored_key_id, offset_bytes, length_bytes], ...]
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    key_id TEXT NOT NULL REFERENCES reserved_keys (key_id),
    sae_id TEXT NOT NULL,
    delivered_at REAL,
    PRIMARY KEY (key_id, sae_id)
);
CREATE TABLE IF NOT EXISTS sources (
    stored_key_id TEXT NOT NULL,
    key_id TEXT NOT NULL REFERENCES reserved_keys (key_id),
    PRIMARY KEY (stored_key_id, key_id)
);
CREATE TABLE IF NOT EXISTS stored_keys (
    stored_key_id TEXT PRIMARY KEY,
    link_id TEXT NOT NULL,
    erased_at REAL                    -- set once the key store erased it
);
CREATE INDEX IF NOT EXISTS reserved_keys_by_request ON reserved_keys (request_id);
CREATE INDEX IF NOT EXISTS stored_keys_not_erased ON stored_keys (stored_key_id) WHERE erased_at IS NULL;
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
    def __init__(self, path: str, *, clock=time.time) -> None:
        self.path = path
        self._clock = clock
        self._init_transactions()
        try:
            self._db = connect(path)
            with self._tx() as db:
                create_schema(db, _SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ETSI 014 ledger {path}: {exc}") from None
        os.chmod(path, 0o600)

    def record(self, link_id: str, reservation: Reservation) -> bool:
        """Record a reservation (all keys, all recipients); False if it was recorded before (a resend).
        LedgerError if a key id is already taken by another request."""
        now = self._clock()
        try:
            with self._tx() as db:
                db.executemany("INSERT INTO reserved_keys VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(key.key_id, reservation.request_id, link_id, reservation.master_sae_id,
                                 reservation.size_bits, _segments_json(key), now) for key in reservation.keys])
                db.executemany("INSERT INTO recipients (key_id, sae_id) VALUES (?, ?)",
                               [(key.key_id, sae_id) for key in reservation.keys
                                for sae_id in reservation.slave_sae_ids])
                db.executemany("INSERT OR IGNORE INTO sources VALUES (?, ?)",
                               [(segment.stored_key_id, key.key_id) for key in reservation.keys
                                for segment in key.segments])
                db.executemany("INSERT OR IGNORE INTO stored_keys (stored_key_id, link_id) VALUES (?, ?)",
                               [(stored_key_id, link_id) for stored_key_id in reservation.stored_key_ids()])
            return True
        except sqlite3.IntegrityError:     # rolled back; a resend of this request, or a key id taken
            pass
        with self._lock:
            row = self._db.execute("SELECT request_id FROM reserved_keys WHERE key_id = ?",
                                   (reservation.keys[0].key_id,)).fetchone()
        if row is not None and row[0] == reservation.request_id:
            return False
        raise LedgerError(f"request {reservation.request_id}: a key id is already recorded")

    def lookup(self, key_ids: Sequence[str]) -> dict[str, LedgerEntry]:
        """The entries of the key ids that are recorded (missing ids are absent from the result)."""
        entries: dict[str, LedgerEntry] = {}
        with self._lock:
            for key_id in key_ids:
                row = self._db.execute("SELECT request_id, link_id, master_sae_id, size_bits, segments "
                                       "FROM reserved_keys WHERE key_id = ?", (key_id,)).fetchone()
                if row is None:
                    continue
                recipients = dict(self._db.execute("SELECT sae_id, delivered_at FROM recipients WHERE key_id = ?",
                                                   (key_id,)).fetchall())
                entries[key_id] = LedgerEntry(key_id, row[0], row[1], row[2], row[3],
                                              _key_from_json(key_id, row[4]), recipients)
        return entries

    def mark_delivered(self, key_ids: Sequence[str], sae_id: str) -> None:
        """Mark the keys delivered to `sae_id`, all or none; AlreadyDelivered if any reached it before."""
        now = self._clock()
        with self._tx() as db:
            for key_id in key_ids:
                changed = db.execute("UPDATE recipients SET delivered_at = ? WHERE key_id = ? AND sae_id = ? "
                                     "AND delivered_at IS NULL", (now, key_id, sae_id)).rowcount
                if changed != 1:
                    raise AlreadyDelivered(f"key {key_id} was delivered to this SAE before")

    def spent_stored_keys(self) -> list[tuple[str, str]]:
        """(link_id, stored_key_id) of stored keys not yet erased whose every key has reached every
        recipient: the key store may erase them now."""
        with self._lock:
            return self._db.execute(
                "SELECT st.link_id, st.stored_key_id FROM stored_keys st WHERE st.erased_at IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM sources so JOIN recipients r ON r.key_id = so.key_id "
                " WHERE so.stored_key_id = st.stored_key_id AND r.delivered_at IS NULL) "
                "ORDER BY st.stored_key_id").fetchall()

    def mark_erased(self, stored_key_ids: Sequence[str]) -> None:
        now = self._clock()
        with self._tx() as db:
            db.executemany("UPDATE stored_keys SET erased_at = ? WHERE stored_key_id = ?",
                           [(now, stored_key_id) for stored_key_id in stored_key_ids])



class AlreadyDelivered(LedgerError):
    """A key was delivered to this SAE before."""


def _segments_json(key: ReservedKey) -> str:
    return json.dumps([[s.stored_key_id, s.offset_bytes, s.length_bytes] for s in key.segments])


def _key_from_json(key_id: str, text: str) -> ReservedKey:
    return ReservedKey(key_id, tuple(Segment(stored, offset, length) for stored, offset, length in json.loads(text)))
