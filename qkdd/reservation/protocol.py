"""The key reservation exchange of a link (sans-IO): one end records, at the other end, which stored key(s)
it is about to use and for what (ETSI 014 keys, a /v1 key, a WireGuard epoch) before it uses them.

Theory of operation
-------------------
One `ReservationEndpoint` runs at each end of a link, on the link's one peer session, for every purpose
at once. Both ends reserve (SAEs, /v1 clients and tunnels sit on both sides), so each endpoint plays both
roles and the role of a request follows from who sent RESERVE: the requesting end is "master", the
answering end "slave" (ETSI 014's names). The master's end calls `reserve(reservation)` and sends the
bytes; the slave's end gets a `ReservationReceived` event from `receive()`, records the reservation
durably, and answers with `accept(request_id)` or `refuse(request_id, reason, text)`. The master's end
gets `ReservationAccepted` or `ReservationRefused` and only then uses the key(s). A master that gives up
waiting calls `abandon(request_id)`; a late answer for it is then reported as `LateAnswer`, never as an
acceptance. No key leaves either store except through a reservation both ends recorded, so no interface
can hand out a key twice.

A request's purpose says how to read its RESERVE body and which part of the daemon answers it:

    ETSI014   Etsi014Reservation  keys cut from stored keys for a master SAE and its slave SAEs
    KEY       KeyReservation      one stored key for a /v1 holder ("v1:256")
    WG_EPOCH  EpochReservation    a WireGuard epoch: the stored key that is a tunnel's PSK from a time on
              (and the epoch of any other consumer: KMS push, IKEv2 PPK; the tag names the consumer)
    HYBRID_EPOCH  HybridEpochReservation  an epoch whose key is mixed with an ML-KEM-768 shared secret: the
              epoch and the leader's KEM ciphertext for the follower's announced encapsulation key
    STREAM    ChunkReservation    the stored keys that make chunk `index` of an ETSI 004 key stream
    SKIP      SkipKeyReservation  one stored key for a SKIP router ("skip:256"), fetched by id at the other end

The endpoint remembers each request's purpose; an answer must carry the purpose of the request it
answers. ANNOUNCE is the one message outside any request: a WireGuard end's current epoch
(`EpochAnnouncement`), sent at session start so the leading end can bring a lagging one back in step, or
(purpose HYBRID_EPOCH) a hybrid consumer's fresh ML-KEM-768 encapsulation key (`KemAnnouncement`).

Per request id, the states and every legal transition, the same for every purpose (anything else is a
ReservationProtocolError naming the state and event):

    master end:  (none) --reserve--> SENT --ACCEPT--> ACCEPTED
                                     SENT --REFUSE--> REFUSED
                                     SENT --abandon--> ABANDONED
    slave end:   (none) --RESERVE--> RECEIVED --accept--> ACCEPTED
                                     RECEIVED --refuse--> REFUSED

Finished requests are forgotten (the slave's durable record is its ledger or key store, not this
object), so a retransmitted RESERVE is a new RECEIVED request; the durable record makes recording it
idempotent. Abandoned requests are remembered for their late answers, the newest MAX_ABANDONED of them:
past that the oldest is forgotten, and an answer to it is then an answer to no request (so a peer that
stops answering, on a session that lasts, cannot grow this end's memory without bound). When the session
ends, `end_session()` forgets every request: answers never cross sessions.

Wire layout, version 3 (big-endian; strings are UTF-8 with a u16 length). A payload on the channel is
one or more messages back to back; each end sends whatever queued while its previous write was on the
way in one payload, so a busy link carries one record per burst instead of one per request:

    message: version u8 (=3) | type u8 | purpose u8 | request_id 16 bytes (UUID) | body length u32 | body
    RESERVE, ETSI014:  size_bits u32 | master_sae str | slave count u8, slave str...  (first = the slave)
                       key count u16, per key: key_id 16 bytes | segment count u16,
                              per segment: stored key_id 16 bytes | offset_bytes u32 | length_bytes u32
    RESERVE, KEY:      key_id 16 bytes | holder str (1..64 bytes)
    RESERVE, WG_EPOCH: tunnel_tag 8 bytes | number u64 | key_id 16 bytes | activate_at f64
    RESERVE, STREAM:   key_stream_id 16 bytes | index u32 | key count u16, key_id 16 bytes...  (1..MAX_CHUNK_KEYS)
    RESERVE, SKIP:     as RESERVE, KEY
    ANNOUNCE, WG_EPOCH (request_id all zero): the RESERVE, WG_EPOCH body; number 0 (no epoch yet) with a
                       zero key_id and activate_at 0
    RESERVE, HYBRID_EPOCH: the RESERVE, WG_EPOCH body | ciphertext length u16 | ciphertext (1..MAX_KEM_BYTES)
    ANNOUNCE, HYBRID_EPOCH (request_id all zero): tunnel_tag 8 bytes | key length u16 | encapsulation key
    ACCEPT:            (empty)
    REFUSE:            reason u8 | text str

Epoch numbers stop at MAX_EPOCH = 2^64 - 2, so that an epoch above any peer's still fits; activation
times are Unix seconds, finite and not negative.

A payload is decoded whole before any of it is applied: one malformed or illegal message rejects the
payload and changes no request's state.

Sizes: messages back to back fill at most MAX_PACKED_BYTES of a payload (`pack_payloads`); a larger
payload is one message alone, of at most MAX_MESSAGE_BYTES. The receiver holds the peer to both before
decoding, so a peer cannot keep the event loop decoding for long: the largest payload it accepts is one
RESERVE of 4 MiB, or 1 MiB of small messages.
"""
from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

