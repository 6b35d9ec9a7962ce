"""The source's durable record of the relay requests it started and has not settled: one row per request,
in the key store's SQLite file, written in the transaction that takes the first link's keys and deleted in
the one that precedes serving the key (service.py rolls back at the destination whatever is left).

Presumed abort: a row that is still here when its request is no longer running (it failed, or this node
was killed and restarted) means the key was never served here, so the destination must not keep it either.
The source sends ROLLBACK (protocol.py) until the destination answers ROLLED_BACK, then deletes the row.

Every sender of a hop (the source, and each relay for its next link) also records the link keys it took and
erased for the FORWARD, in the same transaction. The next node's CONFIRM coming back proves it took them
too, and the row goes (lazily: a row left over only costs a message that changes nothing). A row whose
request ended otherwise (aborted, or this node was killed) asks the next node with ERASE_KEYS to erase what
it still holds of them, so no link key stays at one end only.
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from qkdd.keystore import KeyStoreError
from qkdd.sqlite_batch import Database, SavepointTransactions, create_schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_requests (
    relay_id TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    group_id TEXT NOT NULL,            -- the key id at the destination (the relay id, or a multi-path group)
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS relay_sent_keys (
    relay_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    key_ids TEXT NOT NULL,             -- space-separated, in the FORWARD's order
    created_at REAL NOT NULL,
    PRIMARY KEY (relay_id, link_id)
)
"""


class JournalError(KeyStoreError):
    """The journal could not be read or written (the request it was for does not go on)."""


@dataclass(frozen=True)
class OpenRequest:
    relay_id: str
    destination: str
    group: str
    created_at: float


@dataclass(frozen=True)
class SentKeys:
    relay_id: str
    link_id: str
    key_ids: tuple[str, ...]
    created_at: float


class RelayJournal(SavepointTransactions):
    """Tables in the key store's database (`store.database`): a batch of either is one transaction."""

    def __init__(self, database: Database, *, clock=time.time) -> None:
        self._clock = clock
        self._init_transactions(database)
        try:
            with self._tx() as db:
                create_schema(db, _SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"relay journal: opening failed: {exc}") from None

    def open_request(self, relay_id: str, destination: str, group: str) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO relay_requests VALUES (?, ?, ?, ?)",
                           (relay_id, destination, group or relay_id, self._clock()))
        except sqlite3.Error as exc:
            raise JournalError(f"relay journal: recording a request failed: {exc}") from None

    def close_request(self, relay_id: str) -> bool:
        """Settled (served here, or rolled back at the destination): forget it. Whether it was open."""
        try:
            with self._tx() as db:
                return db.execute("DELETE FROM relay_requests WHERE relay_id = ?", (relay_id,)).rowcount > 0
        except sqlite3.Error as exc:
            raise JournalError(f"relay journal: settling a request failed: {exc}") from None

    def open_requests(self) -> list[OpenRequest]:
        with self._lock:
            rows = self._db.execute("SELECT relay_id, destination, group_id, created_at FROM relay_requests "
                                    "ORDER BY created_at").fetchall()
        return [OpenRequest(*row) for row in rows]

    def record_sent(self, relay_id: str, link_id: str, key_ids: tuple[str, ...] | list[str]) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO relay_sent_keys VALUES (?, ?, ?, ?)",
                           (relay_id, link_id, " ".join(key_ids), self._clock()))
        except sqlite3.Error as exc:
            raise JournalError(f"relay journal: recording a hop's keys failed: {exc}") from None

    def forget_sent(self, entries) -> None:
        """Forget the hops (relay id, link id) whose keys the next node took or erased."""
        try:
            with self._tx() as db:
                db.executemany("DELETE FROM relay_sent_keys WHERE relay_id = ? AND link_id = ?", list(entries))
        except sqlite3.Error as exc:
            raise JournalError(f"relay journal: forgetting a hop's keys failed: {exc}") from None

    def sent_keys(self) -> list[SentKeys]:
        with self._lock:
            rows = self._db.execute("SELECT relay_id, link_id, key_ids, created_at FROM relay_sent_keys "
                                    "ORDER BY created_at").fetchall()
        return [SentKeys(relay_id, link_id, tuple(ids.split()), created_at) for relay_id, link_id, ids, created_at
                in rows]
