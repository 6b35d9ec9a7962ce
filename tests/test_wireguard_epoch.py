"""The WireGuard epoch agreement over the link's reservation protocol, both ends against each other in memory,
byte for byte through two real ReservationEndpoints (no sockets, no WireGuard)."""
from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from qkdd.consumers.wg_epoch import (NO_EPOCH, Agreed, Answer, Epoch, EpochAgreement, EpochMessageError,
                                     EpochStateError, Proposed, Refused, ResyncNeeded, State, tunnel_tag)
from qkdd.reservation.protocol import (MAX_EPOCH, EpochAnnouncement, EpochReservation, KeyReservation, MessageType,
                                       Purpose, RefuseReason, ReservationEndpoint, ReservationAccepted,
                                       ReservationProtocolError, ReservationReceived, ReservationRefused,
                                       encode_reserve)
from tests.mutations import edited, fields

TUNNEL = "site-a-b"


class End:
    """One end of the tunnel: its agreement on the link's reservation endpoint."""

    def __init__(self, leader: bool, current: Epoch = NO_EPOCH, tunnel: str = TUNNEL) -> None:
        self.endpoint = ReservationEndpoint()
        self.agreement = EpochAgreement(tunnel, leader, current)

    def propose(self, key_id: str, activate_at: float, *, above: int = 0) -> bytes:
        return self.endpoint.reserve(self.agreement.propose(key_id, activate_at, above=above))

    def hello(self) -> bytes:
        return self.endpoint.announce(self.agreement.hello())

    def accept(self, request_id: str) -> bytes:
        return self.agreement.accept(request_id).encode(self.endpoint)

    def refuse(self, request_id: str, reason: RefuseReason) -> bytes:
        return self.agreement.refuse(request_id, reason, "not here").encode(self.endpoint)

    def abandon(self) -> None:
        dropped = self.agreement.abandon()
        self.endpoint.abandon(dropped.request_id)

    def receive(self, payload: bytes) -> tuple[list, bytes]:
        """The agreement's events for a payload from the peer, and the bytes of its answers."""
        events, replies = [], []
        for event in self.endpoint.receive(payload):
            produced, answers = self.agreement.receive(event)
            events += produced
            replies += [answer.encode(self.endpoint) for answer in answers]
        return events, b"".join(replies)


def sender_of(reservation) -> ReservationEndpoint:
    """An endpoint that sent `reservation` (to read the answer to it)."""
    endpoint = ReservationEndpoint()
    endpoint.reserve(reservation)
    return endpoint


def ends(current_leader=NO_EPOCH, current_follower=NO_EPOCH) -> tuple[End, End]:
    return End(True, current_leader), End(False, current_follower)


def key() -> str:
    return str(uuid.uuid4())


def test_leader_proposes_follower_accepts_both_agree_on_the_same_epoch():
    leader, follower = ends()
    key_id = key()
    proposal = leader.propose(key_id, 1000.5)
    events, replies = follower.receive(proposal)
    request_id = leader.agreement.proposal.request_id
    assert events == [Proposed(Epoch(1, key_id, 1000.5), request_id)] and replies == b""
    ack = follower.accept(request_id)
    events, replies = leader.receive(ack)
    assert events == [Agreed(Epoch(1, key_id, 1000.5))] and replies == b""
    assert leader.agreement.current == follower.agreement.current == Epoch(1, key_id, 1000.5)
    assert leader.agreement.state is State.IDLE
    assert leader.agreement.propose(key(), 2000.0).number == 2        # the next proposal numbers on
    assert leader.endpoint.state("master", request_id) is None         # the endpoint forgot the finished one


