"""The TTL deadlines of ETSI 004 chunks, durable: one row per chunk assigned at this end and not fetched yet,
with the wall-clock time its keys are to be erased, in the key store's own SQLite file and connection (so
that recording a chunk and its deadline commit together, with one fsync).

A deadline is wall-clock time (seconds since the epoch) because it must outlive the process: at start-up
the ETSI 004 server erases the chunks whose deadline passed while the daemon was down and runs timers for
the others (Etsi004Server.restore_deadlines). The rows name a key stream id and an index, never a key or a
key id; they hold no key material.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from qkdd.sqlite_batch import Database, SavepointTransactions, create_schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS etsi004_deadlines (
    link_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,          -- the key stream id, 32 hex digits (as in the chunk's holder)
    chunk_index INTEGER NOT NULL,
    expires_at REAL NOT NULL,         -- wall clock: the chunk's keys are erased then if still unfetched
    PRIMARY KEY (link_id, stream_id, chunk_index)
) WITHOUT ROWID;
"""


class DeadlineError(Exception):
    """The deadlines table cannot be read or written (names the file, never a key)."""


class ChunkDeadlines(SavepointTransactions):
    """`ChunkDeadlines(store.database)`: the table in the key store's file. Every method may run inside the
    store's batch() (the same connection), and blocks: call it from a worker thread."""

    def __init__(self, database: Database) -> None:
        self._init_transactions(database)
        try:
            with self._tx() as db:
                create_schema(db, _SCHEMA)
        except sqlite3.Error as exc:
            raise DeadlineError(f"{database.path}: cannot create the ETSI 004 deadlines table: {exc}") from None

    def arm(self, link_id: str, stream_id: str, index: int, expires_at: float) -> None:
        """Record the chunk's deadline; an earlier one recorded for the chunk stays (a chunk's TTL runs from
        the first time it was assigned here)."""
        with self._tx() as db:
            db.execute("INSERT INTO etsi004_deadlines VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET expires_at = "
                       "min(expires_at, excluded.expires_at)", (link_id, _hex(stream_id), index, expires_at))

    def disarm(self, link_id: str, stream_id: str, index: int) -> None:
        """The chunk was handed out or erased: no deadline any more."""
        with self._tx() as db:
            db.execute("DELETE FROM etsi004_deadlines WHERE link_id = ? AND stream_id = ? AND chunk_index = ?",
                       (link_id, _hex(stream_id), index))

    def pending(self, link_id: str) -> dict[tuple[str, int], float]:
        """(stream id hex, index) -> wall-clock deadline of every armed chunk of the link."""
        with self._lock:
            return {(stream, index): expires_at for stream, index, expires_at in self._db.execute(
                "SELECT stream_id, chunk_index, expires_at FROM etsi004_deadlines WHERE link_id = ?", (link_id,))}

    def arm_many(self, link_id: str, deadlines: Iterable[tuple[str, int, float]]) -> None:
        with self._tx() as db:
            db.executemany("INSERT INTO etsi004_deadlines VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           [(link_id, _hex(stream), index, at) for stream, index, at in deadlines])


def _hex(stream_id: str) -> str:
    """A key stream id as the holders spell it: 32 lower-case hex digits."""
    return stream_id.replace("-", "").lower()
