"""Every SQLite failure out of the ETSI 014 ledger is a LedgerError naming its file and what failed (real
SQLite files, made read-only or closed under it); errors of the caller's own inside a batch pass as they are."""
from __future__ import annotations

import os
import sqlite3

import pytest

from qkdd.keystore import KeyStore
from qkdd.kme.ledger import Ledger, LedgerError
from tests.test_kme_ledger import reservation


def recorded_ledger(tmp_path) -> tuple[Ledger, list[str]]:
    ledger = Ledger(str(tmp_path / "etsi014.db"))
    request, _ = reservation(number=2, size_bits=256)
    ledger.record("a-b", request)
    return ledger, [key.key_id for key in request.keys]


def test_writes_to_a_read_only_ledger_are_ledger_errors(tmp_path):
    ledger, key_ids = recorded_ledger(tmp_path)
    ledger.database.connection.execute("PRAGMA query_only=ON")
    other, _ = reservation()
    for call, what in [(lambda: ledger.record("a-b", other), "recording a reservation"),
                       (lambda: ledger.mark_delivered(key_ids, "sae-b"), "marking keys delivered"),
                       (lambda: ledger.forget(key_ids), "forgetting keys"),
                       (lambda: ledger.purge_delivered(), "purging delivered keys")]:
        with pytest.raises(LedgerError) as failed:
            call()
        assert str(failed.value) == (f"ETSI 014 ledger {tmp_path / 'etsi014.db'}: {what} failed: "
                                     "attempt to write a readonly database")
        assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
    assert set(ledger.lookup(key_ids)) == set(key_ids)                   # reads still work, nothing changed


def test_reads_of_a_closed_ledger_are_ledger_errors(tmp_path):
    ledger, key_ids = recorded_ledger(tmp_path)
    ledger.close()
    for call in (lambda: ledger.lookup(key_ids), ledger.spent_stored_keys,
                 lambda: ledger.waiting_keys(created_before=4e9)):
        with pytest.raises(LedgerError, match="closed database"):
            call()


def test_a_file_that_is_not_a_ledger_is_a_ledger_error(tmp_path):
    path = tmp_path / "etsi014.db"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(LedgerError, match="opening failed"):
        Ledger(str(path))


def test_a_batch_that_cannot_start_commit_or_roll_back_is_a_ledger_error(tmp_path):
    ledger, key_ids = recorded_ledger(tmp_path)
    ledger.database.connection.execute("PRAGMA query_only=ON")
    with pytest.raises(LedgerError, match="starting a batch failed"):
        with ledger.batch():
            pass
    ledger.database.connection.execute("PRAGMA query_only=OFF")
    with pytest.raises(LedgerError, match="committing a batch failed: Cannot operate on a closed database"):
        with ledger.batch():
            ledger.forget(key_ids[:1])
            ledger.database.connection.close()
    reopened = Ledger(str(tmp_path / "etsi014.db"))
    assert set(reopened.lookup(key_ids)) == set(key_ids)                 # the forget never committed
    with pytest.raises(LedgerError, match="rolling back a batch failed") as failed:
        with reopened.batch():
            reopened.database.connection.close()
            raise ValueError("the caller's own failure")
    assert isinstance(failed.value.__context__.__context__, ValueError)


def test_an_sqlite_error_of_the_caller_inside_a_batch_passes_unchanged_and_rolls_back(tmp_path):
    """The ledger in the key store's file: a key store statement failing inside the ledger's batch is the
    caller's error, not the ledger's, and the ledger's writes in the block are undone."""
    store = KeyStore(str(tmp_path / "keys.db"), os.urandom(32))
    ledger = Ledger(database=store.database)
    request, _ = reservation()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        with ledger.batch():
            ledger.record("a-b", request)
            store.database.connection.execute("SELECT * FROM no_such_table")
    assert ledger.lookup([key.key_id for key in request.keys]) == {}
