"""The WireGuard epoch agreement, both ends against each other in memory (no sockets, no WireGuard)."""
from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from qkdd.consumers.wg_epoch import (MESSAGE_BYTES, NO_EPOCH, Agreed, Epoch, EpochAgreement, EpochMessageError,
                                     EpochStateError, Message, MessageType, NackReason, Proposed, Refused,
                                     ResyncNeeded, decode, encode)

TUNNEL = "site-a-b"


def ends(current_leader=NO_EPOCH, current_follower=NO_EPOCH):
    return EpochAgreement(TUNNEL, True, current_leader), EpochAgreement(TUNNEL, False, current_follower)


def key() -> str:
    return str(uuid.uuid4())


def test_leader_proposes_follower_accepts_both_agree_on_the_same_epoch():
    leader, follower = ends()
    key_id = key()
    proposal = leader.propose(key_id, 1000.5)
    assert len(proposal) == MESSAGE_BYTES
    events, replies = follower.receive(proposal)
    assert events == [Proposed(Epoch(1, key_id, 1000.5))] and replies == []
    ack = follower.accept()
    events, replies = leader.receive(ack)
    assert events == [Agreed(Epoch(1, key_id, 1000.5))] and replies == []
    assert leader.current == follower.current == Epoch(1, key_id, 1000.5)
    # the next proposal numbers on
    assert decode(leader.propose(key(), 2000.0), TUNNEL).epoch.number == 2


def test_the_wire_layout_is_fixed():
    key_id = "0f0e0d0c-0b0a-4908-8706-050403020100"
    data = encode(Message(MessageType.PROPOSE, Epoch(7, key_id, 1.5)), TUNNEL)
    magic, version, kind, reason, zero, number = struct.unpack_from(">4sBBBBQ", data)
    assert (magic, version, kind, reason, zero, number) == (b"QKWG", 1, 2, 0, 0, 7)
    assert data[16:32] == uuid.UUID(key_id).bytes
    assert struct.unpack_from(">d", data, 32)[0] == 1.5
    assert decode(data, TUNNEL) == Message(MessageType.PROPOSE, Epoch(7, key_id, 1.5))


def test_refusal_leaves_both_ends_where_they_were():
    leader, follower = ends()
    follower.receive(leader.propose(key(), 10.0))
    events, _ = leader.receive(follower.refuse(NackReason.KEY_UNKNOWN))
    assert isinstance(events[0], Refused) and events[0].reason is NackReason.KEY_UNKNOWN
    assert leader.current == follower.current == NO_EPOCH
    leader.propose(key(), 11.0)          # idle again


def test_a_repeated_proposal_is_acked_again_and_an_old_one_is_refused_as_stale():
    leader, follower = ends()
    proposal = leader.propose(key(), 10.0)
    follower.receive(proposal)
    ack = follower.accept()
    assert follower.receive(proposal) == ([], [ack])                  # the ACK was lost: same answer
    leader.receive(ack)
    older = encode(Message(MessageType.PROPOSE, Epoch(1, key(), 9.0)), TUNNEL)
    _, replies = follower.receive(older)
    assert decode(replies[0], TUNNEL).type is MessageType.NACK
    assert decode(replies[0], TUNNEL).reason is NackReason.STALE


def test_hello_with_a_different_epoch_asks_the_leader_for_a_fresh_one_above_both():
    key_id = key()
    leader, follower = ends(Epoch(5, key_id, 1.0), Epoch(3, key(), 0.5))
    events, _ = leader.receive(follower.hello())
    assert events == [ResyncNeeded(follower.current)]
    proposal = leader.propose(key(), 2.0, above=events[0].peer_epoch.number)
    assert decode(proposal, TUNNEL).epoch.number == 6
    in_step = EpochAgreement(TUNNEL, False, Epoch(5, key_id, 1.0))
    assert leader.receive(in_step.hello()) == ([], [])


def test_a_late_ack_for_an_abandoned_proposal_forces_a_fresh_epoch():
    leader, follower = ends()
    follower.receive(leader.propose(key(), 10.0))
    leader.abandon()
    events, _ = leader.receive(follower.accept())
    assert len(events) == 1 and isinstance(events[0], ResyncNeeded)


def test_local_misuse_is_refused():
    leader, follower = ends()
    with pytest.raises(EpochStateError):
        follower.propose(key(), 1.0)
    with pytest.raises(EpochStateError):
        follower.accept()
    leader.propose(key(), 1.0)
    with pytest.raises(EpochStateError):
        leader.propose(key(), 2.0)


