"""The ETSI 014 pieces without sockets: the reservation exchange (both ends in memory, byte for byte),
keys cut from stored keys, the slave's ledger and the key store's group commit (real SQLite files)."""
from __future__ import annotations

import base64
import os
import struct
import uuid

import pytest

from qkdd.keystore import KeyState, KeyStore, KeyUnavailable
from qkdd.kme.container import assemble, key_container, plan_keys
from qkdd.kme.ledger import AlreadyDelivered, Ledger, LedgerError
from qkdd.kme.reservation import (LateAnswer, RefuseReason, Reservation, ReservationAccepted, ReservationEndpoint,
                                  ReservationProtocolError, ReservationReceived, ReservationRefused, State,
                                  encode_reserve)


def stored_keys(count: int, bits: int = 256) -> list[tuple[str, bytes]]:
    return [(str(uuid.uuid4()), os.urandom(bits // 8)) for _ in range(count)]


def reservation(number: int = 3, size_bits: int = 512, slaves=("sae-b",)) -> tuple[Reservation, dict[str, bytes]]:
    stored = stored_keys(number * size_bits // 256 + 1)
    keys = plan_keys([(key_id, len(material) * 8) for key_id, material in stored], number, size_bits)
    return Reservation(str(uuid.uuid4()), "sae-a", tuple(slaves), size_bits, keys), dict(stored)


def test_both_ends_in_memory_accept():
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    request, _ = reservation(slaves=("sae-b", "sae-d"))
    [received] = slave.receive(master.reserve(request))
    assert received == ReservationReceived(request)                       # decoded exactly
    assert master.state("master", request.request_id) is State.SENT
    assert master.receive(slave.accept(request.request_id)) == [ReservationAccepted(request.request_id)]
    assert master.state("master", request.request_id) is None             # finished requests are forgotten


def test_refusal_and_late_answers():
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    request, _ = reservation()
    slave.receive(master.reserve(request))
    [refused] = master.receive(slave.refuse(request.request_id, RefuseReason.KEYS_UNAVAILABLE, "key gone"))
    assert refused == ReservationRefused(request.request_id, RefuseReason.KEYS_UNAVAILABLE, "key gone")
    late, _ = reservation()
    slave.receive(master.reserve(late))
    master.abandon(late.request_id)
    assert master.receive(slave.accept(late.request_id)) == [LateAnswer(late.request_id, True)]


def test_wire_layout_version_2_is_fixed():
    request = Reservation("00000000-0000-4000-8000-000000000001", "m", ("s",), 16,
                          plan_keys([("00000000-0000-4000-8000-0000000000aa", 16)], 1, 16,
                                    lambda: "00000000-0000-4000-8000-0000000000bb"))
    body = (struct.pack(">I", 16) + b"\x00\x01m" + b"\x01" + b"\x00\x01s" + b"\x00\x01"
            + uuid.UUID("00000000-0000-4000-8000-0000000000bb").bytes + b"\x00\x01"
            + uuid.UUID("00000000-0000-4000-8000-0000000000aa").bytes + struct.pack(">II", 0, 2))
    expected = bytes([2, 1]) + uuid.UUID(request.request_id).bytes + struct.pack(">I", len(body)) + body
    assert encode_reserve(request) == expected
    accept = ReservationEndpoint()
    accept.receive(expected)
    assert accept.accept(request.request_id) == bytes([2, 2]) + uuid.UUID(request.request_id).bytes + bytes(4)


def test_a_payload_of_several_messages_gives_their_events_in_order():
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    requests = [reservation()[0] for _ in range(3)]
    received = slave.receive(b"".join(master.reserve(request) for request in requests))
    assert received == [ReservationReceived(request) for request in requests]
    answers = (slave.accept(requests[0].request_id)
               + slave.refuse(requests[1].request_id, RefuseReason.STORE_FAILURE, "disk full")
               + slave.accept(requests[2].request_id))
    assert master.receive(answers) == [ReservationAccepted(requests[0].request_id),
                                       ReservationRefused(requests[1].request_id, RefuseReason.STORE_FAILURE,
                                                          "disk full"),
                                       ReservationAccepted(requests[2].request_id)]


def test_one_bad_message_rejects_its_payload_and_changes_nothing():
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    first, second = reservation()[0], reservation()[0]
    slave.receive(master.reserve(first) + master.reserve(second))
    never_sent = reservation()[0]
    answers = slave.accept(first.request_id) + _accept_message(never_sent.request_id)
    with pytest.raises(ReservationProtocolError, match="no request"):
        master.receive(answers)                                            # the second answers nothing sent
    assert master.state("master", first.request_id) is State.SENT          # the first was not applied either
    accept_second = slave.accept(second.request_id)
    with pytest.raises(ReservationProtocolError, match="truncated"):
        master.receive(accept_second + accept_second[:-1])
    assert master.state("master", second.request_id) is State.SENT
    assert master.receive(accept_second) == [ReservationAccepted(second.request_id)]


def _accept_message(request_id: str) -> bytes:
    other = ReservationEndpoint()
    other.receive(ReservationEndpoint().reserve(Reservation(request_id, "m", ("s",), 256, plan_keys(
        [(str(uuid.uuid4()), 256)], 1, 256))))
    return other.accept(request_id)


@pytest.mark.parametrize("mutate", [
    lambda data: data[:-1],                           # truncated
    lambda data: data + b"\x00",                      # trailing byte
    lambda data: b"\x01" + data[1:],                  # another version (1: one message per payload)
    lambda data: data[:1] + b"\x09" + data[2:],       # unknown type
])
def test_malformed_messages_are_protocol_errors(mutate):
    request, _ = reservation()
    with pytest.raises(ReservationProtocolError):
        ReservationEndpoint().receive(mutate(encode_reserve(request)))


def test_answers_to_requests_never_sent_are_illegal():
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    request, _ = reservation()
    slave.receive(master.reserve(request))
    with pytest.raises(ReservationProtocolError, match="no request"):
        ReservationEndpoint().receive(slave.accept(request.request_id))
    with pytest.raises(ReservationProtocolError):
        slave.accept(request.request_id)                                   # answered twice


def test_overlapping_segments_are_refused():
    request, _ = reservation(number=2, size_bits=128)
    first = request.keys[0]
    doubled = Reservation(request.request_id, "sae-a", ("sae-b",), 128, (first, type(first)(str(uuid.uuid4()),
                                                                                      first.segments)))
    with pytest.raises(ReservationProtocolError, match="two segments"):
        ReservationEndpoint().receive(encode_reserve(doubled))


def test_a_slave_sae_named_twice_is_refused():
    """The ledger counts the recipients still to fetch a key by the names in the reservation: a name
    given twice would leave the stored keys reserved, never erased, after its one SAE fetched them."""
    request, _ = reservation(slaves=("sae-b", "sae-d", "sae-b"))
    with pytest.raises(ReservationProtocolError, match="twice"):
        ReservationEndpoint().receive(encode_reserve(request))


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
    other = Reservation(str(uuid.uuid4()), "sae-a", ("sae-b",), 256, request.keys[:1])
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


def test_arbitrary_peer_bytes_give_a_protocol_error_or_a_valid_event():
    from hypothesis import given, settings, strategies as st

    request, _ = reservation(number=2, size_bits=128)
    valid = encode_reserve(request)

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=200),
                     st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
                         lambda edit: valid[:edit[0]] + bytes([edit[1]]) + valid[edit[0] + 1:])))
    def check(payload):
        try:
            events = ReservationEndpoint().receive(payload)
        except ReservationProtocolError:
            return
        assert events and all(isinstance(event, ReservationReceived) for event in events)

    check()


