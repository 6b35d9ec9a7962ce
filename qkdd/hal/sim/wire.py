"""The simulated quantum channel on the wire (sans-IO): Alice's simulator hands Bob's device what its
detectors register, frame by frame; Bob's device acknowledges each frame and may ask for a realignment.

Theory of operation
-------------------
This TCP link stands in for the fiber and Bob's detectors. It is NOT the authenticated classical channel
(qkdd.peer): it carries Bob's detections (slot, measurement basis, outcome), which a real receiver reads
from its own detectors and which never cross a network there, plus what the fiber itself carries (optical
power at the detectors, the link's loss). It carries no key, no Alice bit and no Alice basis. Anyone who
can read it learns Bob's raw detections, so it belongs on loopback or a trusted lab network: it is a
simulator's test harness, not a production path.

Every message is a 12-byte header, then the body:

    magic "QSIM" | version u8 | type u8 | reserved u16 (0) | body length u32       (little endian)

    type           sender  body
    ALICE_HELLO 1  Alice   protocol u8 (0 bb84, 1 e91) | reserved 7 bytes | clock_hz f64 | max_slots u64
    BOB_HELLO   2  Bob     (empty)
    FRAME       3  Alice   frame_id u64 | slot_count u64 | n u32 | calibration_seq u32 |
                           link_loss_db f64 | monitor_power_w f64 | qber f64 | visibility f64 |
                           slot stream | bases n x u8 | outcomes n x u8
    ACK         4  Bob     frame_id u64
    REALIGN     5  Bob     request_seq u32

States (each receiver; anything else is a WireError naming state and message):

    receiver  state       message       next
    bob       HELLO       ALICE_HELLO   FRAMES
    bob       FRAMES      FRAME         FRAMES   (frame ids strictly increasing, across connections too)
    alice     HELLO       BOB_HELLO     RUNNING
    alice     RUNNING     ACK, REALIGN  RUNNING

The slot stream is the detections' slots as qkd_sift.h encodes Bob's slots for sifting: the first slot, then
each gap less one, as LEB128 varints; its length is what the body leaves after the fixed part and the two byte
columns. At the record systems' detection rates a gap takes one byte, so a detection crosses in about 3 bytes
instead of the 10 of wire version 1 (u64 slots): 2^25 detections a frame are ~105 MB instead of 336 MB, and
loopback TCP cost both ends 1.06 CPU s for the 336 MB (version 2 is refused by version 1 and vice versa).

A header is checked (magic, version, type, length cap; a FRAME at least its fixed part) before its body is
buffered, so a peer cannot make the receiver hold more than one capped message. Frame checks: the slot stream
holds exactly n slots below slot_count (strictly increasing by its construction; checked eight one-byte gaps at a
time, not decoded: a received FrameMessage keeps `slot_stream`, and Bob's link sends it on as its SLOTS), bases in
range for the protocol, outcomes 0/1, finite loss and power, qber in [0, 1] or NaN.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from qkdd.bindings import sift as native_sift
from qkdd.bindings import NativeError
from qkdd.hal.base import DeviceError
from qkdd.hal.sim.framing import FramedReceiver

MAGIC = b"QSIM"
VERSION = 2                              # 2: slots as a varint gap stream (1: n x u64)
HEADER = struct.Struct("<4sBBHI")
ALICE_HELLO, BOB_HELLO, FRAME, ACK, REALIGN = 1, 2, 3, 4, 5
TYPE_NAMES = {ALICE_HELLO: "ALICE_HELLO", BOB_HELLO: "BOB_HELLO", FRAME: "FRAME", ACK: "ACK", REALIGN: "REALIGN"}
PROTOCOL_CODES = {"bb84": 0, "e91": 1}
BASIS_COUNT = {"bb84": 2, "e91": 4}      # BB84 codes Z=0, X=1; E91 analyser codes 0..3 (qkdd.hal.sim.records)

_ALICE_HELLO = struct.Struct("<B7xdQ")
_FRAME_HEAD = struct.Struct("<QQIIdddd")
_ACK = struct.Struct("<Q")
_REALIGN = struct.Struct("<I")
COLUMN_BYTES_PER_DETECTION = 2          # basis u8 + outcome u8, after the slot stream
MAX_SLOTS = 1 << 40                      # largest frame in pulse slots (18 min at 1 GHz)

HELLO, FRAMES, RUNNING = "HELLO", "FRAMES", "RUNNING"
TRANSITIONS = {("bob", HELLO): {ALICE_HELLO: FRAMES}, ("bob", FRAMES): {FRAME: FRAMES},
               ("alice", HELLO): {BOB_HELLO: RUNNING}, ("alice", RUNNING): {ACK: RUNNING, REALIGN: RUNNING}}


class WireError(DeviceError):
    """Bad data on the simulated quantum channel; the message says what was wrong."""


@dataclass(frozen=True)
class AliceHello:
    protocol: str
    clock_hz: float
    max_slots: int


@dataclass(frozen=True)
class BobHello:
    pass


@dataclass(frozen=True)
class FrameMessage:
    frame_id: int
    slot_count: int
    calibration_seq: int
    link_loss_db: float
    monitor_power_w: float
    qber: float                 # the simulator's sifted error rate of this frame (NaN: none sifted)
    visibility: float           # 1 - 2 e (BB84) or S / (2 sqrt 2) (E91); NaN: unknown
    slots: np.ndarray | None    # uint64, strictly increasing, < slot_count (None in a received frame: slot_stream)
    bases: np.ndarray           # uint8
    outcomes: np.ndarray        # uint8 0/1
    slot_stream: np.ndarray | None = None   # a received frame's slots as sent, checked (uint8 view of its body)

    @property
    def detections(self) -> int:
        return int(self.bases.size)

    def slots_array(self) -> np.ndarray:
        """The slots as uint64: `slots`, or a received frame's decoded from its stream."""
        if self.slots is not None:
            return self.slots
        return native_sift.decode_slots(self.slot_stream, self.detections, self.slot_count)


