"""The ETSI 014 reservation exchange between two KMEs (sans-IO): the master's KME records a key
reservation at the slave's KME over the classical channel before it answers its SAE.

Theory of operation
-------------------
One `ReservationEndpoint` runs at each end of a link; both ends can be the master's KME (SAEs sit on
both sides), so each endpoint plays both roles and the role of a request follows from who sent RESERVE.
The master's end calls `reserve(reservation)` and sends the bytes; the slave's end gets a
`ReservationReceived` event from `receive()`, records the reservation durably, and answers with
`accept(request_id)` or `refuse(request_id, reason, text)`. The master's end gets `ReservationAccepted`
or `ReservationRefused` and only then answers its SAE. A master that gives up waiting calls
`abandon(request_id)`; a late answer for it is then reported as `LateAnswer`, never as an acceptance.

Per request id, the states and every legal transition (anything else is a ReservationProtocolError):

    master end:  (none) --reserve--> SENT --ACCEPT--> ACCEPTED
                                     SENT --REFUSE--> REFUSED
                                     SENT --abandon--> ABANDONED
    slave end:   (none) --RESERVE--> RECEIVED --accept--> ACCEPTED
                                     RECEIVED --refuse--> REFUSED

Finished requests are forgotten (the slave's durable record is the ledger, not this object), so a
retransmitted RESERVE is a new RECEIVED request; the ledger makes recording it idempotent. Abandoned
requests are remembered for their late answers, the newest MAX_ABANDONED of them: past that the oldest is
forgotten, and an answer to it is then an answer to no request (so a peer that stops answering, on a
session that lasts, cannot grow this end's memory without bound). When the session ends, `end_session()`
forgets every request: answers never cross sessions.

Wire layout, version 2 (big-endian; strings are UTF-8 with a u16 length). A payload on the channel is
one or more messages back to back; each end sends whatever queued while its previous write was on the
way in one payload, so a busy link carries one record per burst instead of one per request:

    message: version u8 (=2) | type u8 | request_id 16 bytes (UUID) | body length u32 | body
    RESERVE body: size_bits u32 | master_sae str | slave count u8, slave str...  (first = the slave)
                  key count u16, per key: key_id 16 bytes | segment count u16,
                             per segment: stored key_id 16 bytes | offset_bytes u32 | length_bytes u32
    ACCEPT body:  (empty)
    REFUSE body:  reason u8 | text str

A payload is decoded whole before any of it is applied: one malformed or illegal message rejects the
payload and changes no request's state.

Sizes: messages back to back fill at most MAX_PACKED_BYTES of a payload (`pack_payloads`); a larger
payload is one message alone, of at most MAX_MESSAGE_BYTES. The receiver holds the peer to both before
decoding, so a peer cannot keep the event loop decoding for long: the largest payload it accepts is one
RESERVE of 4 MiB, or 1 MiB of small messages.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

WIRE_VERSION = 2
MAX_SLAVES = 255
MAX_KEYS = 65535
MAX_SEGMENTS_PER_KEY = 65535
MAX_TEXT_BYTES = 1024
MAX_PACKED_BYTES = 1 << 20
MAX_ABANDONED = 1 << 16        # abandoned requests remembered for a late answer (the newest)
# The largest message. The KME's configuration caps a Get key at 1 MiB of key (qkdd.kme.config
# MAX_REQUEST_KEY_BITS) and a stored key holds at least 64 bits on a link (a segment each 8 bytes, plus
# one per key), so a RESERVE holds at most 131 072 + 4096 segments of 24 bytes plus 4096 key heads:
# under 3.3 MB.
MAX_MESSAGE_BYTES = 4 << 20


class MessageType(enum.IntEnum):
    RESERVE = 1
    ACCEPT = 2
    REFUSE = 3


class RefuseReason(enum.IntEnum):
    KEYS_UNAVAILABLE = 1     # a named stored key is missing, pending, or already used at this end
    UNKNOWN_SAE = 2          # a named slave SAE is not served by this KME
    STORE_FAILURE = 3        # the ledger or key store could not record the reservation
    MALFORMED = 4            # the request could not be decoded


class State(enum.Enum):
    SENT = "sent"
    ACCEPTED = "accepted"
    REFUSED = "refused"
    ABANDONED = "abandoned"
    RECEIVED = "received"


# (role, current state or None, what happens) -> next state
TRANSITIONS: dict[tuple[str, State | None, str], State] = {
    ("master", None, "reserve"): State.SENT,
    ("master", State.SENT, "ACCEPT"): State.ACCEPTED,
    ("master", State.SENT, "REFUSE"): State.REFUSED,
    ("master", State.SENT, "abandon"): State.ABANDONED,
    ("slave", None, "RESERVE"): State.RECEIVED,
    ("slave", State.RECEIVED, "accept"): State.ACCEPTED,
    ("slave", State.RECEIVED, "refuse"): State.REFUSED,
}
_FINAL = {State.ACCEPTED, State.REFUSED}


class ReservationProtocolError(Exception):
    """A message that is malformed or illegal in the current state; names the state and event."""


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
class Reservation:
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


# -- events returned by receive() ----------------------------------------------------------------

@dataclass(frozen=True)
class ReservationReceived:
    reservation: Reservation


@dataclass(frozen=True)
class ReservationAccepted:
    request_id: str


@dataclass(frozen=True)
class ReservationRefused:
    request_id: str
    reason: RefuseReason
    text: str


@dataclass(frozen=True)
class LateAnswer:
    """An answer to a request this end abandoned (timed out): the caller cleans up, nothing else."""

    request_id: str
    accepted: bool


Event = ReservationReceived | ReservationAccepted | ReservationRefused | LateAnswer


class ReservationEndpoint:
    """One end of the exchange: encodes what this end sends, decodes and checks what it receives."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], State] = {}   # (role, request_id) -> state
        self._abandoned: dict[str, None] = {}        # abandoned requests' ids, oldest first

    def state(self, role: str, request_id: str) -> State | None:
        return self._states.get((role, request_id))

    # -- master's end --------------------------------------------------------------------------------
    def reserve(self, reservation: Reservation) -> bytes:
        """The RESERVE message; ValueError, changing nothing, if the reservation cannot be encoded (or
        would exceed MAX_MESSAGE_BYTES)."""
        message = encode_reserve(reservation)
        self._step("master", reservation.request_id, "reserve")
        return message

    def abandon(self, request_id: str) -> None:
        self._step("master", request_id, "abandon")
        self._abandoned[request_id] = None
        if len(self._abandoned) > MAX_ABANDONED:
            oldest = next(iter(self._abandoned))
            del self._abandoned[oldest], self._states[("master", oldest)]

    def end_session(self) -> None:
        """The session carrying the exchange ended: no answer to anything sent or received on it can
        arrive or go out any more, so every request is forgotten (the caller fails the waiting ones)."""
        self._states.clear()
        self._abandoned.clear()

    # -- slave's end ---------------------------------------------------------------------------------
    def accept(self, request_id: str) -> bytes:
        self._step("slave", request_id, "accept")
        return _message(MessageType.ACCEPT, request_id)

    def refuse(self, request_id: str, reason: RefuseReason, text: str) -> bytes:
        self._step("slave", request_id, "refuse")
        return encode_refuse(request_id, reason, text)

    # -- both ----------------------------------------------------------------------------------------
    def receive(self, payload: bytes) -> list[Event]:
        """Decode a payload of one or more messages from the peer, one event per message. Raises
        ReservationProtocolError, changing nothing, if a message is malformed or illegal now (e.g. ACCEPT
        for a request never sent)."""
        changes: dict[tuple[str, str], State | None] = {}      # what the payload's messages do, applied last
        events = [self._apply(message_type, request_id, decoded, changes)
                  for message_type, request_id, decoded in _decode_payload(payload)]
        for key, state in changes.items():
            if state is None:
                self._states.pop(key, None)
                if key[0] == "master":
                    self._abandoned.pop(key[1], None)      # (a late answer's request)
            else:
                self._states[key] = state
        return events

    def _apply(self, message_type: "MessageType", request_id: str, decoded,
               changes: dict[tuple[str, str], "State | None"]) -> Event:
        if message_type is MessageType.RESERVE:
            self._step("slave", request_id, "RESERVE", changes)
            return ReservationReceived(decoded)
        key = ("master", request_id)
        if (changes[key] if key in changes else self._states.get(key)) is State.ABANDONED:
            changes[key] = None
            return LateAnswer(request_id, message_type is MessageType.ACCEPT)
        if message_type is MessageType.ACCEPT:
            self._step("master", request_id, "ACCEPT", changes)
            return ReservationAccepted(request_id)
        self._step("master", request_id, "REFUSE", changes)
        reason, text = decoded
        return ReservationRefused(request_id, reason, text)

    def _step(self, role: str, request_id: str, event: str,
              changes: dict[tuple[str, str], "State | None"] | None = None) -> None:
        """Take one transition; into `changes` instead of the states when given (receive())."""
        key = (role, request_id)
        current = changes[key] if changes is not None and key in changes else self._states.get(key)
        following = TRANSITIONS.get((role, current, event))
        if following is None:
            state = current.value if current else "no request"
            raise ReservationProtocolError(f"{event} is illegal for {role} request {request_id} in state {state}")
        following = None if following in _FINAL else following
        if changes is not None:
            changes[key] = following
        elif following is None:
            self._states.pop(key, None)
        else:
            self._states[key] = following