def test_a_new_session_forgets_every_request():
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    request, _ = reservation()
    slave.receive(master.reserve(request))
    master.end_session()
    slave.end_session()
    assert master.state("master", request.request_id) is None
    with pytest.raises(ReservationProtocolError):
        master.receive(encode_reserve(request)[:2] + bytes(16))        # truncated: still checked
    with pytest.raises(ReservationProtocolError):
        slave.accept(request.request_id)                                 # nothing left to answer


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


def test_queued_messages_go_out_in_payloads_of_bounded_size():
    from qkdd.kme.reservation import pack_payloads
    messages = [bytes([n]) * size for n, size in enumerate([10, 20, 30, 100, 5])]
    assert pack_payloads(messages, 60) == [messages[0] + messages[1] + messages[2], messages[3], messages[4]]
    assert b"".join(pack_payloads(messages, 10**6)) == b"".join(messages)
    assert pack_payloads([]) == []


def test_a_payload_over_the_packing_size_is_decoded_only_as_one_message_within_the_cap():
    """Back-to-back messages fill at most MAX_PACKED_BYTES of a payload and one message is at most
    MAX_MESSAGE_BYTES: the receiver refuses anything else before decoding it, so a peer cannot keep the
    event loop decoding a huge record; `reserve` refuses to build a message over the cap."""
    import time

    from qkdd.kme.reservation import MAX_MESSAGE_BYTES, MAX_PACKED_BYTES, ReservedKey, Segment, pack_payloads

    master, slave = ReservationEndpoint(), ReservationEndpoint()
    small = [master.reserve(reservation(1, 256)[0]) for _ in range(20_000)]
    packed = pack_payloads(small)
    assert len(packed) > 1 and all(len(payload) <= MAX_PACKED_BYTES for payload in packed)
    assert sum(len(slave.receive(payload)) for payload in packed) == len(small)

    flood = b"".join(small)                       # what a peer that ignores the packing size would send
    assert MAX_PACKED_BYTES < len(flood) <= MAX_MESSAGE_BYTES
    started = time.process_time()
    with pytest.raises(ReservationProtocolError, match="more than one message"):
        ReservationEndpoint().receive(flood)
    assert time.process_time() - started < 0.05    # refused from the first head, nothing decoded
    with pytest.raises(ReservationProtocolError, match="exceeds"):
        ReservationEndpoint().receive(flood + flood + flood + flood)

    byte_by_byte = tuple(Segment(str(uuid.uuid4()), 0, 1) for _ in range(128))   # stored keys of 8 bits
    keys = tuple(ReservedKey(str(uuid.uuid4()), byte_by_byte) for _ in range(2000))
    one_big = Reservation(str(uuid.uuid4()), "sae-a", ("sae-b",), 1024, keys)
    with pytest.raises(ValueError, match="exceeds"):
        master.reserve(one_big)
    assert master.state("master", one_big.request_id) is None          # nothing changed


