"""The ETSI 014 pieces without sockets: keys cut from stored keys, the slave's ledger and the key store's
group commit (real SQLite files). The reservation exchange itself: tests/test_reservation_protocol.py."""
from __future__ import annotations

import base64
import os
import uuid

import pytest

from qkdd.keystore import KeyState, KeyStore, KeyUnavailable
from qkdd.kme.container import assemble, key_container, plan_keys
from qkdd.kme.ledger import AlreadyDelivered, Ledger, LedgerError
from qkdd.reservation.protocol import Etsi014Reservation


def stored_keys(count: int, bits: int = 256) -> list[tuple[str, bytes]]:
    return [(str(uuid.uuid4()), os.urandom(bits // 8)) for _ in range(count)]


def reservation(number: int = 3, size_bits: int = 512,
                slaves=("sae-b",)) -> tuple[Etsi014Reservation, dict[str, bytes]]:
    stored = stored_keys(number * size_bits // 256 + 1)
    keys = plan_keys([(key_id, len(material) * 8) for key_id, material in stored], number, size_bits)
    return Etsi014Reservation(str(uuid.uuid4()), "sae-a", tuple(slaves), size_bits, keys), dict(stored)


@pytest.mark.parametrize("number, size_bits", [(1, 256), (4, 64), (3, 512), (2, 200), (5, 8)])
def test_keys_cut_from_and_assembled_out_of_stored_keys(number, size_bits):
    stored = stored_keys(8)
    keys = plan_keys([(key_id, 256) for key_id, _ in stored], number, size_bits)
    stream = b"".join(material for _, material in stored)
    materials = dict(stored)
    assert [assemble(key, materials) for key in keys] == [
        stream[i * size_bits // 8:(i + 1) * size_bits // 8] for i in range(number)]
    container = key_container([(key.key_id, assemble(key, materials)) for key in keys])
    for item, key in zip(container["keys"], keys):                       # standard, padded base64 (RFC 4648 §4)
        assert len(item["key"]) % 4 == 0
        assert base64.b64decode(item["key"], validate=True) == assemble(key, materials)
    with pytest.raises(ValueError):
        plan_keys([(stored[0][0], 256)], 2, 256)


def test_ledger_delivers_once_per_recipient_and_survives_reopening(tmp_path):
    request, _ = reservation(number=2, size_bits=256, slaves=("sae-b", "sae-d"))
    ledger = Ledger(str(tmp_path / "etsi014.db"))
    assert ledger.record("a-b", request) is True
    assert ledger.record("a-b", request) is False                         # a resend records nothing twice
    key_ids = [key.key_id for key in request.keys]
    assert ledger.mark_delivered(key_ids, "sae-b") == []                  # sae-d has not fetched yet
    with pytest.raises(AlreadyDelivered):
        ledger.mark_delivered(key_ids, "sae-b")
    assert ledger.spent_stored_keys() == []
    ledger.close()
    reopened = Ledger(str(tmp_path / "etsi014.db"))
    assert reopened.lookup(key_ids)[key_ids[0]].recipients["sae-b"] is not None
    spent = reopened.mark_delivered(key_ids, "sae-d")
    assert sorted(stored for _, stored in spent) == sorted(request.stored_key_ids())
    assert sorted(reopened.spent_stored_keys()) == sorted(spent)
    other = Etsi014Reservation(str(uuid.uuid4()), "sae-a", ("sae-b",), 256, request.keys[:1])
    with pytest.raises(LedgerError):
        reopened.record("a-b", other)                                     # a key id is never reused


def test_key_store_batch_commits_once_and_keeps_each_method_atomic(tmp_path):
    store = KeyStore(str(tmp_path / "keys.db"), os.urandom(32))
    assert store._db.execute("PRAGMA temp_store").fetchone()[0] == 2      # savepoint journals in memory
    keys = stored_keys(4)
    store.put_pending("a-b", 0, keys, expires_at=4e9)
    store.commit_frame("a-b", 0)
    with store.batch():
        taken = store.reserve_available("a-b", 2, "h1", bits=256)         # two 256-bit keys
        with pytest.raises(KeyUnavailable):
            store.reserve_available("a-b", 40, "h2")                      # fails alone, leaves no trace
        store.deliver("a-b", taken[0], holder="h1")
    assert [store.peek("a-b", key_id).bits for key_id in taken[1:]] == [256]
    assert store.counts("a-b")[KeyState.DELIVERED] == 1
    assert store.counts("a-b")[KeyState.RESERVED] == 1
    assert store.counts("a-b")[KeyState.AVAILABLE] == 2
    with pytest.raises(RuntimeError):
        with store.batch():
            store.reserve_available("a-b", 1, "h3")
            raise RuntimeError("the whole batch rolls back")
    assert store.counts("a-b")[KeyState.AVAILABLE] == 2


def test_sae_id_from_certificate_cn_or_san_uri():
    from qkdd.http.messages import PeerCertificate
    from qkdd.kme.config import Etsi014Config
    from qkdd.kme.identity import sae_id_of
    cert = PeerCertificate("CN=sae-a", "sae-a", ("urn:sae:alpha", "https://other"), (), "00")
    assert sae_id_of(cert, Etsi014Config(kme_id="kme-a")) == "sae-a"
    by_uri = Etsi014Config(kme_id="kme-a", sae_id_from="san_uri", san_uri_prefix="urn:sae:")
    assert sae_id_of(cert, by_uri) == "urn:sae:alpha"
    assert sae_id_of(PeerCertificate("CN=x", "x", (), (), "00"), by_uri) is None
    assert sae_id_of(None, by_uri) is None


def test_key_ids_are_canonical_version_7_uuids_in_time_order():
    """RFC 9562 §5.7: unix_ts_ms in the first 48 bits, version 7, variant 10, the rest random."""
    from qkdd.kme.container import time_ordered_uuid
    ids = [time_ordered_uuid() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    # RFC 9562 Appendix A.6 test vector time: 2022-02-22 19:22:22 UTC = 0x017F22E279B0 ms
    fixed = time_ordered_uuid(lambda: 1645557742000 * 1_000_000)
    assert fixed.startswith("017f22e2-79b0-7") and fixed[19] in "89ab"
    later = [time_ordered_uuid(lambda ms=ms: ms * 1_000_000) for ms in (1645557742000, 1645557742001, 1645557743000)]
    assert later == sorted(later)
    assert len({time_ordered_uuid(lambda: 0)[14:] for _ in range(100)}) == 100      # 74 random bits


def test_ledger_forgets_delivered_keys_after_their_grace(tmp_path):
    now = [1000.0]
    ledger = Ledger(str(tmp_path / "etsi014.db"), clock=lambda: now[0])
    done, _ = reservation(number=2, size_bits=256)
    waiting, _ = reservation(number=1, size_bits=256)
    ledger.record("a-b", done)
    ledger.record("a-b", waiting)
    spent = ledger.mark_delivered([key.key_id for key in done.keys], "sae-b")
    assert sorted(stored for _, stored in spent) == sorted(done.stored_key_ids())
    assert ledger.purge_delivered(now=1000.0 + 3599) == 0               # within the grace: still answers
    assert ledger.purge_delivered(now=1000.0 + 3601) == 2
    assert set(ledger.lookup([key.key_id for key in done.keys + waiting.keys])) == {waiting.keys[0].key_id}


def test_a_stored_key_feeding_several_keys_is_spent_when_the_last_of_them_is_delivered(tmp_path):
    ledger = Ledger(str(tmp_path / "etsi014.db"))
    request, _ = reservation(number=4, size_bits=64)          # four 64-bit keys out of one 256-bit stored key
    shared = request.keys[0].segments[0].stored_key_id
    assert {key.segments[0].stored_key_id for key in request.keys} == {shared}
    ledger.record("a-b", request)
    key_ids = [key.key_id for key in request.keys]
    assert ledger.mark_delivered(key_ids[:3], "sae-b") == []             # the fourth still needs it
    assert ledger.spent_stored_keys() == []
    assert ledger.mark_delivered(key_ids[3:], "sae-b") == [("a-b", shared)]
    assert ledger.spent_stored_keys() == [("a-b", shared)]                # what a restart would erase again


def test_ledger_imports_the_rows_of_its_earlier_layout(tmp_path):
    import json
    import sqlite3
    path = str(tmp_path / "etsi014.db")
    request, _ = reservation(number=2, size_bits=256, slaves=("sae-b", "sae-d"))
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE reserved_keys (key_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, link_id TEXT NOT NULL,
            master_sae_id TEXT NOT NULL, size_bits INTEGER NOT NULL, segments TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE recipients (key_id TEXT NOT NULL, sae_id TEXT NOT NULL, delivered_at REAL,
            PRIMARY KEY (key_id, sae_id));
        CREATE TABLE sources (stored_key_id TEXT NOT NULL, key_id TEXT NOT NULL, PRIMARY KEY (stored_key_id, key_id));
        CREATE TABLE stored_keys (stored_key_id TEXT PRIMARY KEY, link_id TEXT NOT NULL, erased_at REAL);
    """)
    for key in request.keys:
        segments = json.dumps([[s.stored_key_id, s.offset_bytes, s.length_bytes] for s in key.segments])
        old.execute("INSERT INTO reserved_keys VALUES (?, ?, 'a-b', 'sae-a', 256, ?, 5.0)",
                    (key.key_id, request.request_id, segments))
        old.execute("INSERT INTO recipients VALUES (?, 'sae-b', 7.0)", (key.key_id,))      # sae-b has it
        old.execute("INSERT INTO recipients VALUES (?, 'sae-d', NULL)", (key.key_id,))
        for segment in key.segments:
            old.execute("INSERT OR IGNORE INTO sources VALUES (?, ?)", (segment.stored_key_id, key.key_id))
            old.execute("INSERT OR IGNORE INTO stored_keys VALUES (?, 'a-b', NULL)", (segment.stored_key_id,))
    old.commit()
    old.close()
    ledger = Ledger(path)
    key_ids = [key.key_id for key in request.keys]
    entries = ledger.lookup(key_ids)
    assert [entries[key_id].recipients for key_id in key_ids] == [{"sae-b": 7.0, "sae-d": None}] * 2
    assert entries[key_ids[0]].key == request.keys[0]
    with pytest.raises(AlreadyDelivered):
        ledger.mark_delivered(key_ids, "sae-b")
    assert ledger.spent_stored_keys() == []
    spent = ledger.mark_delivered(key_ids, "sae-d")
    assert sorted(stored for _, stored in spent) == sorted(request.stored_key_ids())
    tables = {row[0] for row in ledger._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"etsi014_keys"}
