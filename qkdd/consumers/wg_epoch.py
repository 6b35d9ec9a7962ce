"""WireGuard epoch agreement: the two ends of a tunnel agree on which QKD key is the PSK from when (sans-IO).

Theory of operation
-------------------
An epoch is (number, key id, activation time). The leading end (the link's alice) reserves a 256-bit key
in its store and PROPOSEs the next epoch; the follower reserves the same key id in its own store and
ACKs, or NACKs with a reason (key unknown, stale epoch). Both ends install the key at the activation time
the leader chose (a couple of seconds ahead, so both switch within moments of each other, far inside
WireGuard's 120 s rekey window). Without an ACK the leader never switches, so a lost proposal costs one
key, never the tunnel. When a session (re)starts both ends say HELLO with their current epoch; on any
difference the leader proposes a fresh epoch numbered above both, which brings a restarted or lagging
end back in step in one round. The machine neither reads keys nor touches WireGuard: the caller does
(reserve, install) and feeds the outcome back.

    role      state      event                          -> state      output
    leader    IDLE       propose(epoch, key, at)        -> PROPOSED   PROPOSE
    leader    PROPOSED   ACK(same epoch, same key)      -> IDLE       Agreed (caller installs at `at`)
    leader    PROPOSED   NACK(same epoch)               -> IDLE       Refused (caller drops the key)
    leader    PROPOSED   abandon()                      -> IDLE       -
    leader    any        late ACK (not pending/current) -> same       ResyncNeeded (caller proposes)
    leader    any        HELLO(epoch, key) != current   -> same       ResyncNeeded (caller proposes)
    follower  any        PROPOSE(epoch > current)       -> same       Proposed (caller: accept/refuse)
    follower  any        PROPOSE(current epoch and key) -> same       ACK again (a lost ACK)
    follower  any        PROPOSE(epoch <= current)      -> same       NACK stale
    both      any        session start                  -> same       HELLO

Wire layout (version 1, big-endian), every message 48 bytes::

    offset size field
    0      4    magic b"QKWG"
    4      1    version (1)
    5      1    type: 1 HELLO, 2 PROPOSE, 3 ACK, 4 NACK
    6      1    NACK reason (0 otherwise)
    7      1    zero
    8      8    epoch number (0: none yet; at most MAX_EPOCH = 2^64 - 2, so every proposal fits and reads)
    16     16   key id (UUID bytes; zero when epoch is 0)
    32     8    activation time, Unix seconds as IEEE-754 double (PROPOSE; 0 otherwise)
    40     8    tunnel name hash: first 8 bytes of SHA-256 of the tunnel name (both ends share the name)
"""
from __future__ import annotations

import enum
import hashlib
import math
import struct
import uuid
from dataclasses import dataclass

MAGIC = b"QKWG"
VERSION = 1
_LAYOUT = struct.Struct(">4sBBBxQ16sd8s")
MESSAGE_BYTES = _LAYOUT.size
MAX_EPOCH = 2**64 - 2        # the largest epoch number on the wire (and so the largest the leader proposes)


class EpochMessageError(ValueError):
    """A peer's epoch message is malformed or for another tunnel."""


class EpochStateError(RuntimeError):
    """The local caller asked for something the current state does not allow."""


class MessageType(enum.IntEnum):
    HELLO = 1
    PROPOSE = 2
    ACK = 3
    NACK = 4


class NackReason(enum.IntEnum):
    NONE = 0
    KEY_UNKNOWN = 1      # the follower does not hold the key (or not as AVAILABLE)
    STALE = 2            # the epoch is not newer than the follower's
    INSTALL_FAILED = 3   # reserved for a follower that cannot install at all


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


NO_EPOCH = Epoch(0, "", 0.0)


@dataclass(frozen=True)
class Message:
    type: MessageType
    epoch: Epoch
    reason: NackReason = NackReason.NONE


# Events for the caller.
@dataclass(frozen=True)
class Agreed:
    epoch: Epoch


@dataclass(frozen=True)
class Refused:
    epoch: Epoch
    reason: NackReason


@dataclass(frozen=True)
class Proposed:
    epoch: Epoch


@dataclass(frozen=True)
class ResyncNeeded:
    peer_epoch: Epoch


Event = Agreed | Refused | Proposed | ResyncNeeded


def tunnel_tag(tunnel: str) -> bytes:
    return hashlib.sha256(b"qkdd/wireguard-tunnel\x00" + tunnel.encode()).digest()[:8]


def encode(message: Message, tunnel: str) -> bytes:
    epoch = message.epoch
    key_bytes = uuid.UUID(epoch.key_id).bytes if epoch.number else bytes(16)
    return _LAYOUT.pack(MAGIC, VERSION, int(message.type), int(message.reason), epoch.number, key_bytes,
                        epoch.activate_at, tunnel_tag(tunnel))


def decode(data: bytes, tunnel: str) -> Message:
    if len(data) != MESSAGE_BYTES:
        raise EpochMessageError(f"epoch message of {len(data)} bytes, expected {MESSAGE_BYTES}")
    magic, version, type_code, reason_code, number, key_bytes, activate_at, tag = _LAYOUT.unpack(data)
    if magic != MAGIC:
        raise EpochMessageError("not a WireGuard epoch message")
    if version != VERSION:
        raise EpochMessageError(f"epoch message version {version}, expected {VERSION}")
    if tag != tunnel_tag(tunnel):
        raise EpochMessageError(f"epoch message is for another tunnel than {tunnel!r}")
    try:
        message_type = MessageType(type_code)
        reason = NackReason(reason_code)
    except ValueError:
        raise EpochMessageError(f"epoch message has unknown type {type_code} or reason {reason_code}") from None
    if number > MAX_EPOCH:
        raise EpochMessageError(f"epoch number {number} leaves no room for a next epoch")
    if not math.isfinite(activate_at) or activate_at < 0:
        raise EpochMessageError("epoch message activation time is not a finite non-negative number")
    if number == 0:
        if key_bytes != bytes(16):
            raise EpochMessageError("epoch 0 carries a key id")
        return Message(message_type, NO_EPOCH, reason)
    if message_type is MessageType.PROPOSE and activate_at == 0:
        raise EpochMessageError("a proposal needs an activation time")
    return Message(message_type, Epoch(number, str(uuid.UUID(bytes=key_bytes)), activate_at), reason)


