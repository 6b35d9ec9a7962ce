"""Fuzz target: a payload of reservation messages from the peer (qkdd.reservation.protocol: ETSI 014 keys,
/v1 keys, WireGuard epochs and announcements), received twice by one endpoint that has requests of its own
in flight (one of each purpose, and one abandoned), so answers to them are legal the first time.

Expected: events, or a ReservationProtocolError that changes no request's state (a payload is decoded whole
before any of it is applied). Every RESERVE event holds a reservation that keeps its invariants, every
announcement keeps its own, and an answer's purpose is its request's.
"""
from __future__ import annotations

import uuid

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from qkdd.reservation import protocol

SENT = ("00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002",
        "00000000-0000-4000-8000-000000000004")
ABANDONED = "00000000-0000-4000-8000-000000000003"
STORED = "5b1f6a2e-0c4d-4e8f-9a7b-3c2d1e0f4a5b"
TAG = bytes(range(1, 9))


def _etsi014(request_id: str, keys: int = 2, segments: int = 1) -> protocol.Etsi014Reservation:
    key_bytes = 32 // segments
    planned = [protocol.ReservedKey(str(uuid.UUID(int=0x7000 + k, version=4)), tuple(
        protocol.Segment(STORED, (k * segments + s) * key_bytes, key_bytes) for s in range(segments)))
        for k in range(keys)]
    return protocol.Etsi014Reservation(request_id, "sae-a", ("sae-b", "sae-c"), 8 * key_bytes * segments,
                                       tuple(planned))


def _key(request_id: str) -> protocol.KeyReservation:
    return protocol.KeyReservation(request_id, STORED, "v1:256")


def _epoch(request_id: str) -> protocol.EpochReservation:
    return protocol.EpochReservation(request_id, TAG, 7, STORED, 1_700_000_000.0)


MADE = {SENT[0]: _etsi014, SENT[1]: _key, SENT[2]: _epoch, ABANDONED: _etsi014}


def _endpoint() -> protocol.ReservationEndpoint:
    endpoint = protocol.ReservationEndpoint()
    for request_id, make in MADE.items():
        endpoint.reserve(make(request_id))
    endpoint.abandon(ABANDONED)
    return endpoint


def _snapshot(endpoint: protocol.ReservationEndpoint) -> list:
    return [endpoint.state(role, request_id) for role in ("master", "slave") for request_id in MADE]


def TestOneInput(data: bytes) -> None:
    endpoint = _endpoint()
    for _ in range(2):
        before = _snapshot(endpoint)
        try:
            events = endpoint.receive(data)
        except protocol.ReservationProtocolError:
            if _snapshot(endpoint) != before:
                raise Finding("a refused payload changed a request's state") from None
            continue
        if not events:
            raise Finding("a payload was taken with no event")
        for event in events:
            if isinstance(event, protocol.ReservationReceived):
                protocol.check_reservation(event.reservation)
            elif isinstance(event, protocol.AnnouncementReceived):
                protocol.check_announcement(event.announcement)
            elif isinstance(event, (protocol.ReservationAccepted, protocol.ReservationRefused, protocol.LateAnswer)):
                made = MADE.get(event.request_id)
                if made is None or event.purpose is not made(event.request_id).purpose:
                    raise Finding(f"an answer of the wrong purpose or to no request was taken: {event!r}")
            else:
                raise Finding(f"unknown event {event!r}")


def seeds() -> list[bytes]:
    reserve = protocol.ReservationEndpoint().reserve(_etsi014("00000000-0000-4000-8000-00000000000a", 3, 2))
    answering = protocol.ReservationEndpoint()
    for request_id, make in MADE.items():
        answering.receive(protocol.ReservationEndpoint().reserve(make(request_id)))
    answers = [answering.accept(SENT[0]), answering.refuse(SENT[1], protocol.RefuseReason.KEYS_GONE, "delivered"),
               answering.accept(SENT[2]), answering.accept(ABANDONED)]
    announce = protocol.ReservationEndpoint().announce(protocol.EpochAnnouncement(TAG, 3, STORED, 1_700_000_000.0))
    return [reserve, answers[0], answers[1], announce,
            b"".join(protocol.pack_payloads(answers + [reserve, announce]))]


if __name__ == "__main__":
    fuzz(TestOneInput)