WIRE_VERSION = 3
MAX_SLAVES = 255
MAX_KEYS = 65535
MAX_SEGMENTS_PER_KEY = 65535
MAX_TEXT_BYTES = 1024
MAX_REFUSE_TEXT_CHARS = 200     # a refusal's text is cut to this before it is sent
MAX_HOLDER_BYTES = 64
MAX_EPOCH = 2**64 - 2           # a peer's epoch number the WireGuard leader can still propose one above
TUNNEL_TAG_BYTES = 8
MAX_CHUNK_KEYS = 4096           # stored keys in one ETSI 004 chunk (1 MiB of 256-bit keys)
MAX_CHUNK_INDEX = 2**32 - 1
MAX_KEM_BYTES = 2048            # an ML-KEM-768 ciphertext is 1088 bytes, its encapsulation key 1184 (FIPS 203)
MAX_PACKED_BYTES = 1 << 20
MAX_ABANDONED = 1 << 16         # abandoned requests remembered for a late answer (the newest)
# The largest message. The KME's configuration caps a Get key at 1 MiB of key (qkdd.kme.config
# MAX_REQUEST_KEY_BITS) and a stored key holds at least 64 bits on a link (a segment each 8 bytes, plus
# one per key), so a RESERVE holds at most 131 072 + 4096 segments of 24 bytes plus 4096 key heads:
# under 3.3 MB.
MAX_MESSAGE_BYTES = 4 << 20
NO_REQUEST = "00000000-0000-0000-0000-000000000000"    # the request id of an ANNOUNCE


class MessageType(enum.IntEnum):
    RESERVE = 1
    ACCEPT = 2
    REFUSE = 3
    ANNOUNCE = 4


class Purpose(enum.IntEnum):
    ETSI014 = 1
    KEY = 2
    WG_EPOCH = 3
    STREAM = 4
    SKIP = 5
    HYBRID_EPOCH = 6


class RefuseReason(enum.IntEnum):
    KEYS_UNAVAILABLE = 1     # a named stored key is missing, pending or in use at this end: may pass
    UNKNOWN_SAE = 2          # a named slave SAE is not served by this KME
    STORE_FAILURE = 3        # the ledger or key store could not record the reservation
    MALFORMED = 4            # the request could not be decoded
    KEYS_GONE = 5            # the key was delivered or is unknown here: the requester must never hand out its copy
    STALE = 6                # a WireGuard epoch not newer than the receiver's


class State(enum.Enum):
    SENT = "sent"
    ACCEPTED = "accepted"
    REFUSED = "refused"
    ABANDONED = "abandoned"
    RECEIVED = "received"


MASTER, SLAVE = "master", "slave"      # the end that sent RESERVE, the end that answers it

# (role, current state or None, what happens) -> next state; the same for every purpose
TRANSITIONS: dict[tuple[str, State | None, str], State] = {
    (MASTER, None, "reserve"): State.SENT,
    (MASTER, State.SENT, "ACCEPT"): State.ACCEPTED,
    (MASTER, State.SENT, "REFUSE"): State.REFUSED,
    (MASTER, State.SENT, "abandon"): State.ABANDONED,
    (SLAVE, None, "RESERVE"): State.RECEIVED,
    (SLAVE, State.RECEIVED, "accept"): State.ACCEPTED,
    (SLAVE, State.RECEIVED, "refuse"): State.REFUSED,
}
_FINAL = {State.ACCEPTED, State.REFUSED}


class ReservationProtocolError(Exception):
    """A message that is malformed or illegal in the current state; names the state and event."""


# -- what is reserved ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    """`length_bytes` bytes of stored key `stored_key_id`, starting at `offset_bytes`."""

    stored_key_id: str
    offset_bytes: int
    length_bytes: int


@dataclass(frozen=True)
class ReservedKey:
    key_id: str                       # the ETSI key_ID (lowercase canonical UUID)
    segments: tuple[Segment, ...]     # concatenated in order they form the key