@dataclass(frozen=True)
class Ack:
    frame_id: int


@dataclass(frozen=True)
class Realign:
    request_seq: int


Message = AliceHello | BobHello | FrameMessage | Ack | Realign


def _header(kind: int, body_bytes: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, 0, body_bytes)


def encode_alice_hello(hello: AliceHello) -> bytes:
    body = _ALICE_HELLO.pack(PROTOCOL_CODES[hello.protocol], hello.clock_hz, hello.max_slots)
    return _header(ALICE_HELLO, len(body)) + body


def encode_bob_hello() -> bytes:
    return _header(BOB_HELLO, 0)


def encode_ack(frame_id: int) -> bytes:
    return _header(ACK, _ACK.size) + _ACK.pack(frame_id)


def encode_realign(request_seq: int) -> bytes:
    return _header(REALIGN, _REALIGN.size) + _REALIGN.pack(request_seq)


def _column_bytes(column: np.ndarray, dtype: str) -> memoryview:
    """A column as a flat byte view (no copy when it already has the wire's layout)."""
    return memoryview(np.ascontiguousarray(column, dtype=dtype)).cast("B")


def encode_frame(frame: FrameMessage) -> list[bytes | memoryview]:
    """The FRAME message as a list of buffers (header and fixed part with the slot stream, then the two byte
    columns). Encoding the slots is a pass over the frame (~0.1 s at 2^25 detections): call it off the event
    loop for large frames. Slots that are not strictly increasing below slot_count raise ValueError."""
    n = int(frame.slots.size)
    head = _FRAME_HEAD.pack(frame.frame_id, frame.slot_count, n, frame.calibration_seq, frame.link_loss_db,
                            frame.monitor_power_w, frame.qber, frame.visibility)
    prefix = HEADER.size + len(head)
    slots = np.ascontiguousarray(frame.slots, dtype=np.uint64)
    try:
        first = native_sift.encode_slots(slots, frame.slot_count, prefix_bytes=prefix)
    except NativeError as exc:
        raise ValueError(f"frame {frame.frame_id}: {exc}") from None
    first[:prefix] = np.frombuffer(_header(FRAME, first.size - HEADER.size + n * COLUMN_BYTES_PER_DETECTION) + head,
                                   dtype=np.uint8)
    return [memoryview(first), _column_bytes(frame.bases, "u1"), _column_bytes(frame.outcomes, "u1")]


