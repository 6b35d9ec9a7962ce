"""The key-relay messages of a link whose devices are vendor KMEs: the master end offers the vendor key IDs
of one batch, the slave end accepts (it fetched and stored them) or refuses (it could not). Sans-IO.

Theory of operation
-------------------
The master's vendor KME hands it a batch of keys (enc_keys); the master stores them PENDING under key
ids derived from the vendor ids (`key_id_for`: the same at both ends), then sends OFFER. The slave
fetches the batch from its own vendor KME by the vendor ids (dec_keys), stores it and answers ACCEPT, or
REFUSE with the reason when its KME cannot deliver them. On ACCEPT the master commits the batch; on
REFUSE it discards it. One batch is in flight at a time (the master's table below). A session that
ends between OFFER and the answer leaves the batch pending at the master; the key-store
resynchronisation of the next session then promotes it if the slave stored it, and discards it if not
(qkdd.keystore.resync), so no key is ever usable at one end only.

    master state   event                   next state     action
    IDLE           batch from the KME      AWAITING       store pending, send OFFER
    AWAITING       ACCEPT of that batch    IDLE           commit
    AWAITING       REFUSE of that batch    IDLE           discard, report the reason
    AWAITING       anything else           (error)        end the session (RelayProtocolError)

Wire layout (big-endian): magic "QKVR", version u8, kind u8, batch id u64, then
    OFFER   count u16, count x (length u8, vendor key id: printable ASCII)
    ACCEPT  nothing
    REFUSE  length u16, reason (printable UTF-8 text, at most MAX_REASON_BYTES)
"""
from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass

MAGIC = b"QKVR"
VERSION = 1
MAX_KEYS_PER_OFFER = 1024
MAX_VENDOR_ID_BYTES = 128
MAX_REASON_BYTES = 512
_HEADER = struct.Struct(">4sBBQ")
_COUNT = struct.Struct(">H")
# key ids of relayed keys: uuid5 of the link and the vendor's key id under this namespace
KEY_ID_NAMESPACE = uuid.UUID("5d7f4a8e-2b1c-4f60-9a3e-8c0d7b6e1f25")


class Kind(enum.IntEnum):
    OFFER = 1
    ACCEPT = 2
    REFUSE = 3


class RelayProtocolError(Exception):
    """A malformed or unexpected key-relay message; the message names the problem."""


@dataclass(frozen=True)
class Message:
    kind: Kind
    batch_id: int
    vendor_key_ids: tuple[str, ...] = ()
    reason: str = ""


class State(enum.Enum):
    IDLE = "idle"
    AWAITING = "awaiting"


# (state, kind of the peer's message) -> next state; what is absent is a protocol error
MASTER_TRANSITIONS = {(State.AWAITING, Kind.ACCEPT): State.IDLE, (State.AWAITING, Kind.REFUSE): State.IDLE}


def key_id_for(link_id: str, vendor_key_id: str) -> str:
    """The key store id of a relayed key: the same at both ends, and distinct across links."""
    return str(uuid.uuid5(KEY_ID_NAMESPACE, f"{link_id}\0{vendor_key_id}"))


def encode(message: Message) -> bytes:
    out = bytearray(_HEADER.pack(MAGIC, VERSION, message.kind, message.batch_id))
    if message.kind is Kind.OFFER:
        if not 0 < len(message.vendor_key_ids) <= MAX_KEYS_PER_OFFER:
            raise RelayProtocolError(f"an offer holds 1-{MAX_KEYS_PER_OFFER} keys, not {len(message.vendor_key_ids)}")
        out += _COUNT.pack(len(message.vendor_key_ids))
        for vendor_id in message.vendor_key_ids:
            raw = vendor_id.encode("ascii")
            if not 0 < len(raw) <= MAX_VENDOR_ID_BYTES:
                raise RelayProtocolError(f"vendor key id of {len(raw)} bytes (1-{MAX_VENDOR_ID_BYTES})")
            out += bytes([len(raw)]) + raw
    elif message.kind is Kind.REFUSE:
        reason = "".join(c if c.isprintable() else "?" for c in message.reason)
        raw = reason.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")   # whole chars
        out += _COUNT.pack(len(raw)) + raw
    return bytes(out)