class EpochAgreement:
    """One end of one tunnel. `current` is the epoch this end has agreed to (installed or about to be)."""

    def __init__(self, tunnel: str, leader: bool, current: Epoch = NO_EPOCH) -> None:
        self.tunnel = tunnel
        self.leader = leader
        self.current = current
        self.state = State.IDLE
        self.pending: Epoch | None = None        # leader: proposal awaiting an answer; follower: awaiting accept

    # -- local actions -----------------------------------------------------------------------------
    def hello(self) -> bytes:
        """The first message of every session."""
        return self._out(MessageType.HELLO, self.current)

    def propose(self, key_id: str, activate_at: float, *, above: int = 0) -> bytes:
        """Leader: propose `key_id` as the next epoch (numbered above `above` too)."""
        if not self.leader:
            raise EpochStateError(f"tunnel {self.tunnel}: only the leader proposes")
        if self.state is not State.IDLE:
            raise EpochStateError(f"tunnel {self.tunnel}: propose in state {self.state.value}")
        number = max(self.current.number, above) + 1
        if number > MAX_EPOCH:
            raise EpochStateError(f"tunnel {self.tunnel}: epoch numbers are used up (at {number - 1}); "
                                  f"both ends need their epoch state reset")
        self.pending = Epoch(number, str(uuid.UUID(key_id)), activate_at)
        self.state = State.PROPOSED
        return self._out(MessageType.PROPOSE, self.pending)

    def abandon(self) -> Epoch | None:
        """Leader: give up waiting for an answer (timeout, session lost); returns the dropped proposal."""
        dropped, self.pending = self.pending, None
        self.state = State.IDLE
        return dropped

    def accept(self) -> bytes:
        """Follower: the proposed key is reserved here; agree to it."""
        if self.leader or self.pending is None:
            raise EpochStateError(f"tunnel {self.tunnel}: nothing to accept")
        self.current, self.pending = self.pending, None
        return self._out(MessageType.ACK, self.current)

    def refuse(self, reason: NackReason) -> bytes:
        """Follower: the proposed key cannot be used here."""
        if self.leader or self.pending is None:
            raise EpochStateError(f"tunnel {self.tunnel}: nothing to refuse")
        refused, self.pending = self.pending, None
        return self._out(MessageType.NACK, refused, reason)

    # -- messages from the peer --------------------------------------------------------------------
    def receive(self, data: bytes) -> tuple[list[Event], list[bytes]]:
        """Feed one peer message; returns (events for the caller, messages to send back)."""
        message = decode(data, self.tunnel)
        if self.leader:
            return self._leader_receive(message)
        return self._follower_receive(message)

    def _leader_receive(self, message: Message) -> tuple[list[Event], list[bytes]]:
        kind, epoch = message.type, message.epoch
        if kind is MessageType.HELLO:
            if epoch != self.current:
                return [self._resync(epoch)], []
            return [], []
        if kind in (MessageType.ACK, MessageType.NACK):
            if self.state is not State.PROPOSED or self.pending is None or epoch.number != self.pending.number \
                    or epoch.key_id != self.pending.key_id:
                # An answer to a proposal given up on: a late ACK means the follower switched to a key
                # this end dropped, so both must move to a fresh epoch.
                late_ack = kind is MessageType.ACK and epoch != self.current
                return ([self._resync(epoch)] if late_ack else []), []
            answered, self.pending = self.pending, None
            self.state = State.IDLE
            if kind is MessageType.ACK:
                self.current = answered
                return [Agreed(answered)], []
            return [Refused(answered, message.reason)], []
        raise EpochMessageError(f"tunnel {self.tunnel}: the leader got a {kind.name} (both ends lead?)")

    def _resync(self, peer_epoch: Epoch) -> ResyncNeeded:
        """A resync above `peer_epoch`, which the next proposal must exceed and still stay readable."""
        if peer_epoch.number >= MAX_EPOCH:
            raise EpochMessageError(f"tunnel {self.tunnel}: the other end's epoch {peer_epoch.number} leaves no room "
                                    f"for a proposal above it (epoch numbers end at {MAX_EPOCH})")
        return ResyncNeeded(peer_epoch)

    def _follower_receive(self, message: Message) -> tuple[list[Event], list[bytes]]:
        kind, epoch = message.type, message.epoch
        if kind is MessageType.HELLO:
            return [], []                          # the leader decides; our HELLO went out at session start
        if kind is not MessageType.PROPOSE:
            raise EpochMessageError(f"tunnel {self.tunnel}: the follower got a {kind.name} (both ends follow?)")
        if epoch == self.current:
            return [], [self._out(MessageType.ACK, epoch)]
        if epoch.number <= self.current.number:
            return [], [self._out(MessageType.NACK, epoch, NackReason.STALE)]
        self.pending = epoch
        return [Proposed(epoch)], []

    def _out(self, kind: MessageType, epoch: Epoch, reason: NackReason = NackReason.NONE) -> bytes:
        return encode(Message(kind, epoch, reason), self.tunnel)
