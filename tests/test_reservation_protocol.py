"""The link's reservation protocol (qkdd.reservation.protocol) without sockets: both ends in memory, byte for
byte, for each purpose (ETSI 014 keys, /v1 keys, WireGuard epochs, ETSI 004 chunks, SKIP keys); the wire layout
pinned in hex; every transition of the state table and the illegal ones; hostile peer bytes."""
from __future__ import annotations

import copy
import math
import struct
import time
import uuid

import pytest
from hypothesis import given, settings, strategies as st

import qkdd.reservation.protocol as wire
from qkdd.kme.container import plan_keys
from qkdd.reservation import ChunkReservation, SkipKeyReservation
from qkdd.reservation import (MAX_EPOCH, MAX_MESSAGE_BYTES, MAX_PACKED_BYTES, TRANSITIONS, AnnouncementReceived,
                              EpochAnnouncement, EpochReservation, Etsi014Reservation, KeyReservation, LateAnswer,
                              MessageType, Purpose, RefuseReason, ReservationAccepted, ReservationEndpoint,
                              ReservationProtocolError, ReservationReceived, ReservationRefused, ReservedKey,
                              Segment, State, check_reservation, encode_reserve, pack_payloads)
from tests.mutations import edited, fields

TAG = bytes(range(1, 9))


def new_id() -> str:
    return str(uuid.uuid4())


def planned(stored, number: int, size_bits: int, new_key_id=None) -> tuple[ReservedKey, ...]:
    """The KME's key plan (qkdd.kme.container.plan_keys), as this module's types."""
    return tuple(ReservedKey(key.key_id, tuple(Segment(s.stored_key_id, s.offset_bytes, s.length_bytes)
                                               for s in key.segments))
                 for key in plan_keys(stored, number, size_bits, new_key_id))