def decode(data: bytes) -> Message:
    """One message; RelayProtocolError naming what is wrong."""
    if len(data) < _HEADER.size:
        raise RelayProtocolError(f"key-relay message of {len(data)} bytes is shorter than its header")
    magic, version, kind, batch_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RelayProtocolError("not a key-relay message (bad magic)")
    if version != VERSION:
        raise RelayProtocolError(f"key-relay version {version}; this end speaks {VERSION}")
    try:
        kind = Kind(kind)
    except ValueError:
        raise RelayProtocolError(f"unknown key-relay message kind {kind}") from None
    rest = memoryview(data)[_HEADER.size:]
    if kind is Kind.ACCEPT:
        if rest:
            raise RelayProtocolError("ACCEPT with trailing bytes")
        return Message(kind, batch_id)
    if len(rest) < _COUNT.size:
        raise RelayProtocolError(f"{kind.name} truncated")
    (count,) = _COUNT.unpack_from(rest)
    rest = rest[_COUNT.size:]
    if kind is Kind.REFUSE:
        if count != len(rest) or count > MAX_REASON_BYTES:
            raise RelayProtocolError("REFUSE reason length does not match the message")
        try:
            reason = bytes(rest).decode("utf-8")
        except UnicodeDecodeError:
            raise RelayProtocolError("REFUSE reason is not UTF-8") from None
        if not reason.isprintable():
            raise RelayProtocolError("REFUSE reason is not printable text")
        return Message(kind, batch_id, reason=reason)
    if not 0 < count <= MAX_KEYS_PER_OFFER:
        raise RelayProtocolError(f"OFFER of {count} keys (1-{MAX_KEYS_PER_OFFER})")
    ids, offset = [], 0
    for _ in range(count):
        if offset >= len(rest):
            raise RelayProtocolError("OFFER truncated")
        length = rest[offset]
        raw = bytes(rest[offset + 1:offset + 1 + length])
        if length == 0 or len(raw) != length:
            raise RelayProtocolError("OFFER truncated or with an empty key id")
        if not all(0x20 < b < 0x7F for b in raw):
            raise RelayProtocolError("OFFER key id is not printable ASCII")
        ids.append(raw.decode("ascii"))
        offset += 1 + length
    if offset != len(rest):
        raise RelayProtocolError("OFFER with trailing bytes")
    if len(set(ids)) != len(ids):
        raise RelayProtocolError("OFFER names a key id twice")
    return Message(kind, batch_id, tuple(ids))


class MasterRelay:
    """The master end's table: which batch awaits an answer; `answer(message)` checks the message against
    MASTER_TRANSITIONS and returns it, or raises RelayProtocolError."""

    def __init__(self) -> None:
        self.state = State.IDLE
        self.batch_id: int | None = None

    def offer(self, batch_id: int, vendor_key_ids: list[str]) -> bytes:
        if self.state is not State.IDLE:
            raise RelayProtocolError(f"batch {self.batch_id} still awaits its answer")
        data = encode(Message(Kind.OFFER, batch_id, tuple(vendor_key_ids)))
        self.state, self.batch_id = State.AWAITING, batch_id
        return data

    def answer(self, data: bytes) -> Message:
        message = decode(data)
        next_state = MASTER_TRANSITIONS.get((self.state, message.kind))
        if next_state is None or message.batch_id != self.batch_id:
            raise RelayProtocolError(f"{message.kind.name} of batch {message.batch_id} while {self.state.value}"
                                     + (f" for batch {self.batch_id}" if self.batch_id is not None else ""))
        self.state, self.batch_id = next_state, None
        return message
