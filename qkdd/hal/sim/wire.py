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
                           slots n x u64 | bases n x u8 | outcomes n x u8
    ACK         4  Bob     frame_id u64
    REALIGN     5  Bob     request_seq u32

States (each receiver; anything else is a WireError naming state and message):

    receiver  state       message       next
    bob       HELLO       ALICE_HELLO   FRAMES
    bob       FRAMES      FRAME         FRAMES   (frame ids strictly increasing, across connections too)
    alice     HELLO       BOB_HELLO     RUNNING
    alice     RUNNING     ACK, REALIGN  RUNNING

A header is checked (magic, version, type, length cap; a FRAME at least its fixed part) before its body is
buffered, so a peer cannot make the receiver hold more than one capped message. Frame checks: slots strictly
increasing and below slot_count, bases in range for the protocol, outcomes 0/1, finite loss and power, qber in
[0, 1] or NaN.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from qkdd.hal.base import DeviceError
from qkdd.hal.sim.framing import FramedReceiver

MAGIC = b"QSIM"
VERSION = 1
HEADER = struct.Struct("<4sBBHI")
ALICE_HELLO, BOB_HELLO, FRAME, ACK, REALIGN = 1, 2, 3, 4, 5
TYPE_NAMES = {ALICE_HELLO: "ALICE_HELLO", BOB_HELLO: "BOB_HELLO", FRAME: "FRAME", ACK: "ACK", REALIGN: "REALIGN"}
PROTOCOL_CODES = {"bb84": 0, "e91": 1}
BASIS_COUNT = {"bb84": 2, "e91": 4}      # BB84 codes Z=0, X=1; E91 analyser codes 0..3 (qkdd.hal.sim.records)

_ALICE_HELLO = struct.Struct("<B7xdQ")
_FRAME_HEAD = struct.Struct("<QQIIdddd")
_ACK = struct.Struct("<Q")
_REALIGN = struct.Struct("<I")
BYTES_PER_DETECTION = 10                 # slot u64 + basis u8 + outcome u8
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
    slots: np.ndarray           # uint64, strictly increasing, < slot_count
    bases: np.ndarray           # uint8
    outcomes: np.ndarray        # uint8 0/1


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
    """The FRAME message as a list of buffers (header, fixed part, then the three columns)."""
    n = int(frame.slots.size)
    head = _FRAME_HEAD.pack(frame.frame_id, frame.slot_count, n, frame.calibration_seq, frame.link_loss_db,
                            frame.monitor_power_w, frame.qber, frame.visibility)
    body_bytes = len(head) + n * BYTES_PER_DETECTION
    return [_header(FRAME, body_bytes) + head, _column_bytes(frame.slots, "<u8"),
            _column_bytes(frame.bases, "u1"), _column_bytes(frame.outcomes, "u1")]


CHECK_CHUNK = 1 << 18        # slots compared per pass: the mask stays in cache (no frame-sized temporary)


def _first_not_increasing(slots: np.ndarray) -> int | None:
    """The first index i >= 1 with slots[i] <= slots[i - 1], or None if the slots strictly increase."""
    mask = np.empty(min(max(slots.size - 1, 0), CHECK_CHUNK), bool)
    for start in range(0, slots.size - 1, CHECK_CHUNK):
        stop = min(start + CHECK_CHUNK, slots.size - 1)
        m = mask[:stop - start]
        np.less_equal(slots[start + 1:stop + 1], slots[start:stop], out=m)
        if m.any():
            return start + int(np.argmax(m)) + 1
    return None


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
            return _FRAME_HEAD.size + self.max_detections * BYTES_PER_DETECTION
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
        if len(body) != _FRAME_HEAD.size + n * BYTES_PER_DETECTION:
            raise WireError(f"{where}: body of {len(body)} bytes does not hold {n} detections "
                            f"({_FRAME_HEAD.size + n * BYTES_PER_DETECTION} bytes)")
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
        offset = _FRAME_HEAD.size
        # Views of the body, not copies: the receiver hands each message its own body (qkdd.hal.sim.framing
        # never reuses it), so the columns pin only this frame's bytes.
        slots = np.frombuffer(body, dtype="<u8", count=n, offset=offset)
        if not slots.flags.aligned:          # (a body that did not come from the receiver's own buffer)
            slots = slots.copy()
        bases = np.frombuffer(body, dtype=np.uint8, count=n, offset=offset + 8 * n)
        outcomes = np.frombuffer(body, dtype=np.uint8, count=n, offset=offset + 9 * n)
        if n:
            if (bad := _first_not_increasing(slots)) is not None:
                raise WireError(f"{where}: slots not strictly increasing at detection {bad} "
                                f"({int(slots[bad - 1])} then {int(slots[bad])})")
            if int(slots[-1]) >= slot_count:
                raise WireError(f"{where}: slot {int(slots[-1])} beyond the frame's {slot_count} slots")
            basis_count = BASIS_COUNT[self.protocol]
            if int(bases.max()) >= basis_count:
                raise WireError(f"{where}: basis code {int(bases.max())} out of range for {self.protocol} "
                                f"(0..{basis_count - 1})")
            if int(outcomes.max()) > 1:
                raise WireError(f"{where}: outcome {int(outcomes.max())} is not a bit")
        self.last_frame_id = frame_id
        return FrameMessage(frame_id, slot_count, calibration_seq, loss_db, power_w, qber, visibility,
                            slots, bases, outcomes)