def etsi014(number: int = 3, size_bits: int = 512, slaves=("sae-b",)) -> Etsi014Reservation:
    stored = [(new_id(), 256) for _ in range(number * size_bits // 256 + 1)]
    return Etsi014Reservation(new_id(), "sae-a", tuple(slaves), size_bits, planned(stored, number, size_bits))


def key_request() -> KeyReservation:
    return KeyReservation(new_id(), new_id(), "v1:256")


def epoch_request(number: int = 1) -> EpochReservation:
    return EpochReservation(new_id(), TAG, number, new_id(), 1000.5)


def chunk_request(keys: int = 3) -> ChunkReservation:
    return ChunkReservation(new_id(), new_id(), 7, tuple(sorted(new_id() for _ in range(keys))))


def skip_request() -> SkipKeyReservation:
    return SkipKeyReservation(new_id(), new_id(), "skip:256")


def hybrid_epoch_request(number: int = 1) -> wire.HybridEpochReservation:
    return wire.HybridEpochReservation(new_id(), TAG, number, new_id(), 1000.5, bytes(range(256)) * 4 + bytes(72))


REQUESTS = {Purpose.ETSI014: etsi014, Purpose.KEY: key_request, Purpose.WG_EPOCH: epoch_request,
            Purpose.STREAM: chunk_request, Purpose.SKIP: skip_request, Purpose.HYBRID_EPOCH: hybrid_epoch_request}
PURPOSES = list(Purpose)


def answer(request, accepted: bool = True, reason=RefuseReason.KEYS_UNAVAILABLE, text: str = "no") -> bytes:
    """The ACCEPT or REFUSE a slave sends for `request` (from an endpoint of its own)."""
    slave = ReservationEndpoint()
    slave.receive(encode_reserve(request))
    return slave.accept(request.request_id) if accepted else slave.refuse(request.request_id, reason, text)


# -- both ends, byte for byte -----------------------------------------------------------------------------

@pytest.mark.parametrize("purpose", PURPOSES)
def test_both_ends_in_memory_accept_and_refuse_for_each_purpose(purpose):
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    request = REQUESTS[purpose]()
    [received] = slave.receive(master.reserve(request))
    assert received == ReservationReceived(request)                       # decoded exactly
    assert master.state("master", request.request_id) is State.SENT
    assert master.purpose("master", request.request_id) is purpose
    assert slave.state("slave", request.request_id) is State.RECEIVED
    accept = slave.accept(request.request_id)
    assert accept[:3] == bytes([3, MessageType.ACCEPT, purpose])
    assert master.receive(accept) == [ReservationAccepted(request.request_id, purpose)]
    assert master.state("master", request.request_id) is None             # finished requests are forgotten
    assert slave.state("slave", request.request_id) is None

    refused = REQUESTS[purpose]()
    slave.receive(master.reserve(refused))
    refuse = slave.refuse(refused.request_id, RefuseReason.KEYS_GONE, "delivered already")
    assert master.receive(refuse) == [ReservationRefused(refused.request_id, purpose, RefuseReason.KEYS_GONE,
                                                         "delivered already")]
    assert master.state("master", refused.request_id) is None


@pytest.mark.parametrize("purpose", PURPOSES)
def test_a_received_reservation_encodes_back_to_the_bytes_sent(purpose):
    request = REQUESTS[purpose]()
    sent = ReservationEndpoint().reserve(request)
    [received] = ReservationEndpoint().receive(sent)
    assert encode_reserve(received.reservation) == sent


def test_announcements_go_both_ways_outside_any_request():
    left, right = ReservationEndpoint(), ReservationEndpoint()
    current = EpochAnnouncement(TAG, 5, new_id(), 1234.25)
    none_yet = EpochAnnouncement(TAG, 0, "", 0.0)
    assert right.receive(left.announce(current)) == [AnnouncementReceived(current)]
    assert left.receive(right.announce(none_yet)) == [AnnouncementReceived(none_yet)]
    assert left._requests == right._requests == {}                        # no request state


# -- the wire layout, pinned ----------------------------------------------------------------------------

REQUEST_ID = "00000000-0000-4000-8000-000000000001"
KEY_ID = "0f0e0d0c-0b0a-4908-8706-050403020100"
RID = "00000000 0000 4000 8000 000000000001"
ETSI_BODY = ("00000010" "0001 6d" "01" "0001 73" "0001"                 # 16 bits | "m" | 1 slave "s" | 1 key
             "00000000 0000 4000 8000 0000000000bb" "0001"               # key id | 1 segment:
             "00000000 0000 4000 8000 0000000000aa" "00000000" "00000002")   # stored key | offset 0 | 2 bytes
KEY_BODY = "0f0e0d0c 0b0a 4908 8706 050403020100" "0006 76313a323536"    # key id | "v1:256"
EPOCH_BODY = "0102030405060708" "0000000000000007" "0f0e0d0c 0b0a 4908 8706 050403020100" "3ff8000000000000"
CHUNK_BODY = ("0f0e0d0c 0b0a 4908 8706 050403020100" "00000009" "0002"      # stream | index 9 | 2 keys
              "00000000 0000 4000 8000 0000000000aa" "00000000 0000 4000 8000 0000000000bb")
SKIP_BODY = "0f0e0d0c 0b0a 4908 8706 050403020100" "0008 736b69703a323536"   # key id | "skip:256"
REFUSE_BODY = "05" "0004 676f6e65"                                     # KEYS_GONE | "gone"


def golden_requests():
    etsi = Etsi014Reservation(REQUEST_ID, "m", ("s",), 16, planned(
        [("00000000-0000-4000-8000-0000000000aa", 16)], 1, 16, lambda: "00000000-0000-4000-8000-0000000000bb"))
    return {Purpose.ETSI014: etsi, Purpose.KEY: KeyReservation(REQUEST_ID, KEY_ID, "v1:256"),
            Purpose.WG_EPOCH: EpochReservation(REQUEST_ID, TAG, 7, KEY_ID, 1.5),
            Purpose.STREAM: ChunkReservation(REQUEST_ID, KEY_ID, 9, ("00000000-0000-4000-8000-0000000000aa",
                                                                     "00000000-0000-4000-8000-0000000000bb")),
            Purpose.SKIP: SkipKeyReservation(REQUEST_ID, KEY_ID, "skip:256")}


@pytest.mark.parametrize("purpose, kind, expected_hex", [
    (Purpose.ETSI014, "reserve", "03 01 01" + RID + "00000037" + ETSI_BODY),
    (Purpose.KEY, "reserve", "03 01 02" + RID + "00000018" + KEY_BODY),
    (Purpose.WG_EPOCH, "reserve", "03 01 03" + RID + "00000028" + EPOCH_BODY),
    (Purpose.STREAM, "reserve", "03 01 04" + RID + "00000036" + CHUNK_BODY),
    (Purpose.SKIP, "reserve", "03 01 05" + RID + "0000001a" + SKIP_BODY),
    (Purpose.STREAM, "accept", "03 02 04" + RID + "00000000"),
    (Purpose.SKIP, "refuse", "03 03 05" + RID + "00000007" + REFUSE_BODY),
    (Purpose.ETSI014, "accept", "03 02 01" + RID + "00000000"),
    (Purpose.KEY, "accept", "03 02 02" + RID + "00000000"),
    (Purpose.WG_EPOCH, "accept", "03 02 03" + RID + "00000000"),
    (Purpose.ETSI014, "refuse", "03 03 01" + RID + "00000007" + REFUSE_BODY),
    (Purpose.KEY, "refuse", "03 03 02" + RID + "00000007" + REFUSE_BODY),
    (Purpose.WG_EPOCH, "refuse", "03 03 03" + RID + "00000007" + REFUSE_BODY),
])
def test_wire_layout_version_3_is_fixed(purpose, kind, expected_hex):
    expected = bytes.fromhex(expected_hex)
    request = golden_requests()[purpose]
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    reserve = master.reserve(request)
    if kind == "reserve":
        assert reserve == expected
        assert slave.receive(expected) == [ReservationReceived(request)]
        return
    slave.receive(reserve)
    sent = slave.accept(REQUEST_ID) if kind == "accept" else slave.refuse(REQUEST_ID, RefuseReason.KEYS_GONE, "gone")
    assert sent == expected
    assert master.receive(expected) == ([ReservationAccepted(REQUEST_ID, purpose)] if kind == "accept" else
                                        [ReservationRefused(REQUEST_ID, purpose, RefuseReason.KEYS_GONE, "gone")])


@pytest.mark.parametrize("announcement, expected_hex", [
    (EpochAnnouncement(TAG, 7, KEY_ID, 1.5), "03 04 03" + "00" * 16 + "00000028" + EPOCH_BODY),
    (EpochAnnouncement(TAG, 0, "", 0.0), "03 04 03" + "00" * 16 + "00000028" + "0102030405060708" + "00" * 32),
])
def test_announce_layout_is_fixed(announcement, expected_hex):
    expected = bytes.fromhex(expected_hex)
    assert ReservationEndpoint().announce(announcement) == expected
    assert ReservationEndpoint().receive(expected) == [AnnouncementReceived(announcement)]


# -- the state table ----------------------------------------------------------------------------------

MASTER_EVENTS = ("reserve", "abandon", "ACCEPT", "REFUSE")
SLAVE_EVENTS = ("RESERVE", "accept", "refuse")


def endpoint_in(role: str, state: State | None, request) -> ReservationEndpoint:
    """An endpoint holding `request` in `state` as `role` (None: not holding it)."""
    endpoint = ReservationEndpoint()
    if role == "master" and state is not None:
        endpoint.reserve(request)
        if state is State.ABANDONED:
            endpoint.abandon(request.request_id)
    elif role == "slave" and state is State.RECEIVED:
        endpoint.receive(encode_reserve(request))
    assert endpoint.state(role, request.request_id) is state
    return endpoint


def take(endpoint: ReservationEndpoint, event: str, request):
    """Make `event` happen to `request` at `endpoint`: a local call or a message from the peer."""
    request_id = request.request_id
    actions = {
        "reserve": lambda: endpoint.reserve(request),
        "abandon": lambda: endpoint.abandon(request_id),
        "ACCEPT": lambda: endpoint.receive(answer(request, True)),
        "REFUSE": lambda: endpoint.receive(answer(request, False)),
        "RESERVE": lambda: endpoint.receive(encode_reserve(request)),
        "accept": lambda: endpoint.accept(request_id),
        "refuse": lambda: endpoint.refuse(request_id, RefuseReason.STORE_FAILURE, "disk full"),
    }
    return actions[event]()


@pytest.mark.parametrize("purpose", PURPOSES)
@pytest.mark.parametrize("transition", list(TRANSITIONS), ids=lambda t: f"{t[0]}-{t[1] and t[1].value}-{t[2]}")
def test_every_transition_of_the_table_for_every_purpose(transition, purpose):
    role, state, event = transition
    request = REQUESTS[purpose]()
    endpoint = endpoint_in(role, state, request)
    result = take(endpoint, event, request)
    following = TRANSITIONS[transition]
    assert endpoint.state(role, request.request_id) is (None if following in (State.ACCEPTED, State.REFUSED)
                                                        else following)
    expected_events = {"ACCEPT": [ReservationAccepted(request.request_id, purpose)],
                       "REFUSE": [ReservationRefused(request.request_id, purpose, RefuseReason.KEYS_UNAVAILABLE,
                                                     "no")],
                       "RESERVE": [ReservationReceived(request)]}
    if event in expected_events:
        assert result == expected_events[event]
    elif event in ("reserve", "accept", "refuse"):
        assert isinstance(result, bytes) and result[2] == purpose


ILLEGAL = [(role, state, event)
           for role, states, events in (("master", (None, State.SENT, State.ABANDONED), MASTER_EVENTS),
                                        ("slave", (None, State.RECEIVED), SLAVE_EVENTS))
           for state in states for event in events
           if (role, state, event) not in TRANSITIONS
           and not (state is State.ABANDONED and event in ("ACCEPT", "REFUSE"))]     # late answers


def test_the_illegal_list_is_what_the_table_leaves_out():
    assert len(ILLEGAL) == 3 * 4 + 2 * 3 - len(TRANSITIONS) - 2 == 9


@pytest.mark.parametrize("role, state, event", ILLEGAL, ids=lambda x: str(getattr(x, "value", x)))
def test_illegal_events_name_state_and_event_and_change_nothing(role, state, event):
    request = REQUESTS[Purpose.KEY]()
    endpoint = endpoint_in(role, state, request)
    with pytest.raises(ReservationProtocolError,
                       match=f"{event} is illegal for {role} request {request.request_id} in state "
                             f"{state.value if state else 'no request'}"):
        take(endpoint, event, request)
    assert endpoint.state(role, request.request_id) is state


# -- purposes, announcements and late answers ------------------------------------------------------------

@pytest.mark.parametrize("state", [State.SENT, State.ABANDONED])
@pytest.mark.parametrize("accepted", [True, False])
def test_an_answer_of_another_purpose_than_its_request_is_illegal(state, accepted):
    request = REQUESTS[Purpose.KEY]()
    master = endpoint_in("master", state, request)
    message = bytearray(answer(request, accepted))
    for other in (Purpose.ETSI014, Purpose.WG_EPOCH):
        message[2] = other
        with pytest.raises(ReservationProtocolError,
                           match=f"purpose {other.name} .* purpose KEY in state {state.value}"):
            master.receive(bytes(message))
        assert master.state("master", request.request_id) is state
    message[2] = Purpose.KEY
    assert len(master.receive(bytes(message))) == 1


def test_an_announce_names_no_request_and_only_a_wireguard_epoch():
    valid = ReservationEndpoint().announce(EpochAnnouncement(TAG, 3, new_id(), 10.0))
    with_request = valid[:3] + uuid.UUID(new_id()).bytes + valid[19:]
    with pytest.raises(ReservationProtocolError, match="ANNOUNCE of purpose WG_EPOCH for request"):
        ReservationEndpoint().receive(with_request)
    for purpose in (Purpose.ETSI014, Purpose.KEY):
        with pytest.raises(ReservationProtocolError, match=f"ANNOUNCE of purpose {purpose.name}"):
            ReservationEndpoint().receive(valid[:2] + bytes([purpose]) + valid[3:])


@pytest.mark.parametrize("purpose", PURPOSES)
def test_late_answers_to_abandoned_requests_are_reported_as_such_once(purpose):
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    accepted, refused = REQUESTS[purpose](), REQUESTS[purpose]()
    slave.receive(master.reserve(accepted) + master.reserve(refused))
    master.abandon(accepted.request_id)
    master.abandon(refused.request_id)
    accept = slave.accept(accepted.request_id)
    events = master.receive(accept + slave.refuse(refused.request_id, RefuseReason.STALE, "old"))
    assert events == [LateAnswer(accepted.request_id, purpose, True),
                      LateAnswer(refused.request_id, purpose, False, RefuseReason.STALE)]
    assert master.state("master", accepted.request_id) is None
    with pytest.raises(ReservationProtocolError, match="no request"):
        master.receive(accept)                                           # a second answer answers nothing


def test_a_payload_of_several_messages_of_every_purpose_gives_their_events_in_order():
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    requests = [etsi014(), key_request(), epoch_request(), key_request()]
    announcement = EpochAnnouncement(TAG, 2, new_id(), 5.0)
    received = slave.receive(b"".join(master.reserve(request) for request in requests[:2])
                             + master.announce(announcement)
                             + b"".join(master.reserve(request) for request in requests[2:]))
    assert received == ([ReservationReceived(request) for request in requests[:2]]
                        + [AnnouncementReceived(announcement)]
                        + [ReservationReceived(request) for request in requests[2:]])
    answers = (slave.accept(requests[0].request_id)
               + slave.refuse(requests[1].request_id, RefuseReason.STORE_FAILURE, "disk full")
               + slave.refuse(requests[2].request_id, RefuseReason.STALE, "epoch 9 here")
               + slave.accept(requests[3].request_id))
    assert master.receive(answers) == [
        ReservationAccepted(requests[0].request_id, Purpose.ETSI014),
        ReservationRefused(requests[1].request_id, Purpose.KEY, RefuseReason.STORE_FAILURE, "disk full"),
        ReservationRefused(requests[2].request_id, Purpose.WG_EPOCH, RefuseReason.STALE, "epoch 9 here"),
        ReservationAccepted(requests[3].request_id, Purpose.KEY)]


def test_one_bad_message_rejects_its_payload_and_changes_nothing():
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    first, second = etsi014(), key_request()
    slave.receive(master.reserve(first) + master.reserve(second))
    answers = slave.accept(first.request_id) + answer(key_request())
    with pytest.raises(ReservationProtocolError, match="no request"):
        master.receive(answers)                                            # the second answers nothing sent
    assert master.state("master", first.request_id) is State.SENT          # the first was not applied either
    accept_second = slave.accept(second.request_id)
    with pytest.raises(ReservationProtocolError, match="truncated"):
        master.receive(accept_second + accept_second[:-1])
    assert master.state("master", second.request_id) is State.SENT
    assert master.receive(accept_second) == [ReservationAccepted(second.request_id, Purpose.KEY)]


@pytest.mark.parametrize("purpose", PURPOSES)
@pytest.mark.parametrize("mutate, problem", [
    (lambda data: data[:-1], "truncated"),
    (lambda data: data + b"\x03", "truncated"),                        # a trailing byte starts a message
    (lambda data: data + b"\x00", "wire version 0"),
    (lambda data: b"\x02" + data[1:], "wire version 2"),               # the earlier ETSI 014-only layout
    (lambda data: b"\x01" + data[1:], "wire version 1"),
    (lambda data: data[:1] + b"\x09" + data[2:], "unknown message type 9"),
    (lambda data: data[:2] + b"\x00" + data[3:], "unknown purpose 0"),
    (lambda data: data[:2] + b"\x07" + data[3:], "unknown purpose 7"),
])
def test_malformed_messages_are_protocol_errors(purpose, mutate, problem):
    with pytest.raises(ReservationProtocolError, match=problem):
        ReservationEndpoint().receive(mutate(encode_reserve(REQUESTS[purpose]())))


def test_a_reserve_read_with_another_purpose_is_refused():
    data = bytearray(encode_reserve(key_request()))
    for purpose in (Purpose.ETSI014, Purpose.WG_EPOCH):
        data[2] = purpose
        with pytest.raises(ReservationProtocolError):
            ReservationEndpoint().receive(bytes(data))


def test_answers_to_requests_never_sent_are_illegal():
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    request = etsi014()
    slave.receive(master.reserve(request))
    with pytest.raises(ReservationProtocolError, match="no request"):
        ReservationEndpoint().receive(slave.accept(request.request_id))
    with pytest.raises(ReservationProtocolError):
        slave.accept(request.request_id)                                   # answered twice


def test_a_new_session_forgets_every_request():
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    request, abandoned = etsi014(), key_request()
    slave.receive(master.reserve(request) + master.reserve(abandoned))
    master.abandon(abandoned.request_id)
    master.end_session()
    slave.end_session()
    assert master.state("master", request.request_id) is None
    assert master.state("master", abandoned.request_id) is None
    with pytest.raises(ReservationProtocolError):
        master.receive(encode_reserve(request)[:3] + bytes(16))          # truncated: still checked
    with pytest.raises(ReservationProtocolError):
        slave.accept(request.request_id)                                 # nothing left to answer
    with pytest.raises(ReservationProtocolError, match="no request"):
        master.receive(answer(abandoned, True))                          # no late answer across sessions


# -- what each kind of reservation must hold ----------------------------------------------------------

def test_overlapping_segments_are_refused():
    request = etsi014(number=2, size_bits=128)
    first = request.keys[0]
    doubled = Etsi014Reservation(request.request_id, "sae-a", ("sae-b",), 128,
                                 (first, ReservedKey(new_id(), first.segments)))
    with pytest.raises(ReservationProtocolError, match="two segments"):
        ReservationEndpoint().receive(encode_reserve(doubled))


def test_a_slave_sae_named_twice_is_refused():
    """The ledger counts the recipients still to fetch a key by the names in the reservation: a name
    given twice would leave the stored keys reserved, never erased, after its one SAE fetched them."""
    request = etsi014(slaves=("sae-b", "sae-d", "sae-b"))
    with pytest.raises(ReservationProtocolError, match="twice"):
        ReservationEndpoint().receive(encode_reserve(request))


@pytest.mark.parametrize("bad, problem", [
    (KeyReservation(REQUEST_ID, KEY_ID, ""), "holder of 0 bytes"),
    (KeyReservation(REQUEST_ID, KEY_ID, "h" * 65), "holder of 65 bytes"),
    (KeyReservation(REQUEST_ID, KEY_ID, "é" * 33), "holder of 66 bytes"),
    (KeyReservation(REQUEST_ID, "not-a-uuid", "v1:256"), "UUID"),
    (EpochReservation(REQUEST_ID, TAG, 0, KEY_ID, 1.0), "epoch number 0"),
    (EpochReservation(REQUEST_ID, TAG, 2**64 - 1, KEY_ID, 1.0), "epoch number"),
    (EpochReservation(REQUEST_ID, TAG[:7], 1, KEY_ID, 1.0), "tunnel tag"),
    (EpochReservation(REQUEST_ID, TAG, 1, KEY_ID, math.nan), "finite"),
    (EpochReservation(REQUEST_ID, TAG, 1, KEY_ID, math.inf), "finite"),
    (EpochReservation(REQUEST_ID, TAG, 1, KEY_ID, -1.0), "non-negative"),
])
def test_a_reservation_that_breaks_its_kind_is_not_sent(bad, problem):
    endpoint = ReservationEndpoint()
    with pytest.raises(ValueError, match=problem):
        endpoint.reserve(bad)
    assert endpoint.state("master", REQUEST_ID) is None                # nothing changed


def forged(purpose: Purpose, body: bytes) -> bytes:
    return bytes([3, MessageType.RESERVE, purpose]) + uuid.UUID(REQUEST_ID).bytes + struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("message, problem", [
    (forged(Purpose.KEY, uuid.UUID(KEY_ID).bytes + b"\x00\x00"), "holder of 0 bytes"),
    (forged(Purpose.KEY, uuid.UUID(KEY_ID).bytes + b"\x00\x41" + b"h" * 65), "65 bytes exceeds 64"),
    (forged(Purpose.KEY, uuid.UUID(KEY_ID).bytes + b"\x00\x02\xff\xfe"), "not UTF-8"),
    (forged(Purpose.KEY, uuid.UUID(KEY_ID).bytes + b"\x00\x02\xed\xa0"), "not UTF-8"),     # half a surrogate
    (forged(Purpose.WG_EPOCH, struct.pack(">8sQ16sd", TAG, 0, uuid.UUID(KEY_ID).bytes, 1.0)), "epoch number 0"),
    (forged(Purpose.WG_EPOCH, struct.pack(">8sQ16sd", TAG, 2**64 - 1, uuid.UUID(KEY_ID).bytes, 1.0)), "epoch number"),
    (forged(Purpose.WG_EPOCH, struct.pack(">8sQ16sd", TAG, 1, uuid.UUID(KEY_ID).bytes, math.nan)), "finite"),
    (forged(Purpose.WG_EPOCH, struct.pack(">8sQ16sd", TAG, 1, uuid.UUID(KEY_ID).bytes, -math.inf)), "finite"),
    (forged(Purpose.WG_EPOCH, struct.pack(">8sQ16sd", TAG, 1, uuid.UUID(KEY_ID).bytes, -1.0)), "non-negative"),
    (forged(Purpose.WG_EPOCH, struct.pack(">8sQ16sd", TAG, 1, uuid.UUID(KEY_ID).bytes, 1.0)[:-1]), "truncated"),
])
def test_a_reservation_that_breaks_its_kind_is_refused_on_the_wire(message, problem):
    endpoint = ReservationEndpoint()
    with pytest.raises(ReservationProtocolError, match=problem):
        endpoint.receive(message)
    assert endpoint.state("slave", REQUEST_ID) is None


def test_the_largest_epoch_number_and_holder_are_accepted():
    for request in (EpochReservation(REQUEST_ID, TAG, MAX_EPOCH, KEY_ID, 0.0),
                    KeyReservation(REQUEST_ID, KEY_ID, "h" * 64)):
        assert ReservationEndpoint().receive(encode_reserve(request)) == [ReservationReceived(request)]


@pytest.mark.parametrize("bad, problem", [
    (EpochAnnouncement(TAG, 0, KEY_ID, 0.0), "epoch 0 carries"),
    (EpochAnnouncement(TAG, 0, "", 2.0), "epoch 0 carries"),
    (EpochAnnouncement(TAG, 2**64 - 1, KEY_ID, 2.0), "epoch number"),
    (EpochAnnouncement(TAG, 1, "", 2.0), "UUID"),
    (EpochAnnouncement(TAG, 1, KEY_ID, math.nan), "finite"),
    (EpochAnnouncement(b"", 0, "", 0.0), "tunnel tag"),
])
def test_an_announcement_that_breaks_its_kind_is_refused(bad, problem):
    with pytest.raises(ValueError, match=problem):
        ReservationEndpoint().announce(bad)


def test_epoch_0_announced_with_a_key_id_or_a_time_is_refused_on_the_wire():
    valid = ReservationEndpoint().announce(EpochAnnouncement(TAG, 0, "", 0.0))
    for forged in (valid[:39] + b"\x01" + valid[40:], valid[:-8] + struct.pack(">d", 3.0)):
        with pytest.raises(ReservationProtocolError, match="epoch 0 carries"):
            ReservationEndpoint().receive(forged)
    above = valid[:31] + struct.pack(">Q", MAX_EPOCH + 1) + valid[39:]
    with pytest.raises(ReservationProtocolError, match="epoch number"):
        ReservationEndpoint().receive(above)


# -- sizes and the bounded memory of abandoned requests --------------------------------------------------

def test_queued_messages_go_out_in_payloads_of_bounded_size():
    messages = [bytes([n]) * size for n, size in enumerate([10, 20, 30, 100, 5])]
    assert pack_payloads(messages, 60) == [messages[0] + messages[1] + messages[2], messages[3], messages[4]]
    assert b"".join(pack_payloads(messages, 10**6)) == b"".join(messages)
    assert pack_payloads([]) == []


def test_a_payload_over_the_packing_size_is_decoded_only_as_one_message_within_the_cap():
    """Back-to-back messages fill at most MAX_PACKED_BYTES of a payload and one message is at most
    MAX_MESSAGE_BYTES: the receiver refuses anything else before decoding it, so a peer cannot keep the
    event loop decoding a huge record; `reserve` refuses to build a message over the cap."""
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    small = [master.reserve(etsi014(1, 256)) for _ in range(20_000)]
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

    byte_by_byte = tuple(Segment(new_id(), 0, 1) for _ in range(128))   # stored keys of 8 bits
    keys = tuple(ReservedKey(new_id(), byte_by_byte) for _ in range(2000))
    one_big = Etsi014Reservation(new_id(), "sae-a", ("sae-b",), 1024, keys)
    with pytest.raises(ValueError, match="exceeds"):
        master.reserve(one_big)
    assert master.state("master", one_big.request_id) is None          # nothing changed


def test_one_large_message_within_the_cap_is_accepted_alone():
    keys = tuple(ReservedKey(new_id(), tuple(Segment(new_id(), 0, 1) for _ in range(128))) for _ in range(400))
    big = Etsi014Reservation(new_id(), "sae-a", ("sae-b",), 1024, keys)
    message = ReservationEndpoint().reserve(big)
    assert MAX_PACKED_BYTES < len(message) <= MAX_MESSAGE_BYTES
    assert ReservationEndpoint().receive(message) == [ReservationReceived(big)]


def test_only_the_newest_abandoned_requests_are_remembered_for_a_late_answer(monkeypatch):
    """A peer that stops answering on a session that lasts: each request is abandoned at its deadline;
    the endpoint remembers the newest MAX_ABANDONED of them, so its memory stays bounded."""
    monkeypatch.setattr(wire, "MAX_ABANDONED", 4)
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    requests = [REQUESTS[PURPOSES[n % 3]]() for n in range(6)]
    for request in requests:
        slave.receive(master.reserve(request))
        master.abandon(request.request_id)
    assert [master.state("master", r.request_id) for r in requests] == [None] * 2 + [State.ABANDONED] * 4
    assert master.receive(slave.accept(requests[-1].request_id)) == [
        LateAnswer(requests[-1].request_id, requests[-1].purpose, True)]
    with pytest.raises(ReservationProtocolError, match="no request"):
        master.receive(slave.accept(requests[0].request_id))          # forgotten: an answer to nothing
    for _ in range(3):                                                # more abandoned ones push the rest out
        request = key_request()
        master.reserve(request)
        master.abandon(request.request_id)
    assert len(master._requests) == len(master._abandoned) == 4


# -- hostile input ------------------------------------------------------------------------------------

def reencoded(events) -> bytes:
    """What this end would send for the reservations and announcements of `events`, back to back."""
    parts = []
    for event in events:
        if isinstance(event, ReservationReceived):
            parts.append(encode_reserve(event.reservation))
        else:
            assert isinstance(event, AnnouncementReceived)
            parts.append(ReservationEndpoint().announce(event.announcement))
    return b"".join(parts)


def test_arbitrary_peer_bytes_give_a_protocol_error_or_valid_events_that_encode_back_to_them():
    requests = [etsi014(number=2, size_bits=128), key_request(), epoch_request(9)]
    valid = b"".join(encode_reserve(request) for request in requests) + ReservationEndpoint().announce(
        EpochAnnouncement(TAG, 4, new_id(), 77.0))
    overwrites = fields([0, 1, 2, 3, 4, 64, 65, 255, 2**16 - 1], 2, "big") + fields([0, 2**32 - 1], 4, "big") \
        + fields([0, 2**64 - 2, 2**64 - 1], 8, "big") + [struct.pack(">d", value) for value in (math.nan, -0.0, -1.0)]

    @settings(max_examples=500, deadline=None)
    @given(st.one_of(st.binary(max_size=200), edited(valid, overwrites=overwrites),
                     st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
                         lambda edit: valid[:edit[0]] + bytes([edit[1]]) + valid[edit[0] + 1:])))
    def check(payload):
        try:
            events = ReservationEndpoint().receive(payload)
        except ReservationProtocolError:
            return
        assert events and all(isinstance(event, (ReservationReceived, AnnouncementReceived)) for event in events)
        for event in events:
            if isinstance(event, ReservationReceived):
                check_reservation(event.reservation)
        assert reencoded(events) == payload

    check()


sae_ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda text: len(text.encode()) <= 1024)


