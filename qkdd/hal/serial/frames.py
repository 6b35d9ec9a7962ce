"""The serial device protocol's framing (docs/serial-protocol.md), sans-IO: bytes in, frames and the
problems found on the way out. Nothing here reads a tty.

Theory of operation
-------------------
A frame is a 16-byte header (sync "QK", framing version, type, sequence number, payload length, and a
CRC-32C of the first 12 header bytes), the payload, and a CRC-32C of the payload. The parser looks for
the sync bytes; a header whose CRC fails, or whose length exceeds the configured bound, is not a frame
start: the parser skips one byte and looks again (resynchronisation), so garbage on the line costs the
garbage and at most the frame it overlapped, never the stream. A header that checks but names another
framing version is fatal (VersionError): the device speaks a protocol this qkdd does not.

    parser state   input                               next state   output
    SEEK           bytes up to the sync word            SEEK         Skipped(n) for bytes dropped
    SEEK           16 bytes with a good header CRC      PAYLOAD      -
    SEEK           header CRC bad / length too large    SEEK         Skipped / Oversize, skip 1 byte
    PAYLOAD        length + 4 bytes, payload CRC good   SEEK         Frame
    PAYLOAD        payload CRC bad                      SEEK         CrcError, resync after the sync word
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np

from qkdd.bindings.crc import crc32c

SYNC = b"QK"
FRAMING_VERSION = 1
PROTOCOL_VERSION = 1                       # HELLO's protocol version
HEADER = struct.Struct("<2sBBII")          # sync, version, type, seq, payload length
HEADER_BYTES = HEADER.size + 4             # + header CRC
CRC = struct.Struct("<I")
DEFAULT_MAX_FRAME_BYTES = 1 << 20

RECORD = np.dtype([("slot", "<u8"), ("basis", "u1"), ("bit", "u1"), ("intensity", "u1")])   # 11 bytes
_HELLO = struct.Struct("<HB")              # protocol version, role (0 source/alice, 1 detector/bob)
_SETTINGS = struct.Struct("<6d")           # mu_signal, mu_decoy, mu_vacuum, p_signal, p_decoy, q_x
_STATUS = struct.Struct("<Bdd")            # ok, temperature_c, uptime_s
_DETECTIONS = struct.Struct("<QQ3QBI")     # frame_id, slot_count, pulses per intensity x3, flags, count
LAST_CHUNK = 1
FIRST_CHUNK = 2


class FrameType(enum.IntEnum):
    HELLO = 1
    STATUS = 2
    DETECTIONS = 3
    SETTINGS = 4


class SerialProtocolError(Exception):
    """A frame whose payload is malformed; the message names the problem."""


class VersionError(SerialProtocolError):
    """The device speaks another framing or protocol version."""


@dataclass(frozen=True)
class Frame:
    type: FrameType
    seq: int
    payload: bytes


@dataclass(frozen=True)
class Skipped:
    """Bytes dropped while looking for a frame (garbage, a broken header)."""
    count: int


@dataclass(frozen=True)
class CrcError:
    seq: int


@dataclass(frozen=True)
class Oversize:
    length: int


Event = Frame | Skipped | CrcError | Oversize


def encode(frame_type: FrameType, seq: int, payload: bytes) -> bytes:
    header = HEADER.pack(SYNC, FRAMING_VERSION, frame_type, seq & 0xFFFFFFFF, len(payload))
    return header + CRC.pack(crc32c(header)) + payload + CRC.pack(crc32c(payload))


class FrameParser:
    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Event]:
        """Every event the bytes so far complete; VersionError for a well-formed frame of another version."""
        self._buffer += data
        events: list[Event] = []
        buffer = self._buffer
        start = 0
        skipped = 0
        while True:
            sync_at = buffer.find(SYNC, start)
            if sync_at < 0:                                  # keep a trailing "Q": it may start a sync word
                keep = 1 if buffer[-1:] == SYNC[:1] else 0
                skipped += len(buffer) - start - keep
                start = len(buffer) - keep
                break
            skipped += sync_at - start
            start = sync_at
            if len(buffer) - start < HEADER_BYTES:
                break
            _, version, frame_type, seq, length = HEADER.unpack_from(buffer, start)
            (header_crc,) = CRC.unpack_from(buffer, start + HEADER.size)
            if crc32c(memoryview(buffer)[start:start + HEADER.size]) != header_crc:
                start += 1
                skipped += 1
                continue
            if version != FRAMING_VERSION:
                raise VersionError(f"serial framing version {version}; qkdd speaks {FRAMING_VERSION}")
            if length > self.max_frame_bytes:
                if skipped:
                    events.append(Skipped(skipped))
                    skipped = 0
                events.append(Oversize(length))
                start += 1
                continue
            end = start + HEADER_BYTES + length + CRC.size
            if len(buffer) < end:
                break
            payload = bytes(buffer[start + HEADER_BYTES:end - CRC.size])
            (payload_crc,) = CRC.unpack_from(buffer, end - CRC.size)
            if skipped:
                events.append(Skipped(skipped))
                skipped = 0
            if crc32c(payload) != payload_crc:
                events.append(CrcError(seq))
                start += len(SYNC)
                continue
            try:
                events.append(Frame(FrameType(frame_type), seq, payload))
            except ValueError:
                events.append(CrcError(seq))       # a checked frame of an unknown type: treated as lost
            start = end
        if skipped:
            events.append(Skipped(skipped))
        del buffer[:start]
        return events


# ---- payloads -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    protocol_version: int
    role: str                      # "alice" (source) or "bob" (detector)
    name: str


@dataclass(frozen=True)
class Status:
    ok: bool
    temperature_c: float
    uptime_s: float
    detail: str


@dataclass(frozen=True)
class DetectionsChunk:
    frame_id: int
    slot_count: int
    pulses_per_intensity: tuple[int, int, int]
    last: bool
    records: np.ndarray             # RECORD dtype
    first: bool = True


def hello_payload(role: str, name: str, version: int = PROTOCOL_VERSION) -> bytes:
    raw = name.encode()[:255]
    return _HELLO.pack(version, 0 if role == "alice" else 1) + bytes([len(raw)]) + raw


def parse_hello(payload: bytes) -> Hello:
    if len(payload) < _HELLO.size + 1:
        raise SerialProtocolError("HELLO truncated")
    version, role = _HELLO.unpack_from(payload)
    if version != PROTOCOL_VERSION:
        raise VersionError(f"device HELLO names protocol version {version}; qkdd speaks {PROTOCOL_VERSION}")
    if role not in (0, 1):
        raise SerialProtocolError(f"HELLO role {role} (0 source, 1 detector)")
    length = payload[_HELLO.size]
    if len(payload) != _HELLO.size + 1 + length:
        raise SerialProtocolError("HELLO name length does not match the payload")
    name = payload[_HELLO.size + 1:].decode("utf-8", errors="replace")
    return Hello(version, "alice" if role == 0 else "bob", name)


def settings_payload(values: tuple[float, ...]) -> bytes:
    return _SETTINGS.pack(*values)


def parse_settings(payload: bytes) -> tuple[float, ...]:
    if len(payload) != _SETTINGS.size:
        raise SerialProtocolError(f"SETTINGS of {len(payload)} bytes, expected {_SETTINGS.size}")
    values = _SETTINGS.unpack(payload)
    if not all(0.0 <= v <= 100.0 for v in values):
        raise SerialProtocolError("SETTINGS value out of range")
    return values


def status_payload(status: Status) -> bytes:
    raw = status.detail.encode()[:1024]
    return _STATUS.pack(int(status.ok), status.temperature_c, status.uptime_s) + struct.pack("<H", len(raw)) + raw


def parse_status(payload: bytes) -> Status:
    if len(payload) < _STATUS.size + 2:
        raise SerialProtocolError("STATUS truncated")
    ok, temperature_c, uptime_s = _STATUS.unpack_from(payload)
    (length,) = struct.unpack_from("<H", payload, _STATUS.size)
    if len(payload) != _STATUS.size + 2 + length:
        raise SerialProtocolError("STATUS detail length does not match the payload")
    detail = payload[_STATUS.size + 2:].decode("utf-8", errors="replace")
    return Status(bool(ok), temperature_c, uptime_s, "".join(c for c in detail if c.isprintable())[:200])


def detections_payload(chunk: DetectionsChunk) -> bytes:
    return (_DETECTIONS.pack(chunk.frame_id, chunk.slot_count, *chunk.pulses_per_intensity,
                             (LAST_CHUNK if chunk.last else 0) | (FIRST_CHUNK if chunk.first else 0),
                             len(chunk.records))
            + np.ascontiguousarray(chunk.records, dtype=RECORD).tobytes())


def parse_detections(payload: bytes) -> DetectionsChunk:
    if len(payload) < _DETECTIONS.size:
        raise SerialProtocolError("DETECTIONS truncated")
    frame_id, slot_count, p0, p1, p2, flags, count = _DETECTIONS.unpack_from(payload)
    if len(payload) != _DETECTIONS.size + count * RECORD.itemsize:
        raise SerialProtocolError(f"DETECTIONS says {count} records but carries "
                                  f"{len(payload) - _DETECTIONS.size} bytes of them")
    records = np.frombuffer(payload, dtype=RECORD, count=count, offset=_DETECTIONS.size)
    if count and (records["basis"].max() > 1 or records["bit"].max() > 1 or records["intensity"].max() > 2):
        raise SerialProtocolError("DETECTIONS record with a basis, bit or intensity class out of range")
    if count and int(records["slot"].max()) >= slot_count:
        raise SerialProtocolError("DETECTIONS slot number beyond the frame's slot count")
    return DetectionsChunk(frame_id, slot_count, (p0, p1, p2), bool(flags & LAST_CHUNK), records,
                           bool(flags & FIRST_CHUNK))