@dataclass(frozen=True)
class Etsi014Reservation:
    """ETSI 014 keys for `master_sae_id`, to be fetched by each of `slave_sae_ids` at the slave's KME."""

    purpose: ClassVar[Purpose] = Purpose.ETSI014
    request_id: str
    master_sae_id: str
    slave_sae_ids: tuple[str, ...]    # the slave first, then the additional slaves
    size_bits: int
    keys: tuple[ReservedKey, ...]

    def stored_key_ids(self) -> list[str]:
        """Every stored key the reservation uses, once each, in order of first use."""
        seen: dict[str, None] = {}
        for key in self.keys:
            for segment in key.segments:
                seen.setdefault(segment.stored_key_id, None)
        return list(seen)


@dataclass(frozen=True)
class KeyReservation:
    """/v1: reserve stored key `key_id` (a UUID) for `holder` (a short tag such as "v1:256")."""

    purpose: ClassVar[Purpose] = Purpose.KEY
    request_id: str
    key_id: str
    holder: str


@dataclass(frozen=True)
class EpochReservation:
    """WireGuard PROPOSE: stored key `key_id` is epoch `number` of the tunnel tagged `tunnel_tag` from
    `activate_at` (Unix seconds) on."""

    purpose: ClassVar[Purpose] = Purpose.WG_EPOCH
    request_id: str
    tunnel_tag: bytes
    number: int
    key_id: str
    activate_at: float


@dataclass(frozen=True)
class EpochAnnouncement:
    """WireGuard HELLO: the sender's current epoch of a tunnel (number 0: none yet, key_id "", activate_at 0)."""

    purpose: ClassVar[Purpose] = Purpose.WG_EPOCH
    tunnel_tag: bytes
    number: int
    key_id: str
    activate_at: float


@dataclass(frozen=True)
class SkipKeyReservation(KeyReservation):
    """SKIP: reserve stored key `key_id` for `holder` ("skip:<bits>"); the router at the other end fetches it
    by id once. The body is a KEY reservation's; only the purpose differs, so that SKIP's handler answers."""

    purpose: ClassVar[Purpose] = Purpose.SKIP


@dataclass(frozen=True)
class ChunkReservation:
    """ETSI 004: stored keys `key_ids`, concatenated in order, are chunk `index` of key stream `stream_id`."""

    purpose: ClassVar[Purpose] = Purpose.STREAM
    request_id: str
    stream_id: str
    index: int
    key_ids: tuple[str, ...]


@dataclass(frozen=True)
class HybridEpochReservation(EpochReservation):
    """An epoch of a hybrid consumer: the leader's ML-KEM ciphertext for the follower's announced
    encapsulation key rides with it (the key material is neither; both ends derive the PSK)."""

    purpose: ClassVar[Purpose] = Purpose.HYBRID_EPOCH
    ciphertext: bytes = b""


@dataclass(frozen=True)
class KemAnnouncement:
    """A hybrid consumer's fresh ML-KEM encapsulation key, for the leader's next epoch."""

    purpose: ClassVar[Purpose] = Purpose.HYBRID_EPOCH
    tunnel_tag: bytes
    encapsulation_key: bytes


Reservation = Etsi014Reservation | KeyReservation | EpochReservation | HybridEpochReservation | ChunkReservation


# -- events returned by receive() ----------------------------------------------------------------

@dataclass(frozen=True)
class ReservationReceived:
    reservation: Reservation


@dataclass(frozen=True)
class ReservationAccepted:
    request_id: str
    purpose: Purpose


@dataclass(frozen=True)
class ReservationRefused:
    request_id: str
    purpose: Purpose
    reason: RefuseReason
    text: str


@dataclass(frozen=True)
class LateAnswer:
    """An answer to a request this end abandoned (timed out): the caller cleans up, nothing else. A refusal
    carries its reason (KEYS_GONE: the peer no longer holds the keys, so neither may this end)."""

    request_id: str
    purpose: Purpose
    accepted: bool
    reason: RefuseReason | None = None


@dataclass(frozen=True)
class AnnouncementReceived:
    announcement: "EpochAnnouncement | KemAnnouncement"


Event = ReservationReceived | ReservationAccepted | ReservationRefused | LateAnswer | AnnouncementReceived


@dataclass(frozen=True)
class Answer:
    """A receiving end's decision on one reservation: accept (`reason` None) or refuse; `encode` it at the
    endpoint (which records that the request is answered)."""

    request_id: str
    reason: RefuseReason | None = None
    text: str = ""

    @property
    def accepted(self) -> bool:
        return self.reason is None

    def encode(self, endpoint: "ReservationEndpoint") -> bytes:
        if self.reason is None:
            return endpoint.accept(self.request_id)
        return endpoint.refuse(self.request_id, self.reason, self.text)


class _Request(NamedTuple):
    state: State
    purpose: Purpose