@st.composite
def etsi014_reservations(draw):
    size_bits = draw(st.integers(1, 64)) * 8
    number = draw(st.integers(1, 8))
    stored_bits = draw(st.lists(st.integers(1, 64).map(lambda n: n * 8), min_size=1, max_size=6))
    stored = [(new_id(), bits) for bits in stored_bits + [number * size_bits]]     # enough
    slaves = tuple(draw(st.lists(sae_ids, min_size=1, max_size=4, unique=True)))
    return Etsi014Reservation(new_id(), draw(sae_ids), slaves, size_bits, planned(stored, number, size_bits))


uuids = st.uuids().map(str)
holders = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=64).filter(
    lambda text: len(text.encode()) <= 64)
times = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
reservations = st.one_of(
    etsi014_reservations(),
    st.builds(KeyReservation, uuids, uuids, holders),
    st.builds(EpochReservation, uuids, st.binary(min_size=8, max_size=8), st.integers(1, MAX_EPOCH), uuids, times))
announcements = st.one_of(
    st.builds(EpochAnnouncement, st.binary(min_size=8, max_size=8), st.integers(1, MAX_EPOCH), uuids, times),
    st.builds(EpochAnnouncement, st.binary(min_size=8, max_size=8), st.just(0), st.just(""), st.just(0.0)))


