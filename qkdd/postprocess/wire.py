"""Versioned byte layout shared by the post-processing messages (sifting, verification, amplification).

Every message is a 24-byte header followed by a payload, all integers little-endian:

    offset size field
         0    4 magic          b"QKPP"
         4    1 version        1
         5    1 kind           message type (each protocol module lists its own kinds)
         6    2 reserved       0
         8    8 frame_id       the frame this message belongs to
        16    4 seq            per-sender sequence number within the frame's exchange, from 0
        20    4 payload_bytes  exact length of what follows

decode() accepts a message only if it is complete and exactly as long as its header says, so a
truncated or padded message, a foreign magic or version, or a payload above the kind's limit is a
PeerMessageError naming the problem. Frame, kind and sequence checks are the protocol object's job.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"QKPP"
VERSION = 1
HEADER = struct.Struct("<4sBBHQII")
HEADER_BYTES = HEADER.size
MAX_PAYLOAD_BYTES = 2**32 - 1


class PeerMessageError(ValueError):
    """A peer message is malformed, oversized, for another frame, or out of sequence."""


@dataclass(frozen=True)
class Header:
    kind: int
    frame_id: int
    seq: int
    payload_bytes: int


def encode(kind: int, frame_id: int, seq: int, payload: bytes | bytearray | memoryview) -> bytes:
    """Header + payload as one bytes object."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return HEADER.pack(MAGIC, VERSION, kind, 0, frame_id, seq, len(payload)) + bytes(payload)


def decode(message: bytes, *, max_payload_bytes: int) -> tuple[Header, memoryview]:
    """Split and check a message; the payload is a zero-copy view."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise TypeError("a message must be bytes")
    view = memoryview(message).cast("B")
    if len(view) < HEADER_BYTES:
        raise PeerMessageError(f"truncated message: {len(view)} bytes, header needs {HEADER_BYTES}")
    magic, version, kind, reserved, frame_id, seq, payload_bytes = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise PeerMessageError("not a post-processing message (bad magic)")
    if version != VERSION:
        raise PeerMessageError(f"unsupported message version {version}, expected {VERSION}")
    if reserved != 0:
        raise PeerMessageError("reserved header field is not zero")
    if payload_bytes > max_payload_bytes:
        raise PeerMessageError(f"oversized message: payload of {payload_bytes} bytes, limit {max_payload_bytes}")
    actual = len(view) - HEADER_BYTES
    if actual < payload_bytes:
        raise PeerMessageError(f"truncated message: payload has {actual} of {payload_bytes} bytes")
    if actual > payload_bytes:
        raise PeerMessageError(f"message has {actual - payload_bytes} bytes past its declared payload")
    return Header(kind, frame_id, seq, payload_bytes), view[HEADER_BYTES:]


class Reader:
    """Sequential reads from a payload, each one length-checked."""

    def __init__(self, payload: memoryview, what: str):
        self._view = payload
        self._pos = 0
        self._what = what

    def take(self, n_bytes: int) -> memoryview:
        if n_bytes < 0 or self._pos + n_bytes > len(self._view):
            raise PeerMessageError(f"{self._what}: payload too short")
        chunk = self._view[self._pos:self._pos + n_bytes]
        self._pos += n_bytes
        return chunk

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def u8(self) -> int:
        return self.take(1)[0]

    def words(self, n_words: int) -> memoryview:
        return self.take(8 * n_words)

    def finish(self) -> None:
        if self._pos != len(self._view):
            raise PeerMessageError(f"{self._what}: {len(self._view) - self._pos} unexpected trailing bytes")


class Sequencer:
    """Checks the frame, kind and sequence number of each received message against what is expected."""

    def __init__(self, frame_id: int):
        self.frame_id = frame_id
        self.next_seq = 0

    def accept(self, header: Header, expected_kind: int | None, kind_names: dict[int, str], state: str) -> None:
        """Check frame, then sequence, then kind (None: nothing is expected in this state)."""
        if header.frame_id != self.frame_id:
            raise PeerMessageError(f"message for frame {header.frame_id}, this exchange is frame {self.frame_id}")
        if header.seq < self.next_seq:
            raise PeerMessageError(f"duplicate message: seq {header.seq} already received")
        if header.seq > self.next_seq:
            raise PeerMessageError(f"out-of-order message: seq {header.seq}, expected {self.next_seq}")
        if header.kind != expected_kind:
            got = kind_names.get(header.kind, f"unknown kind {header.kind}")
            wanted = "nothing" if expected_kind is None else kind_names.get(expected_kind, str(expected_kind))
            raise PeerMessageError(f"unexpected {got} in state {state}, expected {wanted}")
        self.next_seq += 1


def encode_parts(kind: int, frame_id: int, seq: int, parts: list) -> bytes:
    """Like encode(), with the payload given as a list of buffers (bytes, numpy arrays), copied once."""
    return b"".join(message_parts(kind, frame_id, seq, parts))


def message_parts(kind: int, frame_id: int, seq: int, parts: list) -> tuple[memoryview, ...]:
    """The message encode_parts() joins, as its buffers: the header, then views of `parts` (no copy). A link
    record takes such a tuple as one part (qkdd.link.envelope.encode) and copies it once, into the record."""
    views = [memoryview(p).cast("B") for p in parts]
    length = sum(len(v) for v in views)
    if length > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {length} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return (memoryview(HEADER.pack(MAGIC, VERSION, kind, 0, frame_id, seq, length)), *views)


class FrameExchange:
    """Base of the per-frame two-party exchanges (sifting, verification, amplification).

    Subclasses implement `_receive`; a peer message that fails its checks (PeerMessageError) fails the
    frame for good: the object moves to "FAILED" and refuses every later message.
    """

    state: str
    frame_id: int
    _failure: str = ""

    def receive(self, message: bytes) -> list[bytes]:
        """Feed one peer message; returns the messages to send back.

        A PeerMessageError ends the exchange: the frame is discarded and the object stays FAILED.
        """
        if self.state == "FAILED":
            raise PeerMessageError(f"exchange for frame {self.frame_id} already failed: {self._failure}")
        try:
            return self._receive(message)
        except PeerMessageError as exc:
            self.state, self._failure = "FAILED", str(exc)
            raise

    def _receive(self, message: bytes) -> list[bytes]:
        raise NotImplementedError
