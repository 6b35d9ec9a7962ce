"""The key lifecycle audit trail on a real key store (SQLite file): every event once, ids and sizes only,
signed heads; `qkdctl audit verify` finds an edited, deleted or reordered record, and a rewritten chain;
erased keys leave no trace of their material in the store's files."""
import json
import os
import sqlite3
import uuid

import pytest

from qkdd import ctl
from qkdd.audit.trail import AuditTrail, record_hash
from qkdd.audit.verify import verify_file
from qkdd.keystore import KeyAlreadyDelivered, KeyStore
from qkdd.peer import generate_identity, save_public_key

LINK = "sim-1"


@pytest.fixture(scope="module")
def identity():
    return generate_identity()


def keys(n, bits=256):
    return [(str(uuid.uuid4()), os.urandom(bits // 8)) for _ in range(n)]


def store_with_trail(tmp_path, identity, sign_every=4, clock=None):
    store = KeyStore(str(tmp_path / "keys.sqlite3"), bytes(32), **({"clock": clock} if clock else {}))
    store.audit = AuditTrail(str(tmp_path / "audit.log"), signer=identity.sign, sign_every_records=sign_every)
    return store


def records(path):
    return [json.loads(line) for line in open(path, "rb").read().splitlines()]


def test_every_lifecycle_event_is_recorded_once_without_material(tmp_path, identity):
    now = [1000.0]
    store = store_with_trail(tmp_path, identity, clock=lambda: now[0])
    frame = keys(6)
    store.put_pending(LINK, 1, frame, expires_at=2000.0)
    store.put_pending(LINK, 2, keys(2), expires_at=2000.0)
    store.commit_frame(LINK, 1)
    store.discard_frame(LINK, 2)
    reserved = store.reserve_available(LINK, 2, "sae:sae-a")
    store.release(LINK, reserved[1:])
    delivered = [store.deliver(LINK, key_id, holder="sae:sae-a").key_id for key_id in reserved[:1]]
    delivered += [store.deliver(LINK, key_id).key_id for key_id, _ in frame[2:4]]
    now[0] = 3000.0
    assert store.expire() == 3
    store.audit.close()
    log = records(tmp_path / "audit.log")
    events = [(r["event"], len(r["keys"])) for r in log if r["event"] != "head"]
    assert events == [("opened", 0), ("generated", 6), ("erased", 2), ("reserved", 2), ("released", 1),
                      ("delivered", 1), ("delivered", 1), ("delivered", 1), ("expired", 3)]
    deliveries = [r for r in log if r["event"] == "delivered"]
    assert sorted(k for r in deliveries for k, _ in r["keys"]) == sorted(delivered)     # each exactly once
    assert deliveries[0]["holder"] == "sae:sae-a" and all(b == 256 for r in deliveries for _, b in r["keys"])
    text = (tmp_path / "audit.log").read_bytes()
    for _, material in frame:
        assert material not in text and material.hex().encode() not in text
    report = verify_file(str(tmp_path / "audit.log"), identity.public_key())
    assert report.intact and report.signed_heads >= 2 and report.unsigned_tail == 0


def test_restart_continues_the_chain_and_cuts_a_torn_line(tmp_path, identity):
    path = str(tmp_path / "audit.log")
    trail = AuditTrail(path, signer=identity.sign, sign_every_records=2)
    trail.event("generated", LINK, [("a", 256)])
    trail.close()
    with open(path, "ab") as f:
        f.write(b'{"seq": 99, "ev')                                # a crash in the middle of a write
    trail = AuditTrail(path, signer=identity.sign, sign_every_records=2)
    trail.event("delivered", LINK, [("a", 256)], holder="wg:site-b")
    trail.close()
    report = verify_file(path, identity.public_key())
    assert report.intact, report.problems
    opened = [r for r in records(path) if r["event"] == "opened"]
    assert len(opened) == 2 and "torn" in opened[1]["detail"]


@pytest.fixture
def signed_log(tmp_path, identity):
    path = str(tmp_path / "audit.log")
    trail = AuditTrail(path, signer=identity.sign, sign_every_records=3)
    for i in range(10):
        trail.event("delivered", LINK, [(f"key-{i}", 256)], holder="sae:sae-b")
    trail.close()
    public = tmp_path / "node.pub"
    save_public_key(identity.public_key(), public)
    assert verify_file(path, identity.public_key()).intact
    return path, str(public)


def rewrite(path, lines):
    with open(path, "wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))


def lines_of(path):
    return open(path, "rb").read().splitlines()


def test_verify_finds_an_edited_record(signed_log, capsys):
    path, public = signed_log
    lines = lines_of(path)
    lines[4] = lines[4].replace(b'"holder":"sae:sae-b"', b'"holder":"sae:sae-x"')
    rewrite(path, lines)
    assert ctl.main(["audit", "verify", path, "--public-key", public]) == 1
    out = capsys.readouterr().out
    assert "line 5" in out and "edited" in out


def test_verify_finds_a_deleted_record(signed_log, capsys):
    path, public = signed_log
    lines = lines_of(path)
    del lines[6]
    rewrite(path, lines)
    assert ctl.main(["audit", "verify", path, "--public-key", public]) == 1
    assert "deleted" in capsys.readouterr().out


def test_verify_finds_reordered_records(signed_log, capsys):
    path, public = signed_log
    lines = lines_of(path)
    lines[2], lines[3] = lines[3], lines[2]
    rewrite(path, lines)
    assert ctl.main(["audit", "verify", path, "--public-key", public]) == 1
    assert "out of order" in capsys.readouterr().out


def test_verify_finds_a_chain_rewritten_after_an_edit(signed_log, identity, capsys):
    """Whoever can write the file can recompute every hash after an edit: only the signed heads catch that."""
    path, public = signed_log
    parsed = [json.loads(line) for line in lines_of(path)]
    parsed[2]["keys"] = [["key-forged", 256]]
    prev = parsed[1]["hash"]
    for record in parsed[2:]:
        record["prev"] = prev
        if record["event"] == "head" and record["head_seq"] == record["seq"] - 1:
            record["head"] = prev
        record["hash"] = record_hash(record)
        prev = record["hash"]
    rewrite(path, [json.dumps(r, sort_keys=True, separators=(",", ":")).encode() for r in parsed])
    report = verify_file(path, None)
    assert report.intact                                    # the chain alone looks fine ...
    assert ctl.main(["audit", "verify", path, "--public-key", public]) == 1     # ... the signature does not
    assert "signature does not verify" in capsys.readouterr().out


def test_verify_passes_an_intact_log(signed_log, capsys):
    path, public = signed_log
    assert ctl.main(["audit", "verify", path, "--public-key", public]) == 0
    assert "intact" in capsys.readouterr().out


def test_erased_keys_leave_no_trace_in_the_store_files(tmp_path):
    """secure_delete zeroes freed pages and the checkpoint empties the WAL: after delivery and expiry, neither
    the sealed material nor the key itself is anywhere in the store's files (the same scan finds them
    while the keys are stored)."""
    now = [1000.0]
    store = KeyStore(str(tmp_path / "keys.sqlite3"), bytes(32), clock=lambda: now[0])
    frame = keys(8)
    store.put_pending(LINK, 1, frame, expires_at=2000.0)
    store.commit_frame(LINK, 1)
    with sqlite3.connect(store.path) as peek:
        sealed = [row[0] for row in peek.execute("SELECT sealed FROM keys")]

    def files():
        return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("keys.sqlite3"))
    assert all(blob in files() for blob in sealed)
    for key_id, _ in frame[:4]:
        store.deliver(LINK, key_id)
    now[0] = 3000.0
    assert store.expire() == 4
    with pytest.raises(KeyAlreadyDelivered):
        store.deliver(LINK, frame[5][0])
    store.checkpoint()
    data = files()
    assert not any(blob in data for blob in sealed)
    assert not any(material in data for _, material in frame)
    store.close()


def test_an_etsi014_key_handed_to_the_slave_sae_is_recorded_with_the_sae(tmp_path, identity):
    """The slave KME (real key store and ledger, the master's end in memory) hands reserved keys to its SAE:
    the audit names the ETSI 014 key ids, their size and the SAE."""
    import trio

    from tests.test_kme_slave_store import LINK as KME_LINK, exchange, reservation_of, slave_kme
    service, store = slave_kme(tmp_path)
    store.audit = AuditTrail(str(tmp_path / "audit.log"), signer=identity.sign)
    stored = keys(2)
    store.put_pending(KME_LINK, 7, stored, expires_at=4e9, allocatable=[False, False])
    store.commit_frame(KME_LINK, 7)
    reservation = reservation_of(stored)
    exchange(service, reservation)
    ids = [key.key_id for key in reservation.keys]

    async def fetch():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)                 # the KME's group commit of store writes
            with trio.fail_after(10):
                got = await service.keys_by_id("sae-b", "sae-a", ids)
            nursery.cancel_scope.cancel()
        return got
    handed = trio.run(fetch)
    assert [key_id for key_id, _ in handed] == ids
    store.audit.close()
    log = records(tmp_path / "audit.log")
    to_sae = [r for r in log if r["event"] == "delivered" and r.get("holder") == "sae:sae-b"]
    assert len(to_sae) == 1 and sorted(k for k, _ in to_sae[0]["keys"]) == sorted(ids)
    assert all(bits == 256 for _, bits in to_sae[0]["keys"])
    assert verify_file(str(tmp_path / "audit.log"), identity.public_key()).intact


def test_records_are_canonical_json_whatever_form_the_keys_come_in(tmp_path):
    """A record's line is the canonical JSON of its fields (hash included) and its hash record_hash(): key lists as
    tuples from the store, as a generator, or with ids and lengths to convert, encode alike."""
    trail = AuditTrail(str(tmp_path / "audit.log"), clock=lambda: 12.5)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    trail.event("generated", "a-b", [(key_id, 256) for key_id in ids])
    trail.event("generated", "a-b", ((key_id, 256) for key_id in ids))
    trail.event("reserved", "a-b", [[uuid.UUID(key_id), 256.0] for key_id in ids], holder="sae \u00e9")
    trail.event("delivered", "a-b", [(ids[0], True)], holder="x")
    trail.close()
    lines = open(tmp_path / "audit.log", "rb").read().splitlines()
    records = [json.loads(line) for line in lines]
    for line, record in zip(lines, records):
        assert line == json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        assert record["hash"] == record_hash(record)
    assert records[1]["keys"] == records[2]["keys"] == records[3]["keys"] == [[key_id, 256] for key_id in ids]
    assert records[4]["keys"] == [[ids[0], 1]]