def test_a_proposal_is_a_wg_epoch_reserve_and_a_hello_an_announce():
    leader = End(True, Epoch(4, key(), 3.0))
    key_id = "0f0e0d0c-0b0a-4908-8706-050403020100"
    reservation = leader.agreement.propose(key_id, 1.5)
    assert reservation == EpochReservation(reservation.request_id, tunnel_tag(TUNNEL), 5, key_id, 1.5)
    assert str(uuid.UUID(reservation.request_id)) == reservation.request_id
    data = leader.endpoint.reserve(reservation)
    assert data[:3] == bytes([3, MessageType.RESERVE, Purpose.WG_EPOCH])
    assert data[3:19] == uuid.UUID(reservation.request_id).bytes
    assert data[23:] == tunnel_tag(TUNNEL) + struct.pack(">Q", 5) + uuid.UUID(key_id).bytes + struct.pack(">d", 1.5)
    hello = End(False).hello()
    assert hello == bytes([3, MessageType.ANNOUNCE, Purpose.WG_EPOCH]) + bytes(16) + struct.pack(">I", 40) \
        + tunnel_tag(TUNNEL) + bytes(32)
    assert tunnel_tag(TUNNEL) == bytes.fromhex("146def0b9ee4a71e") and tunnel_tag("other") != tunnel_tag(TUNNEL)


def test_fresh_request_ids_per_proposal():
    leader, follower = ends()
    first = leader.agreement.propose(key(), 1.0)
    leader.agreement.abandon()
    second = leader.agreement.propose(key(), 2.0)
    assert first.request_id != second.request_id and second.number == first.number + 1


def test_refusal_leaves_both_ends_where_they_were():
    leader, follower = ends()
    follower.receive(leader.propose(key(), 10.0))
    request_id = leader.agreement.proposal.request_id
    events, _ = leader.receive(follower.refuse(request_id, RefuseReason.KEYS_UNAVAILABLE))
    assert events == [Refused(Epoch(1, events[0].epoch.key_id, 10.0), RefuseReason.KEYS_UNAVAILABLE)]
    assert leader.agreement.current == follower.agreement.current == NO_EPOCH
    assert leader.agreement.propose(key(), 11.0).number == 2          # idle again, numbered above the refused one


def test_a_repeated_proposal_is_accepted_again_and_an_old_one_is_refused_as_stale():
    leader, follower = ends()
    reservation = leader.agreement.propose(key(), 10.0)
    follower.receive(leader.endpoint.reserve(reservation))
    ack = follower.accept(reservation.request_id)
    again = EpochReservation(key(), reservation.tunnel_tag, reservation.number, reservation.key_id, 10.0)
    events, replies = follower.receive(encode_reserve(again))          # the acceptance was lost: same answer
    assert events == [] and replies[:2] == bytes([3, MessageType.ACCEPT]) and replies[3:19] == uuid.UUID(
        again.request_id).bytes
    leader.receive(ack)
    older = EpochReservation(key(), tunnel_tag(TUNNEL), 1, key(), 9.0)
    events, replies = follower.receive(encode_reserve(older))
    assert events == []
    assert sender_of(older).receive(replies) == [
        ReservationRefused(older.request_id, Purpose.WG_EPOCH, RefuseReason.STALE, "epoch 1 here")]


def test_hello_with_a_different_epoch_asks_the_leader_for_a_fresh_one_above_both():
    key_id = key()
    leader, follower = ends(Epoch(5, key_id, 1.0), Epoch(3, key(), 0.5))
    events, _ = leader.receive(follower.hello())
    assert events == [ResyncNeeded(follower.agreement.current)]
    assert leader.agreement.propose(key(), 2.0, above=events[0].peer_epoch.number).number == 6
    leader.agreement.abandon()
    ahead = End(False, Epoch(9, key(), 0.5))
    events, _ = leader.receive(ahead.hello())
    assert leader.agreement.propose(key(), 2.0, above=events[0].peer_epoch.number).number == 10
    in_step = End(False, Epoch(5, key_id, 1.0))
    assert leader.receive(in_step.hello()) == ([], b"")
    assert follower.receive(leader.hello()) == ([], b"")               # the follower waits for the leader


def test_a_late_acceptance_of_an_abandoned_proposal_forces_a_fresh_epoch_above_it():
    leader, follower = ends()
    follower.receive(leader.propose(key(), 10.0))
    proposal = leader.agreement.proposal
    leader.abandon()
    events, _ = leader.receive(follower.accept(proposal.request_id))
    assert events == [ResyncNeeded(Epoch.of(proposal))]
    assert follower.agreement.current == Epoch.of(proposal)
    assert leader.agreement.current == NO_EPOCH
    follower.receive(leader.propose(key(), 11.0, above=events[0].peer_epoch.number))
    assert leader.agreement.proposal.number == 2                       # not stale at the follower