def test_reservations_round_trip_and_any_edit_of_an_answer_payload_is_an_event_or_an_error_changing_nothing():
    """Any reservation the master's end can send decodes to itself at the slave's end; and a payload of
    answers from the peer, however cut, padded or edited, gives events of the documented kinds or one
    ReservationProtocolError that leaves every request's state as it was."""
    import copy

    from hypothesis import given, settings, strategies as st

    sae_ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
        lambda text: len(text.encode()) <= 1024)

    @st.composite
    def reservations(draw):
        size_bits = draw(st.integers(1, 64)) * 8
        number = draw(st.integers(1, 8))
        stored_bits = draw(st.lists(st.integers(1, 64).map(lambda n: n * 8), min_size=1, max_size=6))
        stored = [(str(uuid.uuid4()), bits) for bits in stored_bits + [number * size_bits]]     # enough
        slaves = tuple(draw(st.lists(sae_ids, min_size=1, max_size=4, unique=True)))
        return Reservation(str(uuid.uuid4()), draw(sae_ids), slaves, size_bits, plan_keys(stored, number, size_bits))

    @settings(max_examples=100, deadline=None)
    @given(reservations())
    def round_trip(request):
        assert ReservationEndpoint().receive(encode_reserve(request)) == [ReservationReceived(request)]

    round_trip()

    master, slave = ReservationEndpoint(), ReservationEndpoint()
    requests = [reservation(number=1, size_bits=128)[0] for _ in range(3)]
    slave.receive(b"".join(master.reserve(request) for request in requests))
    master.abandon(requests[2].request_id)
    answers = (slave.accept(requests[0].request_id)
               + slave.refuse(requests[1].request_id, RefuseReason.STORE_FAILURE, "disque plein ✗")
               + slave.accept(requests[2].request_id))
    before = {request.request_id: master.state("master", request.request_id) for request in requests}

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(
        st.tuples(st.integers(0, len(answers) - 1), st.integers(0, 255)).map(
            lambda edit: answers[:edit[0]] + bytes([edit[1]]) + answers[edit[0] + 1:]),
        st.integers(0, len(answers)).map(lambda cut: answers[:cut]),
        st.tuples(st.integers(0, len(answers)), st.binary(min_size=1, max_size=8)).map(
            lambda edit: answers[:edit[0]] + edit[1] + answers[edit[0]:]),
        st.tuples(st.integers(0, len(answers)), st.integers(1, 8)).map(
            lambda edit: answers[:edit[0]] + answers[edit[0] + edit[1]:])))
    def check(payload):
        endpoint = copy.deepcopy(master)
        try:
            events = endpoint.receive(payload)
        except ReservationProtocolError:
            assert {request_id: endpoint.state("master", request_id) for request_id in before} == before
            return
        assert events and all(isinstance(event, (ReservationReceived, ReservationAccepted, ReservationRefused,
                                                 LateAnswer)) for event in events)

    check()


def test_only_the_newest_abandoned_requests_are_remembered_for_a_late_answer(monkeypatch):
    """A peer that stops answering on a session that lasts: each Get key abandons its request at the
    deadline; the endpoint remembers the newest MAX_ABANDONED of them, so its memory stays bounded."""
    import qkdd.kme.reservation as wire

    monkeypatch.setattr(wire, "MAX_ABANDONED", 4)
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    requests = [reservation(1, 256)[0] for _ in range(6)]
    for request in requests:
        slave.receive(master.reserve(request))
        master.abandon(request.request_id)
    assert [master.state("master", r.request_id) for r in requests] == [None] * 2 + [State.ABANDONED] * 4
    assert master.receive(slave.accept(requests[-1].request_id)) == [LateAnswer(requests[-1].request_id, True)]
    with pytest.raises(ReservationProtocolError, match="no request"):
        master.receive(slave.accept(requests[0].request_id))          # forgotten: an answer to nothing
    for _ in range(3):                                                # more abandoned ones push the rest out
        request = reservation(1, 256)[0]
        master.reserve(request)
        master.abandon(request.request_id)
    assert len(master._states) == 4