def test_reservations_and_announcements_round_trip():
    """Any reservation the master's end can send decodes to itself at the slave's end, and so does any
    announcement."""

    @settings(max_examples=200, deadline=None)
    @given(reservations, announcements)
    def round_trip(request, announcement):
        endpoint = ReservationEndpoint()
        message = endpoint.reserve(request)
        assert ReservationEndpoint().receive(message + endpoint.announce(announcement)) == [
            ReservationReceived(request), AnnouncementReceived(announcement)]

    round_trip()


def test_any_edit_of_an_answer_payload_is_an_event_or_an_error_changing_nothing():
    """A payload of answers from the peer, however cut, padded or edited, gives events of the documented
    kinds or one ReservationProtocolError that leaves every request's state as it was."""
    master, slave = ReservationEndpoint(), ReservationEndpoint()
    requests = [etsi014(number=1, size_bits=128), key_request(), epoch_request(3), key_request()]
    slave.receive(b"".join(master.reserve(request) for request in requests))
    master.abandon(requests[2].request_id)
    answers = (slave.accept(requests[0].request_id)
               + slave.refuse(requests[1].request_id, RefuseReason.STORE_FAILURE, "disque plein ✗")
               + slave.accept(requests[2].request_id)
               + ReservationEndpoint().announce(EpochAnnouncement(TAG, 1, new_id(), 3.0))
               + slave.refuse(requests[3].request_id, RefuseReason.KEYS_GONE, ""))
    before = {request.request_id: (master.state("master", request.request_id),
                                   master.purpose("master", request.request_id)) for request in requests}

    @settings(max_examples=400, deadline=None)
    @given(st.one_of(
        edited(answers, max_cut=8, overwrites=[bytes([value]) for value in (0, 1, 2, 3, 4, 5, 6, 7, 255)]),
        st.integers(0, len(answers)).map(lambda cut: answers[:cut])))
    def check(payload):
        endpoint = copy.deepcopy(master)
        try:
            events = endpoint.receive(payload)
        except ReservationProtocolError:
            assert {request_id: (endpoint.state("master", request_id), endpoint.purpose("master", request_id))
                    for request_id in before} == before
            return
        assert events and all(isinstance(event, (ReservationReceived, ReservationAccepted, ReservationRefused,
                                                 LateAnswer, AnnouncementReceived)) for event in events)
        for event in events:
            if isinstance(event, (ReservationAccepted, ReservationRefused, LateAnswer)):
                assert before[event.request_id][1] is event.purpose      # an answer of the request's purpose
                assert endpoint.state("master", event.request_id) is None

    check()


