"""The slave KME's record of ETSI 014 reservations (SQLite, WAL, synchronous=FULL): which keys, made of
which stored keys, for which master and slave SAEs, and who has received each key.

It holds no key material: the material stays sealed in the key store (reserved for the reservation)
until every slave has its copy; then the stored keys are erased. A recipient's delivery time is set once,
in one transaction for the whole request, so no key reaches the same SAE twice, also across a crash
(kill -9) and restart.

By default the ledger's table lives in the key store's own file and connection (`Ledger(database=
store.database)`): a reservation and the key-store reservation of its stored keys then commit together,
with one fsync. One row per key, so recording a reservation writes few pages: the recipients of a key
are a JSON object in its row, with a count of those still to fetch it (`undelivered`). A stored key
belongs to one reservation only (the key store reserves it for that request's holder), so it is spent
once every key of that reservation cut from it has reached every recipient: each row names the keys of
its reservation that share a stored key with it (`shares`, usually none).

Every SQLite error out of a Ledger method is a LedgerError naming the ledger's file and what failed.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from qkdd.reservation.protocol import Etsi014Reservation, ReservedKey, Segment
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
    shares TEXT NOT NULL,             -- JSON [key_id, ...] of its request's keys cut from a stored key it uses
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS etsi014_keys_delivered ON etsi014_keys (created_at) WHERE undelivered = 0;
"""


class LedgerError(Exception):
    """The ledger cannot do what was asked (never carries key material, which it never holds)."""


_Method = TypeVar("_Method", bound=Callable)