# -- encoding ------------------------------------------------------------------------------------------

_MESSAGE_HEAD = struct.Struct(">BB16sI")
_KEY_HEAD = struct.Struct(">16sH")
_SEGMENT = struct.Struct(">16sII")


def _uuid_bytes(text: str) -> bytes:
    """The 16 bytes of a canonical UUID string (as uuid.UUID(text).bytes, without building the object)."""
    raw = bytes.fromhex(text.replace("-", "")) if len(text) == 36 else b""
    if len(raw) != 16:
        raise ValueError(f"not a canonical UUID: {text!r}")
    return raw


def _message(message_type: MessageType, request_id: str, body: bytes = b"") -> bytes:
    return _MESSAGE_HEAD.pack(WIRE_VERSION, message_type, _uuid_bytes(request_id), len(body)) + body


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > MAX_TEXT_BYTES:
        raise ValueError(f"text of {len(data)} bytes exceeds {MAX_TEXT_BYTES}")
    return struct.pack(">H", len(data)) + data


def encode_reserve(reservation: Reservation) -> bytes:
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
    message = _message(MessageType.RESERVE, reservation.request_id, b"".join(parts))
    if len(message) > MAX_MESSAGE_BYTES:
        raise ValueError(f"a RESERVE of {len(message)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return message


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


def encode_refuse(request_id: str, reason: RefuseReason, text: str) -> bytes:
    return _message(MessageType.REFUSE, request_id, struct.pack(">B", reason) + _text(text[:200]))


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

    def text(self) -> str:
        length = self.u16()
        if length > MAX_TEXT_BYTES:
            raise ReservationProtocolError(f"string of {length} bytes exceeds {MAX_TEXT_BYTES}")
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


def _decode_payload(payload: bytes) -> list[tuple[MessageType, str, object]]:
    """Every message of a payload as (type, request_id, decoded body): a Reservation for RESERVE, None for
    ACCEPT, (reason, text) for REFUSE."""
    _check_payload_size(payload)
    reader = _Reader(bytes(payload))
    messages = []
    while True:
        version = reader.u8()
        if version != WIRE_VERSION:
            raise ReservationProtocolError(f"wire version {version}, this KME speaks {WIRE_VERSION}")
        code = reader.u8()
        try:
            message_type = MessageType(code)
        except ValueError:
            raise ReservationProtocolError(f"unknown message type {code}") from None
        request_id = reader.uuid()
        body = reader.body(reader.u32())
        if message_type is MessageType.RESERVE:
            decoded: object = _decode_reserve(request_id, body)
        elif message_type is MessageType.ACCEPT:
            decoded = None
        else:
            decoded = _decode_refuse(body)
        body.end()
        messages.append((message_type, request_id, decoded))
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


def _decode_reserve(request_id: str, reader: _Reader) -> Reservation:
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
    reservation = Reservation(request_id, master, slaves, size_bits, tuple(keys))
    check_reservation(reservation)
    return reservation


def check_reservation(reservation: Reservation) -> None:
    """The invariants a well-formed reservation keeps; ReservationProtocolError names the broken one."""
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