@pytest.mark.parametrize("chunk, problem", [
    (lambda: ChunkReservation(new_id(), new_id(), 1, ()), "a chunk of 0 keys"),
    (lambda: ChunkReservation(new_id(), new_id(), 1, (KEY_ID, KEY_ID)), "appears twice"),
    (lambda: ChunkReservation(new_id(), new_id(), 2**32, (KEY_ID,)), "chunk index"),
    (lambda: ChunkReservation(new_id(), "stream", 1, (KEY_ID,)), "not a canonical UUID"),
    (lambda: ChunkReservation(new_id(), new_id(), 1, tuple(new_id() for _ in range(wire.MAX_CHUNK_KEYS + 1))),
     "a chunk of 4097 keys"),
])
def test_a_malformed_chunk_reservation_is_refused_at_either_end(chunk, problem):
    with pytest.raises(ValueError, match=problem):
        ReservationEndpoint().reserve(chunk())
    valid = encode_reserve(ChunkReservation(REQUEST_ID, KEY_ID, 1, (KEY_ID, "00000000-0000-4000-8000-0000000000aa")))
    doubled = valid[:-16] + valid[-32:-16]             # the second key id is the first again
    with pytest.raises(ReservationProtocolError, match="appears twice"):
        ReservationEndpoint().receive(doubled)