def _failing_as(what: str) -> Callable[[_Method], _Method]:
    """Decorator of a Ledger method: an sqlite3.Error out of it becomes a LedgerError saying `what` failed."""
    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def wrapper(self: "Ledger", *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise self._error(what, exc) from exc
        return wrapper  # type: ignore[return-value]
    return decorate


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
        except sqlite3.Error as exc:
            raise self._error("opening", exc) from None
        if path is not None:
            os.chmod(path, 0o600)

    def _error(self, what: str, exc: sqlite3.Error) -> LedgerError:
        return LedgerError(f"ETSI 014 ledger {self.path}: {what} failed: {exc}")

    @_failing_as("closing")
    def close(self) -> None:
        """Close the ledger's own file (a shared database is its owner's to close)."""
        if self._owns_database:
            super().close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit (SavepointTransactions.batch). A failure of the batch's own BEGIN, COMMIT or
        ROLLBACK is a LedgerError; whatever the block raises (a key store's sqlite3.Error too) passes as is."""
        entered, raised = False, None
        try:
            with self.database.transaction():
                entered = True
                try:
                    yield
                except BaseException as exc:
                    raised = exc
                    raise
        except sqlite3.Error as exc:
            if exc is raised:
                raise
            what = "starting" if not entered else "rolling back" if raised is not None else "committing"
            raise self._error(f"{what} a batch", exc) from exc

    @_failing_as("recording a reservation")
    def record(self, link_id: str, reservation: Etsi014Reservation) -> bool:
        """Record a reservation (all keys, all recipients); False if it was recorded before (a resend).
        LedgerError if a key id is already taken by another request."""
        now = self._clock()
        slaves = reservation.slave_sae_ids
        recipients = json.dumps(dict.fromkeys(slaves))
        users: dict[str, list[str]] = {}
        for key in reservation.keys:
            for stored_key_id in {segment.stored_key_id for segment in key.segments}:
                users.setdefault(stored_key_id, []).append(key.key_id)
        try:
            with self._tx() as db:
                db.executemany("INSERT INTO etsi014_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [(key.key_id, reservation.request_id, link_id, reservation.master_sae_id,
                                 reservation.size_bits, _segments_json(key), recipients, len(slaves),
                                 _shares_json(key, users), now)
                                for key in reservation.keys])
            return True
        except sqlite3.IntegrityError:     # rolled back; a resend of this request, or a key id taken
            pass
        with self._lock:
            row = self._db.execute("SELECT request_id FROM etsi014_keys WHERE key_id = ?",
                                   (reservation.keys[0].key_id,)).fetchone()
        if row is not None and row[0] == reservation.request_id:
            return False
        raise LedgerError(f"request {reservation.request_id}: a key id is already recorded")

    @_failing_as("looking up keys")
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

    @_failing_as("marking keys delivered")
    def mark_delivered(self, key_ids: Sequence[str], sae_id: str) -> list[tuple[str, str]]:
        """Mark the keys delivered to `sae_id`, all or none; AlreadyDelivered if any reached it before.
        Returns (link_id, stored_key_id) of the stored keys this spent: the key store may erase them."""
        now = self._clock()
        with self._tx() as db:
            done = []
            for key_id in key_ids:
                row = db.execute("SELECT recipients, undelivered FROM etsi014_keys WHERE key_id = ?",
                                 (key_id,)).fetchone()
                if row is None:
                    raise LedgerError(f"key {key_id} is not recorded")
                recipients = json.loads(row[0])
                if sae_id not in recipients:
                    raise LedgerError(f"key {key_id} was not reserved for this SAE")
                if recipients[sae_id] is not None:
                    raise AlreadyDelivered(f"key {key_id} was delivered to this SAE before")
                recipients[sae_id] = now
                db.execute("UPDATE etsi014_keys SET recipients = ?, undelivered = undelivered - 1 WHERE key_id = ?",
                           (json.dumps(recipients), key_id))
                if row[1] == 1:
                    done.append(key_id)
            return _spent_by(db, done)

    @_failing_as("listing spent stored keys")
    def spent_stored_keys(self) -> list[tuple[str, str]]:
        """(link_id, stored_key_id) of the stored keys of fully delivered keys that no waiting key shares:
        the key store may erase them. For start-up, to finish what a crash between the ledger's and the key
        store's commits left undone when the ledger has a file of its own; stored keys erased before come
        back too (until their keys are purged), and the caller skips them."""
        with self._lock:
            done = [row[0] for row in self._db.execute("SELECT key_id FROM etsi014_keys WHERE undelivered = 0")]
            return _spent_by(self._db, done)

    @_failing_as("listing waiting keys")
    def waiting_keys(self, created_before: float) -> list[tuple[str, str, list[str]]]:
        """(key_id, link_id, stored key ids) of keys some recipient has not fetched, recorded before
        `created_before` (housekeeping: those whose stored keys expired can never be delivered)."""
        with self._lock:
            rows = self._db.execute("SELECT key_id, link_id, segments FROM etsi014_keys "
                                    "WHERE undelivered > 0 AND created_at < ?", (created_before,)).fetchall()
        return [(key_id, link_id, _stored_key_ids(segments)) for key_id, link_id, segments in rows]

    @_failing_as("forgetting keys")
    def forget(self, key_ids: Sequence[str]) -> None:
        """Drop keys that can never be delivered (their stored keys are gone from the key store): a
        dec_keys for them then answers "not found"."""
        with self._tx() as db:
            db.executemany("DELETE FROM etsi014_keys WHERE key_id = ?", [(key_id,) for key_id in key_ids])

    @_failing_as("forgetting the keys of a stored key")
    def forget_stored(self, link_id: str, stored_key_id: str) -> list[str]:
        """Drop the keys cut from stored key `stored_key_id` of `link_id` that some recipient has not fetched
        (the stored key was withdrawn: a relayed key its source rolled back); a dec_keys for them then answers
        as for a key never recorded. Fully delivered keys stay ("delivered before"). The key ids dropped."""
        pattern = "%" + json.dumps(stored_key_id) + "%"      # in the segments' JSON [[stored_key_id, ...], ...]
        with self._tx() as db:
            rows = db.execute("SELECT key_id, segments FROM etsi014_keys WHERE link_id = ? AND undelivered > 0 "
                              "AND segments LIKE ?", (link_id, pattern)).fetchall()
            gone = [key_id for key_id, segments in rows if stored_key_id in _stored_key_ids(segments)]
            db.executemany("DELETE FROM etsi014_keys WHERE key_id = ?", [(key_id,) for key_id in gone])
        return gone

    @_failing_as("purging delivered keys")
    def purge_delivered(self, now: float | None = None, grace_s: float = DELIVERED_GRACE_S) -> int:
        """Forget keys every recipient fetched, recorded more than `grace_s` before `now`; how many."""
        cutoff = (self._clock() if now is None else now) - grace_s
        with self._tx() as db:
            return db.execute("DELETE FROM etsi014_keys WHERE undelivered = 0 AND created_at < ?", (cutoff,)).rowcount


