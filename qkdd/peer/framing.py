"""Versioned framing of the classical channel (sans-IO): every handshake message and record is one frame.

Wire format of a frame (big-endian):

    magic  4 bytes  b"QKDP"
    version 1 byte  FRAME_VERSION
    type   1 byte   FrameType
    length 4 bytes  body length in bytes
    body   `length` bytes

The decoder checks magic, version, type and the size cap of that type as soon as the 10 header bytes are
in, before it buffers any of the body, so an oversized length costs nothing and is refused at once.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .errors import FrameError

MAGIC = b"QKDP"
FRAME_VERSION = 1
HEADER = struct.Struct(">4sBBI")
HEADER_BYTES = HEADER.size
# Handshake messages are a few kilobytes (ML-KEM-768 key 1184 B, ML-DSA-65 signature 3309 B).
MAX_HANDSHAKE_BODY_BYTES = 16 * 1024
DEFAULT_MAX_RECORD_BYTES = 64 * 1024 * 1024
ZERO_COPY_BYTES = 1 << 20     # a frame body this large is handed out as a view of the receive buffer, not copied


class FrameType(enum.IntEnum):
    INITIATOR_HELLO = 0x01
    RESPONDER_HELLO = 0x02
    INITIATOR_FINISH = 0x03
    RESPONDER_FINISH = 0x04
    ALERT = 0x0F
    DATA = 0x10
    PING = 0x11
    CLOSE = 0x12
    TRANSCRIPT_DATA = 0x13   # a DATA record without the session MAC (auth "its": see qkdd.peer.records)


HANDSHAKE_TYPES = frozenset(
    {FrameType.INITIATOR_HELLO, FrameType.RESPONDER_HELLO, FrameType.INITIATOR_FINISH,
     FrameType.RESPONDER_FINISH, FrameType.ALERT}
)
RECORD_TYPES = frozenset({FrameType.DATA, FrameType.PING, FrameType.CLOSE, FrameType.TRANSCRIPT_DATA})


@dataclass(frozen=True)
class Frame:
    type: FrameType
    body: bytes               # a read-only memoryview for bodies of ZERO_COPY_BYTES or more (FrameDecoder)

    def header(self) -> bytes:
        return encode_header(self.type, len(self.body))

    def to_bytes(self) -> bytes:
        return self.header() + self.body


def encode_header(frame_type: FrameType, body_bytes: int) -> bytes:
    return HEADER.pack(MAGIC, FRAME_VERSION, int(frame_type), body_bytes)


class FrameDecoder:
    """Bytes in (`receive_data`), whole frames out (`next_frame`); raises FrameError on bad input.

    `max_record_bytes` caps the body of record frames; handshake frames have their own small cap.
    After a FrameError the stream is unusable: the caller closes the connection.
    """

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, *, accept_records: bool = True) -> None:
        if max_record_bytes <= 0:
            raise ValueError("max_record_bytes must be positive")
        self.max_record_bytes = max_record_bytes
        # False while handshaking: a record header is refused at once, so an unauthenticated peer
        # cannot make this end buffer a record-sized body.
        self.accept_records = accept_records
        self._buffer = bytearray()
        self._start = 0  # frames before this offset were taken; compacted on the next receive_data
        self._pending: tuple[FrameType, int] | None = None  # header parsed, body awaited
        self._eof = False

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._start

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the stream; b"" means end of stream."""
        if self._eof:
            raise FrameError("data after end of stream")
        if not data:
            self._eof = True
            return
        if self._start:
            # Drop taken frames once per chunk, not once per frame (which would be quadratic in the
            # number of small frames per chunk).
            del self._buffer[:self._start]
            self._start = 0
        self._buffer += data
        self._parse_header()

    def complete_frame_bytes(self) -> int:
        """The body length of the next frame once all of it is buffered (next_frame() returns it), else 0."""
        self._parse_header()
        if self._pending is None or self.buffered_bytes < HEADER_BYTES + self._pending[1]:
            return 0
        return self._pending[1]

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed. At end of stream with a partial
        frame in the buffer, raises FrameError (truncated frame)."""
        self._parse_header()
        if self._pending is not None:
            frame_type, length = self._pending
            if self.buffered_bytes >= HEADER_BYTES + length:
                body_start = self._start + HEADER_BYTES
                if length >= ZERO_COPY_BYTES:
                    # The body stays where it was received: the frame keeps the old buffer (never resized
                    # again) and only what follows it moves to a new one (at most one receive's worth).
                    old, self._buffer = self._buffer, self._buffer[body_start + length:]
                    self._start = 0
                    self._pending = None
                    return Frame(frame_type, memoryview(old).toreadonly()[body_start:body_start + length])
                with memoryview(self._buffer) as view:  # one copy out of the buffer, not two
                    body = bytes(view[body_start:body_start + length])
                self._start = body_start + length
                self._pending = None  # the next header is checked on the next call (accept_records may change)
                return Frame(frame_type, body)
        if self._eof and self.buffered_bytes:
            raise FrameError(f"stream ended inside a frame ({self.buffered_bytes} bytes of a partial frame)")
        return None

    @property
    def at_eof(self) -> bool:
        """True once the stream ended and every complete frame was taken."""
        return self._eof and not self.buffered_bytes

    def _parse_header(self) -> None:
        """Check the next header as soon as its bytes are in (the magic even byte by byte)."""
        if self._pending is not None:
            return
        if self.buffered_bytes < HEADER_BYTES:
            prefix = bytes(self._buffer[self._start:self._start + len(MAGIC)])
            if not MAGIC.startswith(prefix):
                raise FrameError("bad magic: the stream is not qkdd peer framing")
            return
        magic, version, type_code, length = HEADER.unpack_from(self._buffer, self._start)
        if magic != MAGIC:
            raise FrameError("bad magic: the stream is not qkdd peer framing")
        if version != FRAME_VERSION:
            raise FrameError(f"unsupported frame version {version} (this end speaks {FRAME_VERSION})")
        try:
            frame_type = FrameType(type_code)
        except ValueError:
            raise FrameError(f"unknown frame type 0x{type_code:02x}") from None
        if frame_type in RECORD_TYPES and not self.accept_records:
            raise FrameError(f"{frame_type.name} frame before the handshake completed")
        cap = MAX_HANDSHAKE_BODY_BYTES if frame_type in HANDSHAKE_TYPES else self.max_record_bytes
        if length > cap:
            raise FrameError(f"{frame_type.name} frame of {length} bytes exceeds the cap of {cap} bytes")
        self._pending = (frame_type, length)
