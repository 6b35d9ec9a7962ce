"""WireGuard epoch agreement: the two ends of a tunnel agree on which QKD key is the PSK from when (sans-IO),
as the WG_EPOCH purpose of the link's reservation protocol (qkdd.reservation.protocol).

Theory of operation
-------------------
An epoch is (number, key id, activation time). The leading end (the link's alice) reserves a 256-bit key
in its store and proposes the next epoch: an `EpochReservation` under a fresh request id, which the
caller sends with the link's `ReservationEndpoint.reserve`. The follower checks that the key is in its
own store and reserves it there too, then accepts; or refuses with a reason (KEYS_UNAVAILABLE: the key is
not here or not free; STALE: the epoch is not newer than its own). Both ends install the key at the
activation time the leader chose (a couple of seconds ahead, so both switch within moments of each other,
far inside WireGuard's 120 s rekey window). Without an acceptance the leader never switches, so a lost
proposal costs one key, never the tunnel. A leader that waits too long abandons the proposal (and the
caller abandons its request at the endpoint); if the acceptance comes after all (`LateAnswer`), the
follower switched to a key this end dropped, so the leader proposes a fresh epoch. Every proposal is
numbered above every earlier one of this leader, so an epoch the follower took without the leader
knowing never makes the next proposal stale.

When a session (re)starts both ends announce their current epoch (`EpochAnnouncement`); on any
difference the leader proposes a fresh epoch numbered above both, which brings a restarted or lagging end
back in step in one round. The machine neither reads keys nor touches WireGuard nor encodes bytes: the
caller does (reserve keys, install, the endpoint's messages) and feeds the endpoint's events in.

    role      state      event                                   -> state      output
    leader    IDLE       propose(key, at)                        -> PROPOSED   EpochReservation
    leader    PROPOSED   ReservationAccepted(the proposal)       -> IDLE       Agreed (caller installs at `at`)
    leader    PROPOSED   ReservationRefused(the proposal)        -> IDLE       Refused (caller drops the key)
    leader    PROPOSED   abandon()                               -> IDLE       (the dropped EpochReservation)
    leader    any        LateAnswer(an abandoned one, accepted)  -> same       ResyncNeeded (caller proposes)
    leader    any        AnnouncementReceived(epoch != current)  -> same       ResyncNeeded (caller proposes)
    follower  any        ReservationReceived(epoch > current)    -> same       Proposed (caller: accept/refuse)
    follower  any        ReservationReceived(current epoch)      -> same       Answer: accept again (a lost one)
    follower  any        ReservationReceived(epoch <= current)   -> same       Answer: refuse STALE
    both      any        session start: hello()                  -> same       EpochAnnouncement

A proposal that reaches the leader (both ends lead) or names another tunnel is refused MALFORMED; an
announcement for another tunnel, or of an epoch with no room above it, is an EpochMessageError. Answers to
requests this tunnel did not send are ignored, so a caller may offer them to every tunnel of the link.
"""
from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass

from qkdd.reservation.protocol import (MAX_EPOCH, AnnouncementReceived, Answer, EpochAnnouncement, EpochReservation,
                                       LateAnswer, Purpose, RefuseReason, ReservationAccepted, ReservationProtocolError,
                                       ReservationReceived, ReservationRefused, check_reservation)
from qkdd.reservation.protocol import Event as ReservationEvent

MAX_ABANDONED_PROPOSALS = 64     # abandoned proposals remembered per tunnel for a late answer (the newest)


class EpochMessageError(ValueError):
    """A peer's epoch message is for another tunnel or leaves no room for a next epoch."""


class EpochStateError(RuntimeError):
    """The local caller asked for something the current state does not allow."""


class State(enum.Enum):
    IDLE = "idle"
    PROPOSED = "proposed"


@dataclass(frozen=True)
class Epoch:
    number: int
    key_id: str
    activate_at: float

    def __repr__(self) -> str:
        return f"Epoch({self.number}, {self.key_id}, at={self.activate_at:.3f})"

    @classmethod
    def of(cls, message: EpochReservation | EpochAnnouncement) -> "Epoch":
        return NO_EPOCH if message.number == 0 else cls(message.number, message.key_id, message.activate_at)


NO_EPOCH = Epoch(0, "", 0.0)


