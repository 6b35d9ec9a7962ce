"""Fuzz target: a payload of reservation messages from the peer KME, received twice by one endpoint that has
requests of its own in flight (two sent, one abandoned), so answers to them are legal the first time.

Expected: events, or a ReservationProtocolError that changes no request's state (a payload is decoded whole
before any of it is applied). Every RESERVE event holds a reservation that keeps its invariants.
"""
from __future__ import annotations

import uuid

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    import qkdd.kme.reservation as protocol     # the one line to change when the protocol moves

SENT = ("00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002")
ABANDONED = "00000000-0000-4000-8000-000000000003"
STORED = "5b1f6a2e-0c4d-4e8f-9a7b-3c2d1e0f4a5b"


def _reservation(request_id: str, keys: int = 2, segments: int = 1) -> "protocol.Reservation":
    key_bytes = 32 // segments
    planned = [protocol.ReservedKey(str(uuid.UUID(int=0x7000 + k, version=4)), tuple(
        protocol.Segment(STORED, (k * segments + s) * key_bytes, key_bytes) for s in range(segments)))
        for k in range(keys)]
    return protocol.Reservation(request_id, "sae-a", ("sae-b", "sae-c"), 8 * key_bytes * segments, tuple(planned))


def _endpoint() -> "protocol.ReservationEndpoint":
    endpoint = protocol.ReservationEndpoint()
    for request_id in SENT + (ABANDONED,):
        endpoint.reserve(_reservation(request_id))
    endpoint.abandon(ABANDONED)
    return endpoint


def _snapshot(endpoint: "protocol.ReservationEndpoint") -> list:
    return [endpoint.state(role, request_id) for role in ("master", "slave") for request_id in SENT + (ABANDONED,)]


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
            elif not isinstance(event, (protocol.ReservationAccepted, protocol.ReservationRefused,
                                        protocol.LateAnswer)):
                raise Finding(f"unknown event {event!r}")


def seeds() -> list[bytes]:
    reserve = protocol.ReservationEndpoint().reserve(_reservation("00000000-0000-4000-8000-00000000000a", 3, 2))
    accept = protocol.ReservationEndpoint()
    accept.receive(protocol.ReservationEndpoint().reserve(_reservation(SENT[0])))
    refuse = protocol.ReservationEndpoint()
    refuse.receive(protocol.ReservationEndpoint().reserve(_reservation(SENT[1])))
    late = protocol.ReservationEndpoint()
    late.receive(protocol.ReservationEndpoint().reserve(_reservation(ABANDONED)))
    answers = [accept.accept(SENT[0]), refuse.refuse(SENT[1], protocol.RefuseReason.KEYS_UNAVAILABLE, "key in use"),
               late.accept(ABANDONED)]
    return [reserve, answers[0], answers[1], b"".join(protocol.pack_payloads(answers + [reserve]))]


if __name__ == "__main__":
    fuzz(TestOneInput)