class Receiver(FramedReceiver):
    """The BB84/E91 wire's parser (the buffering is qkdd.hal.sim.framing's)."""

    HEADER = HEADER
    TRANSITIONS = TRANSITIONS

    def __init__(self, role: str, *, protocol: str = "bb84", max_detections: int = 1 << 22,
                 max_slots: int = MAX_SLOTS):
        super().__init__(role)
        self.protocol = protocol
        self.max_detections = max_detections
        self.max_slots = max_slots

    def max_body_bytes(self, kind: int) -> int:
        if kind == FRAME:
            return (_FRAME_HEAD.size + native_sift.slot_code_bound(self.max_detections)
                    + self.max_detections * COLUMN_BYTES_PER_DETECTION)
        return {ALICE_HELLO: _ALICE_HELLO.size, BOB_HELLO: 0, ACK: _ACK.size, REALIGN: _REALIGN.size}[kind]

    def _check_header(self, raw: bytes) -> tuple[int, int]:
        magic, version, kind, reserved, body_bytes = HEADER.unpack(raw)
        if magic != MAGIC:
            raise WireError(f"quantum channel: not a simulator stream (magic {magic!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise WireError(f"quantum channel: unsupported wire version {version} (this end speaks {VERSION})")
        allowed = TRANSITIONS[(self.role, self.state)]
        if kind not in allowed:
            name = TYPE_NAMES.get(kind, f"unknown type {kind}")
            raise WireError(f"quantum channel: {name} not allowed in state {self.state} at {self.role}")
        if reserved != 0:
            raise WireError(f"quantum channel: reserved header field is {reserved}, must be 0")
        cap = self.max_body_bytes(kind)
        exact = kind != FRAME
        if body_bytes > cap or (exact and body_bytes != cap):
            raise WireError(f"quantum channel: {TYPE_NAMES[kind]} body of {body_bytes} bytes "
                            f"({'must be' if exact else 'cap'} {cap})")
        if kind == FRAME and body_bytes < _FRAME_HEAD.size:
            raise WireError(f"quantum channel: FRAME body of {body_bytes} bytes is shorter than its "
                            f"{_FRAME_HEAD.size}-byte fixed part")
        return kind, body_bytes

    def _parse(self, kind: int, body: bytearray) -> Message:
        if kind == ALICE_HELLO:
            code, clock_hz, max_slots = _ALICE_HELLO.unpack(body)
            protocol = next((name for name, c in PROTOCOL_CODES.items() if c == code), None)
            if protocol != self.protocol:
                raise WireError(f"quantum channel: Alice's source runs protocol "
                                f"{protocol or f'code {code}'}, this end is configured for {self.protocol}")
            if not (math.isfinite(clock_hz) and clock_hz > 0):
                raise WireError(f"quantum channel: clock_hz must be a positive number, got {clock_hz!r}")
            return AliceHello(protocol, clock_hz, max_slots)
        if kind == BOB_HELLO:
            return BobHello()
        if kind == ACK:
            return Ack(_ACK.unpack(body)[0])
        if kind == REALIGN:
            return Realign(_REALIGN.unpack(body)[0])
        return self._parse_frame(body)

    def _parse_frame(self, body: bytearray) -> FrameMessage:
        (frame_id, slot_count, n, calibration_seq, loss_db, power_w, qber,
         visibility) = _FRAME_HEAD.unpack_from(body)
        where = f"quantum channel: frame {frame_id}"
        if n > self.max_detections:
            raise WireError(f"{where}: {n} detections exceed the cap of {self.max_detections}")
        code_bytes = len(body) - _FRAME_HEAD.size - n * COLUMN_BYTES_PER_DETECTION
        if not n <= code_bytes <= native_sift.slot_code_bound(n):
            raise WireError(f"{where}: body of {len(body)} bytes does not hold {n} detections (their slot "
                            f"stream would be {code_bytes} bytes, {n} to {native_sift.slot_code_bound(n)})")
        if self.last_frame_id is not None and frame_id <= self.last_frame_id:
            raise WireError(f"{where}: frame id not increasing (last was {self.last_frame_id})")
        if not 1 <= slot_count <= self.max_slots:
            raise WireError(f"{where}: slot_count {slot_count} outside [1, {self.max_slots}]")
        if not (math.isfinite(loss_db) and loss_db >= 0):
            raise WireError(f"{where}: link_loss_db must be a finite number >= 0, got {loss_db!r}")
        if not (math.isfinite(power_w) and power_w >= 0):
            raise WireError(f"{where}: monitor_power_w must be a finite number >= 0, got {power_w!r}")
        if not (math.isnan(qber) or 0.0 <= qber <= 1.0):
            raise WireError(f"{where}: qber must be in [0, 1] or NaN, got {qber!r}")
        if not (math.isnan(visibility) or -1.0 <= visibility <= 1.0):
            raise WireError(f"{where}: visibility must be in [-1, 1] or NaN, got {visibility!r}")
        offset = _FRAME_HEAD.size + code_bytes
        # The byte columns are views of the body, not copies: the receiver hands each message its own body
        # (qkdd.hal.sim.framing never reuses it), so they pin only this frame's bytes.
        bases = np.frombuffer(body, dtype=np.uint8, count=n, offset=offset)
        outcomes = np.frombuffer(body, dtype=np.uint8, count=n, offset=offset + n)
        # Checked, not decoded: Bob's link sends the stream on as it is (qkdd.hal.base.BobDetections)
        stream = np.frombuffer(body, dtype=np.uint8, count=code_bytes, offset=_FRAME_HEAD.size)
        try:
            native_sift.check_slot_stream(stream, n, slot_count)
        except NativeError as exc:
            raise WireError(f"{where}: slots: {exc}") from None
        if n:
            basis_count = BASIS_COUNT[self.protocol]
            if int(bases.max()) >= basis_count:
                raise WireError(f"{where}: basis code {int(bases.max())} out of range for {self.protocol} "
                                f"(0..{basis_count - 1})")
            if int(outcomes.max()) > 1:
                raise WireError(f"{where}: outcome {int(outcomes.max())} is not a bit")
        self.last_frame_id = frame_id
        return FrameMessage(frame_id, slot_count, calibration_seq, loss_db, power_w, qber, visibility,
                            None, bases, outcomes, stream)
