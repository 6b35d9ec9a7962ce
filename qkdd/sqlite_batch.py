"""One SQLite connection shared by threads, where every method is a transaction and `batch()` groups them.

Used by the key store and the ETSI 014 ledger: each public method runs in `self._tx()`; inside
`batch()` the methods share one transaction (one fsync) and each becomes a savepoint, so one that
raises leaves no trace while the others still commit at the end of the block.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator


def connect(path: str, *, secure_delete: bool = False) -> sqlite3.Connection:
    """A connection for SavepointTransactions: autocommit mode, WAL, synchronous=FULL, foreign keys."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    if secure_delete:
        db.execute("PRAGMA secure_delete=ON")     # freed pages are zeroed
    db.execute("PRAGMA foreign_keys=ON")
    return db


def create_schema(db: sqlite3.Connection, schema: str) -> None:
    """Run each statement of `schema` (executescript() would commit an open transaction)."""
    for statement in schema.split(";"):
        if statement.strip():
            db.execute(statement)


class SavepointTransactions:
    """Mixin: subclasses set `self._db` (isolation_level=None) and call `_init_transactions()`."""

    _db: sqlite3.Connection

    def _init_transactions(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0                     # > 0 inside batch(): methods run in savepoints of one transaction

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: the methods called from this thread inside the block share one transaction."""
        with self._tx():
            yield

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._depth:
                self._depth += 1
                self._db.execute("SAVEPOINT method")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK TO method")
                    self._db.execute("RELEASE method")
                    raise
                finally:
                    self._depth -= 1
                self._db.execute("RELEASE method")
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self._db.execute("COMMIT")
