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
    # Savepoints (every method inside batch()) keep the original of each page they change in a statement
    # journal, a temporary file by default (sqlite.org/tempfiles.html, "Statement Journal Files"): in
    # memory it costs no file I/O (a third less CPU per ETSI 014 reservation recorded in a group, measured
    # with bench-like batches of 6), and no page copy (sealed key material included) lands outside the
    # database file.
    db.execute("PRAGMA temp_store=MEMORY")
    if secure_delete:
        db.execute("PRAGMA secure_delete=ON")     # freed pages are zeroed
    db.execute("PRAGMA foreign_keys=ON")
    return db


def create_schema(db: sqlite3.Connection, schema: str) -> None:
    """Run each statement of `schema` (executescript() would commit an open transaction)."""
    for statement in schema.split(";"):
        if statement.strip():
            db.execute(statement)


class Database:
    """One SQLite connection (see connect()), its lock and its transaction depth. Several stores may share
    one (the ETSI 014 ledger lives in the key store's file): then a batch() of either groups both."""

    def __init__(self, path: str, *, secure_delete: bool = False) -> None:
        self.path = path
        self.connection = connect(path, secure_delete=secure_delete)
        self.lock = threading.RLock()
        self.depth = 0                      # > 0 inside a transaction: methods run in savepoints of it

    def close(self) -> None:
        with self.lock:
            self.connection.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A transaction, or a savepoint of the one this thread has open."""
        with self.lock:
            db = self.connection
            if self.depth:
                if not db.in_transaction:       # SQLite rolled back the group's transaction on an error
                    raise sqlite3.OperationalError("the enclosing transaction was rolled back by an earlier error")
                self.depth += 1
                db.execute("SAVEPOINT method")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:        # else SQLite rolled the whole transaction back (disk full)
                        db.execute("ROLLBACK TO method")
                        db.execute("RELEASE method")
                    raise
                finally:
                    self.depth -= 1
                db.execute("RELEASE method")
                return
            db.execute("BEGIN IMMEDIATE")
            self.depth = 1
            try:
                yield db
            except BaseException:
                _rollback(db)
                raise
            finally:
                self.depth = 0
            try:
                db.execute("COMMIT")
            except sqlite3.Error:
                _rollback(db)           # a COMMIT that failed (disk full, I/O error) may leave it open
                raise


def _rollback(db: sqlite3.Connection) -> None:
    """End the open transaction, if SQLite has not already rolled it back on an error (SQLITE_FULL,
    SQLITE_IOERR, SQLITE_NOMEM may: sqlite.org/lang_transaction.html): a connection left inside a
    transaction would refuse every later BEGIN."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


class SavepointTransactions:
    """Mixin: subclasses call `_init_transactions(database)` and then use `self._db` (the connection,
    under `self._lock`) and `self._tx()`."""

    database: Database

    def _init_transactions(self, database: Database) -> None:
        self.database = database
        self._db = database.connection
        self._lock = database.lock

    def close(self) -> None:
        self.database.close()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file and truncate it to zero bytes, so erased rows'
        old page images (secure_delete zeroes the database's own pages) leave the WAL file too."""
        with self._lock:
            if self.database.depth == 0:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: the methods called from this thread inside the block share one transaction."""
        with self.database.transaction():
            yield

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self.database.transaction()