def test_a_lost_acceptance_never_makes_the_next_proposal_stale():
    """The follower took epoch 1, its acceptance never came: the leader's next proposal is 2 all the same."""
    leader, follower = ends()
    follower.receive(leader.propose(key(), 10.0))
    follower.accept(leader.agreement.proposal.request_id)              # lost with the session
    leader.abandon()
    events, _ = follower.receive(leader.propose(key(), 20.0))
    assert [type(event) for event in events] == [Proposed] and events[0].epoch.number == 2


def test_a_late_refusal_changes_nothing_and_answers_of_other_requests_are_ignored():
    leader, follower = ends()
    follower.receive(leader.propose(key(), 10.0))
    proposal = leader.agreement.proposal
    leader.abandon()
    assert leader.receive(follower.refuse(proposal.request_id, RefuseReason.KEYS_UNAVAILABLE)) == ([], b"")
    assert not leader.agreement.owns(proposal.request_id)
    other = EpochAgreement("another-tunnel", True)
    assert other.receive(ReservationAccepted(proposal.request_id, Purpose.WG_EPOCH)) == ([], [])


def test_a_proposal_superseded_while_considered_is_refused_and_cannot_be_accepted():
    leader, follower = ends()
    follower.receive(leader.propose(key(), 10.0))
    first = leader.agreement.proposal
    leader.abandon()
    events, replies = follower.receive(leader.propose(key(), 20.0))
    second = leader.agreement.proposal
    assert events == [Proposed(Epoch.of(second), second.request_id)]
    assert replies[1] == MessageType.REFUSE and replies[3:19] == uuid.UUID(first.request_id).bytes
    with pytest.raises(EpochStateError):
        follower.accept(first.request_id)
    assert leader.receive(replies) == ([], b"")                        # a late refusal
    assert leader.receive(follower.accept(second.request_id)) == ([Agreed(Epoch.of(second))], b"")


def test_local_misuse_is_refused():
    leader, follower = ends()
    with pytest.raises(EpochStateError):
        follower.agreement.propose(key(), 1.0)
    with pytest.raises(EpochStateError):
        follower.agreement.accept(key())
    with pytest.raises(EpochStateError):
        follower.agreement.refuse(key(), RefuseReason.STALE)
    leader.agreement.propose(key(), 1.0)
    with pytest.raises(EpochStateError):
        leader.agreement.propose(key(), 2.0)
    with pytest.raises(EpochStateError):
        leader.agreement.accept(leader.agreement.proposal.request_id)
    with pytest.raises(EpochStateError, match="is no epoch"):
        leader.agreement.receive(ReservationReceived(KeyReservation(key(), key(), "v1:256")))
    with pytest.raises(EpochStateError, match="is no epoch event"):
        leader.agreement.receive(ReservationAccepted(leader.agreement.proposal.request_id, Purpose.KEY))
    with pytest.raises(ValueError):
        End(True).agreement.propose(key(), float("nan"))               # nothing proposed
    with pytest.raises(ValueError):
        End(True).agreement.propose("not a key id", 1.0)


@pytest.mark.parametrize("mangle, problem", [
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:2] + b"\x09" + d[3:], "unknown purpose"),
    (lambda d: d[:-8] + struct.pack(">d", float("nan")), "finite"),
    (lambda d: d[:-8] + struct.pack(">d", -1.0), "non-negative"),
    (lambda d: d[:31] + struct.pack(">Q", 0) + d[39:], "epoch number 0"),
    (lambda d: d[:31] + struct.pack(">Q", 2**64 - 1) + d[39:], "epoch number"),
])
def test_malformed_messages_get_a_clear_error_and_change_nothing(mangle, problem):
    leader, follower = ends()
    with pytest.raises(ReservationProtocolError, match=problem):
        follower.receive(mangle(leader.propose(key(), 5.0)))
    assert follower.agreement.proposal is None and follower.agreement.current == NO_EPOCH