class AlreadyDelivered(LedgerError):
    """A key was delivered to this SAE before."""


def _spent_by(db: sqlite3.Connection, done_key_ids: Sequence[str]) -> list[tuple[str, str]]:
    """The stored keys of the fully delivered `done_key_ids` that no key sharing them still waits for."""
    spent: dict[tuple[str, str], None] = {}
    for key_id in done_key_ids:
        link_id, segments, shares = db.execute("SELECT link_id, segments, shares FROM etsi014_keys WHERE key_id = ?",
                                               (key_id,)).fetchone()
        waiting: set[str] = set()          # stored keys a sharing key still needs
        for other in json.loads(shares):
            row = db.execute("SELECT segments, undelivered FROM etsi014_keys WHERE key_id = ?", (other,)).fetchone()
            if row is not None and row[1] > 0:
                waiting.update(_stored_key_ids(row[0]))
        for stored_key_id in _stored_key_ids(segments):
            if stored_key_id not in waiting:
                spent[(link_id, stored_key_id)] = None
    return list(spent)


def _stored_key_ids(segments_json: str) -> list[str]:
    """The stored keys a key's `segments` column names, once each, in order of first use."""
    return list(dict.fromkeys(segment[0] for segment in json.loads(segments_json)))


def _shares_json(key: ReservedKey, users: dict[str, list[str]]) -> str:
    """The other keys of the reservation cut from a stored key `key` uses (`users`: stored key -> keys)."""
    others = {other for segment in key.segments for other in users[segment.stored_key_id] if other != key.key_id}
    return json.dumps(sorted(others))


def _segments_json(key: ReservedKey) -> str:
    return json.dumps([[s.stored_key_id, s.offset_bytes, s.length_bytes] for s in key.segments])


def _key_from_json(key_id: str, text: str) -> ReservedKey:
    return ReservedKey(key_id, tuple(Segment(stored, offset, length) for stored, offset, length in json.loads(text)))


def _import_version_1(db: sqlite3.Connection) -> None:
    """Move the rows of an earlier layout (tables reserved_keys, recipients, sources, stored_keys, one
    row per key, recipient and source) into the current table, in the caller's transaction."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reserved_keys'").fetchone() is None:
        return
    for key_id, request_id, link_id, master, size_bits, segments, created_at in db.execute(
            "SELECT key_id, request_id, link_id, master_sae_id, size_bits, segments, created_at "
            "FROM reserved_keys").fetchall():
        recipients = dict(db.execute("SELECT sae_id, delivered_at FROM recipients WHERE key_id = ? ORDER BY rowid",
                                     (key_id,)).fetchall())
        undelivered = sum(1 for delivered_at in recipients.values() if delivered_at is None)
        shares = sorted(row[0] for row in db.execute(
            "SELECT DISTINCT other.key_id FROM sources mine JOIN sources other "
            "ON other.stored_key_id = mine.stored_key_id WHERE mine.key_id = ? AND other.key_id != ?",
            (key_id, key_id)))
        db.execute("INSERT INTO etsi014_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (key_id, request_id, link_id, master, size_bits, segments, json.dumps(recipients),
                    undelivered, json.dumps(shares), created_at))
    for table in ("sources", "recipients", "stored_keys", "reserved_keys"):
        db.execute(f"DROP TABLE {table}")