class ReservationEndpoint:
    """One end of the exchange: encodes what this end sends, decodes and checks what it receives."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str], _Request] = {}   # (role, request_id) -> state and purpose
        self._abandoned: dict[str, None] = {}                   # abandoned requests' ids, oldest first

    def state(self, role: str, request_id: str) -> State | None:
        request = self._requests.get((role, request_id))
        return request.state if request else None

    def purpose(self, role: str, request_id: str) -> Purpose | None:
        request = self._requests.get((role, request_id))
        return request.purpose if request else None

    # -- master's end --------------------------------------------------------------------------------
    def reserve(self, reservation: Reservation) -> bytes:
        """The RESERVE message; ValueError, changing nothing, if the reservation cannot be encoded (or
        would exceed MAX_MESSAGE_BYTES)."""
        message = encode_reserve(reservation)
        self._step(MASTER, reservation.request_id, "reserve", reservation.purpose)
        return message

    def abandon(self, request_id: str) -> None:
        self._step(MASTER, request_id, "abandon")
        self._abandoned[request_id] = None
        if len(self._abandoned) > MAX_ABANDONED:
            oldest = next(iter(self._abandoned))
            del self._abandoned[oldest], self._requests[(MASTER, oldest)]

    def end_session(self) -> None:
        """The session carrying the exchange ended: no answer to anything sent or received on it can
        arrive or go out any more, so every request is forgotten (the caller fails the waiting ones)."""
        self._requests.clear()
        self._abandoned.clear()

    # -- slave's end ---------------------------------------------------------------------------------
    def accept(self, request_id: str) -> bytes:
        purpose = self._step(SLAVE, request_id, "accept")
        return _message(MessageType.ACCEPT, purpose, request_id)

    def refuse(self, request_id: str, reason: RefuseReason, text: str) -> bytes:
        """The REFUSE message, its text cut to MAX_REFUSE_TEXT_CHARS characters."""
        body = struct.pack(">B", RefuseReason(reason)) + _text(text[:MAX_REFUSE_TEXT_CHARS])
        return _message(MessageType.REFUSE, self._step(SLAVE, request_id, "refuse"), request_id, body)

    # -- outside any request -------------------------------------------------------------------------
    def announce(self, announcement: "EpochAnnouncement | KemAnnouncement") -> bytes:
        """The ANNOUNCE message; ValueError if the announcement is not a valid one."""
        try:
            check_announcement(announcement)
        except ReservationProtocolError as exc:
            raise ValueError(str(exc)) from None
        if isinstance(announcement, KemAnnouncement):
            return _message(MessageType.ANNOUNCE, Purpose.HYBRID_EPOCH, NO_REQUEST,
                            announcement.tunnel_tag + _blob(announcement.encapsulation_key))
        return _message(MessageType.ANNOUNCE, Purpose.WG_EPOCH, NO_REQUEST, _epoch_body(
            announcement.tunnel_tag, announcement.number, announcement.key_id, announcement.activate_at))

    # -- both ----------------------------------------------------------------------------------------
    def receive(self, payload: bytes) -> list[Event]:
        """Decode a payload of one or more messages from the peer, one event per message. Raises
        ReservationProtocolError, changing nothing, if a message is malformed or illegal now (e.g. ACCEPT
        for a request never sent)."""
        changes: dict[tuple[str, str], _Request | None] = {}      # what the payload's messages do, applied last
        events = [self._apply(message, changes) for message in _decode_payload(payload)]
        for key, request in changes.items():
            if request is None:
                self._requests.pop(key, None)
                if key[0] == MASTER:
                    self._abandoned.pop(key[1], None)      # (a late answer's request)
            else:
                self._requests[key] = request
        return events

    def _apply(self, message: "_Message", changes: dict[tuple[str, str], "_Request | None"]) -> Event:
        message_type, purpose, request_id, decoded = message
        if message_type is MessageType.ANNOUNCE:
            return AnnouncementReceived(decoded)
        if message_type is MessageType.RESERVE:
            self._step(SLAVE, request_id, "RESERVE", purpose, changes)
            return ReservationReceived(decoded)
        key = (MASTER, request_id)
        request = changes[key] if key in changes else self._requests.get(key)
        if request is not None and request.purpose is not purpose:
            raise ReservationProtocolError(f"{message_type.name} of purpose {purpose.name} for {MASTER} request "
                                           f"{request_id} of purpose {request.purpose.name} "
                                           f"in state {request.state.value}")
        if request is not None and request.state is State.ABANDONED:
            changes[key] = None
            if message_type is MessageType.ACCEPT:
                return LateAnswer(request_id, purpose, True)
            return LateAnswer(request_id, purpose, False, decoded[0])
        if message_type is MessageType.ACCEPT:
            self._step(MASTER, request_id, "ACCEPT", purpose, changes)
            return ReservationAccepted(request_id, purpose)
        self._step(MASTER, request_id, "REFUSE", purpose, changes)
        reason, text = decoded
        return ReservationRefused(request_id, purpose, reason, text)

    def _step(self, role: str, request_id: str, event: str, purpose: Purpose | None = None,
              changes: dict[tuple[str, str], "_Request | None"] | None = None) -> Purpose:
        """Take one transition (into `changes` instead of the requests when given: receive()); returns the
        request's purpose. `purpose` is the new request's (reserve, RESERVE) or None (the known one)."""
        key = (role, request_id)
        current = changes[key] if changes is not None and key in changes else self._requests.get(key)
        following = TRANSITIONS.get((role, current.state if current else None, event))
        if following is None:
            state = current.state.value if current else "no request"
            raise ReservationProtocolError(f"{event} is illegal for {role} request {request_id} in state {state}")
        purpose = current.purpose if current else purpose
        request = None if following in _FINAL else _Request(following, purpose)
        if changes is not None:
            changes[key] = request
        elif request is None:
            self._requests.pop(key, None)
        else:
            self._requests[key] = request
        return purpose


# -- checks both ends apply -----------------------------------------------------------------------------

def check_reservation(reservation: Reservation) -> None:
    """The invariants a well-formed reservation keeps; ReservationProtocolError names the broken one."""
    if isinstance(reservation, Etsi014Reservation):
        _check_etsi014(reservation)
    elif isinstance(reservation, KeyReservation):
        _check_uuid(reservation.key_id)
        holder_bytes = len(reservation.holder.encode("utf-8", "surrogatepass"))
        if not 1 <= holder_bytes <= MAX_HOLDER_BYTES:
            raise ReservationProtocolError(f"a holder of {holder_bytes} bytes, allowed 1..{MAX_HOLDER_BYTES}")
    elif isinstance(reservation, ChunkReservation):
        _check_uuid(reservation.stream_id)
        if not 0 <= reservation.index <= MAX_CHUNK_INDEX:
            raise ReservationProtocolError(f"chunk index {reservation.index} outside 0..{MAX_CHUNK_INDEX}")
        if not 1 <= len(reservation.key_ids) <= MAX_CHUNK_KEYS:
            raise ReservationProtocolError(f"a chunk of {len(reservation.key_ids)} keys, allowed 1..{MAX_CHUNK_KEYS}")
        for key_id in reservation.key_ids:
            _check_uuid(key_id)
        if len(set(reservation.key_ids)) != len(reservation.key_ids):
            raise ReservationProtocolError("a key id appears twice in a chunk")
    elif isinstance(reservation, EpochReservation):
        if not 1 <= reservation.number <= MAX_EPOCH:
            raise ReservationProtocolError(f"epoch number {reservation.number} outside 1..{MAX_EPOCH}")
        _check_epoch(reservation.tunnel_tag, reservation.key_id, reservation.activate_at)
        if isinstance(reservation, HybridEpochReservation):
            _check_kem_bytes(reservation.ciphertext, "ciphertext")
    else:
        raise ReservationProtocolError(f"not a reservation: {type(reservation).__name__}")


def _check_kem_bytes(data: bytes, what: str) -> None:
    if not isinstance(data, bytes) or not 1 <= len(data) <= MAX_KEM_BYTES:
        raise ReservationProtocolError(f"a KEM {what} is 1..{MAX_KEM_BYTES} bytes")


def check_announcement(announcement: "EpochAnnouncement | KemAnnouncement") -> None:
    """The invariants of a well-formed announcement; ReservationProtocolError names the broken one."""
    if isinstance(announcement, KemAnnouncement):
        _check_tag(announcement.tunnel_tag)
        _check_kem_bytes(announcement.encapsulation_key, "encapsulation key")
        return
    if not 0 <= announcement.number <= MAX_EPOCH:
        raise ReservationProtocolError(f"epoch number {announcement.number} outside 0..{MAX_EPOCH}")
    if announcement.number == 0:
        _check_tag(announcement.tunnel_tag)
        if announcement.key_id or announcement.activate_at != 0:
            raise ReservationProtocolError("epoch 0 carries a key id or an activation time")
        return
    _check_epoch(announcement.tunnel_tag, announcement.key_id, announcement.activate_at)


def _check_tag(tag: bytes) -> None:
    if not isinstance(tag, bytes) or len(tag) != TUNNEL_TAG_BYTES:
        raise ReservationProtocolError(f"a tunnel tag is {TUNNEL_TAG_BYTES} bytes")


def _check_epoch(tag: bytes, key_id: str, activate_at: float) -> None:
    _check_tag(tag)
    _check_uuid(key_id)
    if not isinstance(activate_at, (int, float)) or not math.isfinite(activate_at) or activate_at < 0:
        raise ReservationProtocolError("the activation time is not a finite non-negative number")


def _check_uuid(text: str) -> None:
    try:
        _uuid_bytes(text)
    except ValueError as exc:
        raise ReservationProtocolError(str(exc)) from None


def _check_etsi014(reservation: Etsi014Reservation) -> None:
    if reservation.size_bits <= 0 or reservation.size_bits % 8:
        raise ReservationProtocolError(f"size of {reservation.size_bits} bits is not a positive multiple of 8")
    if not reservation.master_sae_id or not reservation.slave_sae_ids or not all(reservation.slave_sae_ids):
        raise ReservationProtocolError("a reservation names a master and at least one slave")
    if len(set(reservation.slave_sae_ids)) != len(reservation.slave_sae_ids):
        raise ReservationProtocolError("a slave SAE is named twice")
    if not reservation.keys:
        raise ReservationProtocolError("a reservation holds at least one key")
    key_ids = [key.key_id for key in reservation.keys]
    if len(set(key_ids)) != len(key_ids):
        raise ReservationProtocolError("a key id appears twice")
    ranges: dict[str, list[tuple[int, int]]] = {}
    for key in reservation.keys:
        if not key.segments:
            raise ReservationProtocolError(f"key {key.key_id} has no segments")
        if sum(segment.length_bytes for segment in key.segments) * 8 != reservation.size_bits:
            raise ReservationProtocolError(f"key {key.key_id}: segments do not add up to {reservation.size_bits} bits")
        for segment in key.segments:
            if segment.length_bytes == 0:
                raise ReservationProtocolError(f"key {key.key_id}: empty segment")
            ranges.setdefault(segment.stored_key_id, []).append(
                (segment.offset_bytes, segment.offset_bytes + segment.length_bytes))
    for stored_key_id, spans in ranges.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            if start < end:
                raise ReservationProtocolError(f"stored key {stored_key_id}: bytes used by two segments")


# -- encoding ------------------------------------------------------------------------------------------

_MESSAGE_HEAD = struct.Struct(">BBB16sI")
_KEY_HEAD = struct.Struct(">16sH")
_SEGMENT = struct.Struct(">16sII")
_EPOCH = struct.Struct(">8sQ16sd")


def _uuid_bytes(text: str) -> bytes:
    """The 16 bytes of a canonical UUID string (as uuid.UUID(text).bytes, without building the object)."""
    raw = b""
    if isinstance(text, str) and len(text) == 36 and all(text[at] == "-" for at in (8, 13, 18, 23)):
        try:
            raw = bytes.fromhex(text.replace("-", ""))
        except ValueError:
            pass
    if len(raw) != 16:
        raise ValueError(f"not a canonical UUID: {text!r}")
    return raw


def _message(message_type: MessageType, purpose: Purpose, request_id: str, body: bytes = b"") -> bytes:
    return _MESSAGE_HEAD.pack(WIRE_VERSION, message_type, purpose, _uuid_bytes(request_id), len(body)) + body


def _text(value: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    data = value.encode("utf-8")
    if len(data) > limit:
        raise ValueError(f"text of {len(data)} bytes exceeds {limit}")
    return struct.pack(">H", len(data)) + data


def encode_reserve(reservation: Reservation) -> bytes:
    """The RESERVE message of `reservation`; ValueError if it cannot be encoded. An ETSI 014 reservation
    is encoded as given (its receiver checks its invariants); the other kinds are checked here too."""
    if isinstance(reservation, Etsi014Reservation):
        body = _etsi014_body(reservation)
    else:
        try:
            check_reservation(reservation)
        except ReservationProtocolError as exc:
            raise ValueError(str(exc)) from None
        if isinstance(reservation, KeyReservation):
            body = _uuid_bytes(reservation.key_id) + _text(reservation.holder, MAX_HOLDER_BYTES)
        elif isinstance(reservation, ChunkReservation):
            body = (_uuid_bytes(reservation.stream_id) + struct.pack(">IH", reservation.index, len(reservation.key_ids))
                    + b"".join(_uuid_bytes(key_id) for key_id in reservation.key_ids))
        else:
            body = _epoch_body(reservation.tunnel_tag, reservation.number, reservation.key_id,
                               reservation.activate_at)
            if isinstance(reservation, HybridEpochReservation):
                body += _blob(reservation.ciphertext)
    message = _message(MessageType.RESERVE, reservation.purpose, reservation.request_id, body)
    if len(message) > MAX_MESSAGE_BYTES:
        raise ValueError(f"a RESERVE of {len(message)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return message


def _blob(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _etsi014_body(reservation: Etsi014Reservation) -> bytes:
    if not 1 <= len(reservation.slave_sae_ids) <= MAX_SLAVES:
        raise ValueError("a reservation names 1..255 slave SAEs")
    if not 1 <= len(reservation.keys) <= MAX_KEYS:
        raise ValueError("a reservation holds 1..65535 keys")
    parts = [struct.pack(">I", reservation.size_bits),
             _text(reservation.master_sae_id), struct.pack(">B", len(reservation.slave_sae_ids))]
    parts += [_text(sae_id) for sae_id in reservation.slave_sae_ids]
    parts.append(struct.pack(">H", len(reservation.keys)))
    for key in reservation.keys:
        if not 1 <= len(key.segments) <= MAX_SEGMENTS_PER_KEY:
            raise ValueError("a key is made of 1..65535 segments")
        parts.append(_KEY_HEAD.pack(_uuid_bytes(key.key_id), len(key.segments)))
        for segment in key.segments:
            parts.append(_SEGMENT.pack(_uuid_bytes(segment.stored_key_id), segment.offset_bytes, segment.length_bytes))
    return b"".join(parts)


def _epoch_body(tag: bytes, number: int, key_id: str, activate_at: float) -> bytes:
    return _EPOCH.pack(tag, number, _uuid_bytes(key_id) if number else bytes(16), activate_at)


def pack_payloads(messages: list[bytes], max_bytes: int = MAX_PACKED_BYTES) -> list[bytes]:
    """`messages` back to back in payloads of at most `max_bytes` each (a larger message alone)."""
    payloads: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for message in messages:
        if group and size + len(message) > max_bytes:
            payloads.append(b"".join(group))
            group, size = [], 0
        group.append(message)
        size += len(message)
    if group:
        payloads.append(b"".join(group))
    return payloads


# -- decoding ------------------------------------------------------------------------------------------

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def _canonical(raw: bytes) -> str:
    """16 bytes as a lowercase canonical UUID (what str(uuid.UUID(bytes=raw)) gives)."""
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class _Reader:
    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._at = start
        self._end = len(data) if end is None else end

    def _need(self, count: int) -> int:
        at = self._at
        if at + count > self._end:
            raise ReservationProtocolError(f"message truncated at byte {at} (wanted {count} more)")
        self._at = at + count
        return at

    def take(self, count: int) -> bytes:
        at = self._need(count)
        return self._data[at:at + count]

    def u8(self) -> int:
        return self._data[self._need(1)]

    def u16(self) -> int:
        return _U16.unpack_from(self._data, self._need(2))[0]

    def u32(self) -> int:
        return _U32.unpack_from(self._data, self._need(4))[0]

    def uuid(self) -> str:
        return _canonical(self.take(16))

    def record(self, layout: struct.Struct) -> tuple:
        """The fields of one fixed-size `layout`."""
        return layout.unpack_from(self._data, self._need(layout.size))

    def text(self, limit: int = MAX_TEXT_BYTES) -> str:
        length = self.u16()
        if length > limit:
            raise ReservationProtocolError(f"string of {length} bytes exceeds {limit}")
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise ReservationProtocolError("string is not UTF-8") from None

    def at_end(self) -> bool:
        return self._at == self._end

    def body(self, length: int) -> "_Reader":
        """A reader of the next `length` bytes; this reader moves past them."""
        at = self._need(length)
        return _Reader(self._data, at, at + length)

    def end(self) -> None:
        if self._at != self._end:
            raise ReservationProtocolError(f"{self._end - self._at} trailing bytes after the message")


class _Message(NamedTuple):
    type: MessageType
    purpose: Purpose
    request_id: str
    decoded: object     # a Reservation (RESERVE), None (ACCEPT), (reason, text) (REFUSE), EpochAnnouncement


def _decode_payload(payload: bytes) -> list[_Message]:
    """Every message of a payload, decoded and checked (but not against any request's state)."""
    _check_payload_size(payload)
    reader = _Reader(bytes(payload))
    messages = []
    while True:
        version = reader.u8()
        if version != WIRE_VERSION:
            raise ReservationProtocolError(f"wire version {version}, this end speaks {WIRE_VERSION}")
        code = reader.u8()
        try:
            message_type = MessageType(code)
        except ValueError:
            raise ReservationProtocolError(f"unknown message type {code}") from None
        code = reader.u8()
        try:
            purpose = Purpose(code)
        except ValueError:
            raise ReservationProtocolError(f"{message_type.name} of unknown purpose {code}") from None
        request_id = reader.uuid()
        body = reader.body(reader.u32())
        if message_type is MessageType.ANNOUNCE:
            if request_id != NO_REQUEST or purpose not in (Purpose.WG_EPOCH, Purpose.HYBRID_EPOCH):
                raise ReservationProtocolError(f"ANNOUNCE of purpose {purpose.name} for request {request_id}: "
                                               f"only epochs and KEM keys are announced, outside any request")
            decoded: object = (_decode_announcement(body) if purpose is Purpose.WG_EPOCH
                               else _decode_kem_announcement(body))
        elif message_type is MessageType.RESERVE:
            decoded = _RESERVE_DECODERS[purpose](request_id, body)
        elif message_type is MessageType.ACCEPT:
            decoded = None
        else:
            decoded = _decode_refuse(body)
        body.end()
        messages.append(_Message(message_type, purpose, request_id, decoded))
        if reader.at_end():
            return messages


def _check_payload_size(payload: bytes) -> None:
    """A payload over MAX_PACKED_BYTES must be one message of at most MAX_MESSAGE_BYTES (`pack_payloads`):
    checked from the first message's head, before anything is decoded."""
    if len(payload) <= MAX_PACKED_BYTES:
        return
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ReservationProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    *_, body_length = _MESSAGE_HEAD.unpack_from(payload)
    if _MESSAGE_HEAD.size + body_length != len(payload):
        raise ReservationProtocolError(f"payload of {len(payload)} bytes holds more than one message; "
                                       f"messages back to back fill at most {MAX_PACKED_BYTES}")


def _decode_refuse(reader: _Reader) -> tuple[RefuseReason, str]:
    reason_code = reader.u8()
    text = reader.text()
    try:
        return RefuseReason(reason_code), text
    except ValueError:
        raise ReservationProtocolError(f"REFUSE with unknown reason {reason_code}") from None


def _decode_etsi014(request_id: str, reader: _Reader) -> Etsi014Reservation:
    size_bits = reader.u32()
    master = reader.text()
    slaves = tuple(reader.text() for _ in range(reader.u8()))
    keys = []
    for _ in range(reader.u16()):
        key_id, segment_count = reader.record(_KEY_HEAD)
        segments = []
        for _ in range(segment_count):
            stored_key_id, offset, length = reader.record(_SEGMENT)
            segments.append(Segment(_canonical(stored_key_id), offset, length))
        keys.append(ReservedKey(_canonical(key_id), tuple(segments)))
    reader.end()
    reservation = Etsi014Reservation(request_id, master, slaves, size_bits, tuple(keys))
    _check_etsi014(reservation)
    return reservation


def _decode_key(request_id: str, reader: _Reader) -> KeyReservation:
    reservation = KeyReservation(request_id, reader.uuid(), reader.text(MAX_HOLDER_BYTES))
    check_reservation(reservation)
    return reservation


def _decode_skip(request_id: str, reader: _Reader) -> SkipKeyReservation:
    reservation = SkipKeyReservation(request_id, reader.uuid(), reader.text(MAX_HOLDER_BYTES))
    check_reservation(reservation)
    return reservation


def _decode_chunk(request_id: str, reader: _Reader) -> ChunkReservation:
    stream_id, index = reader.uuid(), reader.u32()
    key_ids = tuple(reader.uuid() for _ in range(reader.u16()))
    reservation = ChunkReservation(request_id, stream_id, index, key_ids)
    check_reservation(reservation)
    return reservation


def _decode_epoch(request_id: str, reader: _Reader) -> EpochReservation:
    tag, number, key_id, activate_at = reader.record(_EPOCH)
    reservation = EpochReservation(request_id, tag, number, _canonical(key_id), activate_at)
    check_reservation(reservation)
    return reservation


def _decode_announcement(reader: _Reader) -> EpochAnnouncement:
    tag, number, key_id, activate_at = reader.record(_EPOCH)
    if number == 0 and key_id != bytes(16):
        raise ReservationProtocolError("epoch 0 carries a key id or an activation time")
    announcement = EpochAnnouncement(tag, number, _canonical(key_id) if number else "", activate_at)
    check_announcement(announcement)
    return announcement


def _decode_blob(reader: _Reader, what: str) -> bytes:
    length = reader.u16()
    if not 1 <= length <= MAX_KEM_BYTES:
        raise ReservationProtocolError(f"a KEM {what} of {length} bytes, allowed 1..{MAX_KEM_BYTES}")
    return reader.take(length)


def _decode_hybrid_epoch(request_id: str, reader: _Reader) -> HybridEpochReservation:
    tag, number, key_id, activate_at = reader.record(_EPOCH)
    reservation = HybridEpochReservation(request_id, tag, number, _canonical(key_id), activate_at,
                                         _decode_blob(reader, "ciphertext"))
    check_reservation(reservation)
    return reservation


def _decode_kem_announcement(reader: _Reader) -> KemAnnouncement:
    tag = reader.take(TUNNEL_TAG_BYTES)
    announcement = KemAnnouncement(tag, _decode_blob(reader, "encapsulation key"))
    check_announcement(announcement)
    return announcement


_RESERVE_DECODERS = {
    Purpose.ETSI014: _decode_etsi014,
    Purpose.KEY: _decode_key,
    Purpose.WG_EPOCH: _decode_epoch,
    Purpose.STREAM: _decode_chunk,
    Purpose.SKIP: _decode_skip,
    Purpose.HYBRID_EPOCH: _decode_hybrid_epoch,
}