def test_a_proposal_or_announcement_for_another_tunnel_is_refused():
    leader, follower = End(True, tunnel="elsewhere"), End(False)
    events, replies = follower.receive(leader.propose(key(), 5.0))
    proposal = leader.agreement.pending
    assert events == [] and follower.agreement.proposal is None
    assert leader.receive(replies) == ([Refused(proposal, RefuseReason.MALFORMED)], b"")
    with pytest.raises(EpochMessageError, match="another tunnel"):
        End(True).receive(End(False, tunnel="elsewhere").hello())


def test_a_proposal_to_the_leader_is_refused_as_both_ends_lead():
    leader, other_leader = ends()[0], End(True)
    events, replies = leader.receive(other_leader.propose(key(), 1.0))
    assert events == []
    proposal = other_leader.agreement.pending
    events, _ = other_leader.receive(replies)
    assert events == [Refused(proposal, RefuseReason.MALFORMED)]
    assert other_leader.agreement.state is State.IDLE


def test_an_epoch_number_with_no_successor_is_refused_so_the_leader_can_always_propose_above():
    """A peer's epoch sets the floor of the leader's next proposal, which must still be a valid epoch."""
    leader, _ = ends()
    top = EpochAnnouncement(tunnel_tag(TUNNEL), MAX_EPOCH, key(), 0.5)
    with pytest.raises(EpochMessageError, match="no room"):
        leader.receive(ReservationEndpoint().announce(top))
    below = EpochAnnouncement(tunnel_tag(TUNNEL), MAX_EPOCH - 1, key(), 0.5)
    events, _ = leader.receive(ReservationEndpoint().announce(below))
    proposal = leader.propose(key(), 2.0, above=events[0].peer_epoch.number)
    assert ReservationEndpoint().receive(proposal)[0].reservation.number == MAX_EPOCH


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.data())
def test_any_peer_bytes_give_events_or_a_clear_error(leader_receives, data):
    """Mutated and random payloads, to either role: a ReservationProtocolError or EpochMessageError, or
    events the caller can act on (a leader asked to resync can always propose above the peer's epoch, a
    proposal can be accepted) and answers the endpoint can send."""
    leader, follower = ends(Epoch(3, key(), 1.0), Epoch(3, key(), 1.0))
    valid = follower.hello() if leader_receives else leader.propose(key(), 5.0)
    numbers = fields([0, 1, 2**63, 2**64 - 3, 2**64 - 2, 2**64 - 1], 8, "big")
    payload = data.draw(st.one_of(
        edited(valid, overwrites=numbers), st.binary(max_size=80),
        st.sampled_from(numbers).map(lambda number: valid[:31] + number + valid[39:]),     # the epoch number
        st.tuples(st.integers(23, len(valid) - 1), st.integers(0, 7)).map(                # a bit of the body
            lambda flip: valid[:flip[0]] + bytes([valid[flip[0]] ^ 1 << flip[1]]) + valid[flip[0] + 1:])))
    receiver = leader if leader_receives else follower
    try:
        events, replies = receiver.receive(payload)
    except (ReservationProtocolError, EpochMessageError):
        return
    considered = [event.request_id for event in events if isinstance(event, Proposed)]
    assert [request_id for _, request_id in receiver.endpoint._requests] == considered   # all else answered
    for event in events:
        if isinstance(event, ResyncNeeded):
            leader.agreement.abandon()
            assert leader.propose(key(), 6.0, above=event.peer_epoch.number)
        elif isinstance(event, Proposed):
            assert follower.accept(event.request_id)[1] == MessageType.ACCEPT


def test_answers_are_what_the_endpoint_sends():
    endpoint = ReservationEndpoint()
    reservation = EpochReservation(key(), tunnel_tag(TUNNEL), 1, key(), 1.0)
    endpoint.receive(encode_reserve(reservation))
    refused = Answer(reservation.request_id, RefuseReason.KEYS_UNAVAILABLE, "key unknown")
    assert not refused.accepted and Answer(reservation.request_id).accepted
    assert sender_of(reservation).receive(refused.encode(endpoint)) == [
        ReservationRefused(reservation.request_id, Purpose.WG_EPOCH, RefuseReason.KEYS_UNAVAILABLE, "key unknown")]