# Events for the caller.
@dataclass(frozen=True)
class Agreed:
    epoch: Epoch


@dataclass(frozen=True)
class Refused:
    epoch: Epoch
    reason: RefuseReason


@dataclass(frozen=True)
class Proposed:
    epoch: Epoch
    request_id: str          # what the caller passes to accept() or refuse()


@dataclass(frozen=True)
class ResyncNeeded:
    peer_epoch: Epoch


Event = Agreed | Refused | Proposed | ResyncNeeded


def tunnel_tag(tunnel: str) -> bytes:
    """8 bytes naming a tunnel on the wire (both ends share its name)."""
    return hashlib.sha256(b"qkdd/wireguard-tunnel\x00" + tunnel.encode()).digest()[:8]


def consumer_tag(kind: str, name: str) -> bytes:
    """8 bytes naming another consumer ("kms", "ipsec") on the wire; WireGuard tunnels keep tunnel_tag."""
    if kind == "wireguard":
        return tunnel_tag(name)
    return hashlib.sha256(b"qkdd/" + kind.encode() + b"-consumer\x00" + name.encode()).digest()[:8]


class EpochAgreement:
    """One end of one tunnel. `current` is the epoch this end has agreed to (installed or about to be)."""

    def __init__(self, tunnel: str, leader: bool, current: Epoch = NO_EPOCH, *, tag: bytes | None = None) -> None:
        self.tunnel = tunnel
        self.tag = tag if tag is not None else tunnel_tag(tunnel)
        self.leader = leader
        self.current = current
        self.state = State.IDLE
        self.proposal: EpochReservation | None = None   # leader: awaiting an answer; follower: awaiting accept
        self._highest_proposed = current.number
        self._abandoned: dict[str, Epoch] = {}          # leader: abandoned proposals by request id, oldest first

    @property
    def pending(self) -> Epoch | None:
        """The epoch of the proposal in flight (leader) or under consideration (follower)."""
        return Epoch.of(self.proposal) if self.proposal else None

    def owns(self, request_id: str) -> bool:
        """Whether `request_id` is a proposal of this tunnel an answer may still come for (routing)."""
        return (self.proposal is not None and self.proposal.request_id == request_id) or request_id in self._abandoned

    # -- local actions -----------------------------------------------------------------------------
    def hello(self) -> EpochAnnouncement:
        """What this end announces at the start of every session."""
        return EpochAnnouncement(self.tag, self.current.number, self.current.key_id, self.current.activate_at)

    def propose(self, key_id: str, activate_at: float, *, above: int = 0) -> EpochReservation:
        """Leader: propose `key_id` as the next epoch, numbered above the current epoch, every earlier
        proposal and `above` (a peer's epoch)."""
        if not self.leader:
            raise EpochStateError(f"tunnel {self.tunnel}: only the leader proposes")
        if self.state is not State.IDLE:
            raise EpochStateError(f"tunnel {self.tunnel}: propose in state {self.state.value}")
        number = max(self.current.number, self._highest_proposed, above) + 1
        if number > MAX_EPOCH:
            raise EpochStateError(f"tunnel {self.tunnel}: no epoch number above {number - 1}")
        proposal = EpochReservation(str(uuid.uuid4()), self.tag, number, str(uuid.UUID(key_id)), activate_at)
        try:
            check_reservation(proposal)
        except ReservationProtocolError as exc:
            raise ValueError(f"tunnel {self.tunnel}: {exc}") from None
        self.proposal = proposal
        self._highest_proposed = number
        self.state = State.PROPOSED
        return self.proposal

    def abandon(self) -> EpochReservation | None:
        """Leader: give up waiting for an answer (timeout, session lost); returns the dropped proposal,
        whose request the caller abandons at the endpoint too."""
        dropped, self.proposal = self.proposal, None
        self.state = State.IDLE
        if dropped is not None:
            self._abandoned[dropped.request_id] = Epoch.of(dropped)
            if len(self._abandoned) > MAX_ABANDONED_PROPOSALS:
                del self._abandoned[next(iter(self._abandoned))]
        return dropped

    def accept(self, request_id: str) -> Answer:
        """Follower: the proposed key is reserved here; agree to it."""
        proposal = self._considered(request_id)
        self.current, self.proposal = Epoch.of(proposal), None
        return Answer(request_id)

    def refuse(self, request_id: str, reason: RefuseReason, text: str = "") -> Answer:
        """Follower: the proposed key cannot be used here."""
        self._considered(request_id)
        self.proposal = None
        return Answer(request_id, RefuseReason(reason), text)

    def _considered(self, request_id: str) -> EpochReservation:
        if self.leader or self.proposal is None or self.proposal.request_id != request_id:
            raise EpochStateError(f"tunnel {self.tunnel}: no proposal {request_id} to answer")
        return self.proposal

    # -- events from the link's reservation endpoint -----------------------------------------------
    def receive(self, event: ReservationEvent) -> tuple[list[Event], list[Answer]]:
        """Feed one event of the endpoint (of purpose WG_EPOCH); returns (events for the caller, answers
        to send back)."""
        if isinstance(event, AnnouncementReceived):
            return self._announced(event.announcement), []
        if isinstance(event, ReservationReceived):
            if not isinstance(event.reservation, EpochReservation):
                raise EpochStateError(f"tunnel {self.tunnel}: a {type(event.reservation).__name__} is no epoch")
            return self._proposed(event.reservation)
        if getattr(event, "purpose", None) not in (Purpose.WG_EPOCH, Purpose.HYBRID_EPOCH):
            raise EpochStateError(f"tunnel {self.tunnel}: {event!r} is no epoch event")
        if isinstance(event, LateAnswer):
            epoch = self._abandoned.pop(event.request_id, None)
            if epoch is None or not event.accepted or epoch == self.current:
                return [], []
            # the follower switched to a key this end dropped: both must move to a fresh epoch
            return [ResyncNeeded(epoch)], []
        if isinstance(event, (ReservationAccepted, ReservationRefused)):
            return self._answered(event), []
        raise EpochStateError(f"tunnel {self.tunnel}: {event!r} is no epoch event")

    def _announced(self, announcement: EpochAnnouncement) -> list[Event]:
        if announcement.tunnel_tag != self.tag:
            raise EpochMessageError(f"an epoch announcement is for another tunnel than {self.tunnel!r}")
        if not self.leader:
            return []                              # the leader decides; this end's HELLO went out at session start
        epoch = Epoch.of(announcement)
        if epoch == self.current:
            return []
        if epoch.number >= MAX_EPOCH:
            raise EpochMessageError(f"tunnel {self.tunnel}: the peer's epoch number {epoch.number} leaves no room "
                                    f"for a next epoch")
        return [ResyncNeeded(epoch)]

    def _answered(self, event: ReservationAccepted | ReservationRefused) -> list[Event]:
        if self.proposal is None or self.proposal.request_id != event.request_id:
            if isinstance(event, ReservationAccepted) and event.request_id in self._abandoned:
                return [ResyncNeeded(self._abandoned.pop(event.request_id))]     # (not abandoned at the endpoint)
            self._abandoned.pop(event.request_id, None)
            return []                              # another tunnel's request
        answered, self.proposal = Epoch.of(self.proposal), None
        self.state = State.IDLE
        if isinstance(event, ReservationAccepted):
            self.current = answered
            return [Agreed(answered)]
        return [Refused(answered, event.reason)]

    def _proposed(self, proposal: EpochReservation) -> tuple[list[Event], list[Answer]]:
        request_id = proposal.request_id
        if proposal.tunnel_tag != self.tag:
            return [], [Answer(request_id, RefuseReason.MALFORMED, f"not tunnel {self.tunnel}")]
        if self.leader:
            return [], [Answer(request_id, RefuseReason.MALFORMED, f"tunnel {self.tunnel}: both ends lead")]
        epoch = Epoch.of(proposal)
        if epoch == self.current:
            return [], [Answer(request_id)]         # an acceptance was lost: the same answer again
        if epoch.number <= self.current.number:
            return [], [Answer(request_id, RefuseReason.STALE, f"epoch {self.current.number} here")]
        answers = []
        if self.proposal is not None:              # a newer proposal supersedes one still being considered
            answers.append(Answer(self.proposal.request_id, RefuseReason.STALE, f"superseded by epoch {epoch.number}"))
        self.proposal = proposal
        return [Proposed(epoch, request_id)], answers
