"""Fuzz target: WireGuard epoch messages from the other end of a tunnel. The input is cut into 48-byte
messages (the last one may be short) and each goes to a leader with a proposal in flight and to a follower,
which act on their events as the tunnel service does (the follower accepts a proposal, the leader gives up
its proposal and proposes afresh above the peer's epoch when a resync is needed).

Expected: events and replies, or an EpochMessageError; replies are well-formed messages; epoch numbers
only grow and stay within 64 bits.
"""
from __future__ import annotations

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from qkdd.consumers.wg_epoch import (MAX_EPOCH, MESSAGE_BYTES, Agreed, Epoch, EpochAgreement, EpochMessageError,
                                         EpochStateError, Message, MessageType, NackReason, Proposed, Refused,
                                         ResyncNeeded, decode, encode)

TUNNEL = "wg-qkd0"
KEY_IDS = ("6e0c7d1a-2b3c-4d5e-8f90-a1b2c3d4e5f6", "0f1e2d3c-4b5a-4968-8776-655443322110")
START = Epoch(5, "11111111-2222-4333-8444-555555555555", 1_700_000_000.0)


def _check_replies(replies: list[bytes]) -> None:
    for reply in replies:
        decode(reply, TUNNEL)            # what this end sends, the other end can read


def TestOneInput(data: bytes) -> None:
    leader = EpochAgreement(TUNNEL, leader=True, current=START)
    leader.propose(KEY_IDS[0], 1_700_000_100.0)
    follower = EpochAgreement(TUNNEL, leader=False, current=START)
    proposals = 1
    for at in range(0, max(len(data), 1), MESSAGE_BYTES):
        message = data[at:at + MESSAGE_BYTES]
        for end in (leader, follower):
            current = end.current.number
            try:
                events, replies = end.receive(message)
            except EpochMessageError:
                continue
            _check_replies(replies)
            for event in events:
                if isinstance(event, Proposed) and not end.leader:
                    _check_replies([end.accept()])
                elif isinstance(event, ResyncNeeded) and end.leader:
                    end.abandon()
                    try:
                        proposal = end.propose(KEY_IDS[proposals % 2], 1_700_000_200.0, above=event.peer_epoch.number)
                    except EpochStateError:
                        if end.current.number != MAX_EPOCH:     # the service logs this and keeps its PSK
                            raise
                        continue
                    _check_replies([proposal])
                    proposals += 1
                elif not isinstance(event, (Agreed, Refused)):
                    raise Finding(f"{'leader' if end.leader else 'follower'} got event {event!r}")
            if end.current.number < current:
                raise Finding(f"epoch went back from {current} to {end.current.number}")


def seeds() -> list[bytes]:
    proposal = Epoch(6, KEY_IDS[0], 1_700_000_100.0)
    return [encode(Message(MessageType.HELLO, START), TUNNEL),
            encode(Message(MessageType.ACK, proposal), TUNNEL),
            encode(Message(MessageType.NACK, proposal, NackReason.STALE), TUNNEL),
            encode(Message(MessageType.PROPOSE, Epoch(9, KEY_IDS[1], 1_700_000_300.0)), TUNNEL)
            + encode(Message(MessageType.HELLO, Epoch(MAX_EPOCH - 1, KEY_IDS[1], 0.0)), TUNNEL),
            encode(Message(MessageType.HELLO, Epoch(0, "", 0.0)), TUNNEL)]


if __name__ == "__main__":
    fuzz(TestOneInput)