@pytest.mark.parametrize("mangle, problem", [
    (lambda d: d[:-1], "bytes"),
    (lambda d: b"XXXX" + d[4:], "not a WireGuard"),
    (lambda d: d[:4] + b"\x02" + d[5:], "version"),
    (lambda d: d[:5] + b"\x09" + d[6:], "unknown type"),
    (lambda d: d[:6] + b"\x63" + d[7:], "unknown type"),
    (lambda d: d[:32] + struct.pack(">d", float("nan")) + d[40:], "finite"),
    (lambda d: d[:32] + struct.pack(">d", 0.0) + d[40:], "activation time"),
    (lambda d: d[:40] + b"\x00" * 8, "another tunnel"),
    (lambda d: d[:8] + bytes(8) + d[16:], "epoch 0 carries a key id"),
])
def test_malformed_messages_get_a_clear_error(mangle, problem):
    leader, follower = ends()
    with pytest.raises(EpochMessageError, match=problem):
        follower.receive(mangle(leader.propose(key(), 5.0)))


def test_a_message_for_the_wrong_role_is_an_error_not_a_crash():
    leader, _ = ends()
    other_leader = EpochAgreement(TUNNEL, True)
    with pytest.raises(EpochMessageError, match="both ends lead"):
        leader.receive(other_leader.propose(key(), 1.0))


def test_an_epoch_number_with_no_successor_is_refused_so_the_leader_can_always_propose_above():
    """A peer's epoch sets the floor of the leader's next proposal, which the follower must still be able to
    read: a HELLO or late ACK at the last epoch number (2^64 - 2) is refused, not answered with a proposal of
    2^64 - 1 that the follower refuses (found by fuzzing: tests/fuzz/fuzz_wg_epoch.py)."""
    leader, _ = ends()
    hello = EpochAgreement(TUNNEL, False, Epoch(5, key(), 0.5)).hello()
    with pytest.raises(EpochMessageError, match="epoch number"):
        leader.receive(hello[:8] + struct.pack(">Q", 2**64 - 1) + hello[16:])
    with pytest.raises(EpochMessageError, match="no room for a proposal above it"):
        leader.receive(hello[:8] + struct.pack(">Q", 2**64 - 2) + hello[16:])
    late_ack = encode(Message(MessageType.ACK, Epoch(2**64 - 2, key(), 1.0)), TUNNEL)
    with pytest.raises(EpochMessageError, match="no room for a proposal above it"):
        leader.receive(late_ack)
    events, _ = leader.receive(hello[:8] + struct.pack(">Q", 2**64 - 3) + hello[16:])
    proposal = leader.propose(key(), 2.0, above=events[0].peer_epoch.number)
    follower = EpochAgreement(TUNNEL, False, events[0].peer_epoch)
    (proposed,), _ = follower.receive(proposal)
    assert proposed.epoch.number == 2**64 - 2
    events, _ = leader.receive(follower.accept())
    assert events == [Agreed(proposed.epoch)] and leader.current.number == 2**64 - 2
    with pytest.raises(EpochStateError, match="epoch numbers are used up"):
        leader.propose(key(), 3.0)
    assert leader.state.value == "idle" and leader.pending is None


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.sampled_from(["flip", "field", "random"]), st.integers(0, MESSAGE_BYTES - 1),
       st.integers(0, 7), st.binary(min_size=MESSAGE_BYTES, max_size=MESSAGE_BYTES),
       st.sampled_from([0, 1, 2**63, 2**64 - 2, 2**64 - 1]), st.binary(max_size=60))
def test_any_peer_bytes_give_events_or_an_epoch_message_error(leader_receives, how, at, bit, noise, number, short):
    """Mutated and random messages, to either role: an EpochMessageError or events the caller can act on (a
    leader asked to resync can always propose above the peer's epoch)."""
    leader, follower = ends(Epoch(3, key(), 1.0), Epoch(3, key(), 1.0))
    data = bytearray(follower.hello() if leader_receives else leader.propose(key(), 5.0))
    if how == "flip":
        data[at] ^= 1 << bit
    elif how == "field":
        data[8:16] = struct.pack(">Q", number)
    else:
        data = bytearray(noise if at % 2 else short)
    receiver = leader if leader_receives else follower
    try:
        events, replies = receiver.receive(bytes(data))
    except EpochMessageError:
        return
    assert all(len(reply) == MESSAGE_BYTES for reply in replies)
    for event in events:
        if isinstance(event, ResyncNeeded):
            proposal = leader.propose(key(), 6.0, above=event.peer_epoch.number)
            assert decode(proposal, TUNNEL).epoch.number > event.peer_epoch.number
        elif isinstance(event, Proposed):
            assert len(follower.accept()) == MESSAGE_BYTES
