"""Fuzz target: WireGuard epoch messages from the other end of a tunnel, as reservation payloads
(qkdd.reservation.protocol, purpose WG_EPOCH). Each input is one payload, decoded by the link's endpoint;
its WireGuard events go to a leader with a proposal in flight and to a follower, which act on their events
as the tunnel does (the follower accepts a proposal, the leader proposes afresh above the peer's epoch
when a resync is needed).

Expected: events and answers, or a ReservationProtocolError / EpochMessageError; answers encode to
messages the other end can read; epoch numbers only grow and stay within 64 bits.
"""
from __future__ import annotations

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from qkdd.consumers.wg_epoch import (Agreed, Epoch, EpochAgreement, EpochMessageError, EpochStateError,
                                         Proposed, Refused, ResyncNeeded, tunnel_tag)
    from qkdd.reservation.protocol import (MAX_EPOCH, EpochAnnouncement, EpochReservation, Purpose,
                                           ReservationEndpoint, ReservationProtocolError)

TUNNEL = "wg-qkd0"
KEY_IDS = ("6e0c7d1a-2b3c-4d5e-8f90-a1b2c3d4e5f6", "0f1e2d3c-4b5a-4968-8776-655443322110")
START = Epoch(5, "11111111-2222-4333-8444-555555555555", 1_700_000_000.0)


def _readable(message: bytes) -> None:
    """What this end sends, the other end can decode (into an endpoint that sent the requests)."""
    try:
        ReservationEndpoint().receive(message)
    except ReservationProtocolError as exc:
        if "illegal" not in str(exc):                # an answer to a request that endpoint never sent
            raise Finding(f"this end sent an unreadable message: {exc}") from None


def _act(end: EpochAgreement, endpoint: ReservationEndpoint, events: list) -> None:
    """Feed the WireGuard events of one decoded payload to `end`, acting on what comes out."""
    proposals = 1
    for event in events:
        purpose = getattr(event, "purpose", None) or getattr(getattr(event, "reservation", None), "purpose", None) \
            or getattr(getattr(event, "announcement", None), "purpose", None)
        if purpose is not Purpose.WG_EPOCH:
            continue                                        # another purpose's: not for the tunnels
        current = end.current.number
        try:
            outcome, answers = end.receive(event)
        except (EpochMessageError, EpochStateError):
            continue
        for answer in answers:
            try:
                _readable(answer.encode(endpoint))
            except ReservationProtocolError as exc:
                raise Finding(f"an answer the endpoint cannot send: {answer!r}: {exc}") from None
        for happened in outcome:
            if isinstance(happened, Proposed) and not end.leader:
                _readable(end.accept(happened.request_id).encode(endpoint))
            elif isinstance(happened, ResyncNeeded) and end.leader:
                end.abandon()
                try:
                    proposal = end.propose(KEY_IDS[proposals % 2], 1_700_000_200.0, above=happened.peer_epoch.number)
                except EpochStateError:
                    if end.current.number != MAX_EPOCH:     # the tunnel logs this and keeps its PSK
                        raise
                    continue
                if not isinstance(proposal, EpochReservation) or proposal.number > MAX_EPOCH:
                    raise Finding(f"leader proposed {proposal!r}")
                _readable(ReservationEndpoint().reserve(proposal))
                proposals += 1
            elif not isinstance(happened, (Agreed, Refused)):
                raise Finding(f"{'leader' if end.leader else 'follower'} got event {happened!r}")
        if end.current.number < current:
            raise Finding(f"epoch went back from {current} to {end.current.number}")


def TestOneInput(data: bytes) -> None:
    leader, leader_endpoint = EpochAgreement(TUNNEL, leader=True, current=START), ReservationEndpoint()
    leader_endpoint.reserve(leader.propose(KEY_IDS[0], 1_700_000_100.0))
    follower, follower_endpoint = EpochAgreement(TUNNEL, leader=False, current=START), ReservationEndpoint()
    for end, endpoint in ((leader, leader_endpoint), (follower, follower_endpoint)):
        try:
            events = endpoint.receive(data)
        except ReservationProtocolError:
            continue
        _act(end, endpoint, events)


def seeds() -> list[bytes]:
    peer = ReservationEndpoint()
    tag = tunnel_tag(TUNNEL)
    propose = peer.reserve(EpochReservation("00000000-0000-4000-8000-0000000000aa", tag, 9, KEY_IDS[1],
                                            1_700_000_300.0))
    hello = peer.announce(EpochAnnouncement(tag, 7, KEY_IDS[0], 1_700_000_000.0))
    stale = peer.reserve(EpochReservation("00000000-0000-4000-8000-0000000000ab", tag, 3, KEY_IDS[0], 1.0))
    return [propose, hello, stale, propose + hello]


if __name__ == "__main__":
    fuzz(TestOneInput)
