"""The simulated GG02 quantum channel on the wire (sans-IO): Alice's CV simulator hands Bob's device what
his balanced detector reads, frame by frame; Bob's device acknowledges each frame.

Theory of operation
-------------------
Like qkdd.hal.sim.wire for BB84, this TCP link stands in for the fiber and Bob's detector: it carries
Bob's detector voltages, his homodyne quadrature choices and his shot-noise calibration, which a real
receiver reads from its own hardware. It carries no Alice value. It belongs on loopback or a trusted lab
network: a simulator's harness, not a production path.

Every message is a 12-byte header, then the body (little endian):

    magic "QSCV" | version u8 | type u8 | reserved u16 (0) | body length u32

    type         sender  body
    BOB_HELLO  1 Bob     (empty)
    ALICE_HELLO 2 Alice  detection u8 (0 homodyne, 1 heterodyne) | 7 zero bytes | symbol_rate_hz f64
    FRAME      3 Alice   frame_id u64 | symbols u32 | quadratures u8 | 3 zero bytes | lo_variance_v2 f64 |
                         electronic_variance_v2 f64 | quadrature choice symbols x u8 |
                         volts symbols x quadratures x f32
    ACK        4 Bob     frame_id u64

States (each receiver; anything else is a WireError naming state and message):

    receiver  state    message      next
    bob       HELLO    ALICE_HELLO  FRAMES
    bob       FRAMES   FRAME        FRAMES   (frame ids strictly increasing, across connections too)
    alice     HELLO    BOB_HELLO    RUNNING
    alice     RUNNING  ACK          RUNNING

Frame checks: quadratures 1 or 2 as the hello said, choices 0/1 (all 0 for heterodyne), finite volts,
calibration variances finite with the LO one above the electronic one.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from qkdd.hal.sim.framing import FramedReceiver
from qkdd.hal.sim.wire import WireError

MAGIC = b"QSCV"
VERSION = 1
HEADER = struct.Struct("<4sBBHI")
BOB_HELLO, ALICE_HELLO, FRAME, ACK = 1, 2, 3, 4
TYPE_NAMES = {BOB_HELLO: "BOB_HELLO", ALICE_HELLO: "ALICE_HELLO", FRAME: "FRAME", ACK: "ACK"}
DETECTION_CODES = {"homodyne": 0, "heterodyne": 1}
MAX_SYMBOLS = 1 << 24
_ALICE_HELLO = struct.Struct("<B7xd")
_FRAME_HEAD = struct.Struct("<QIB3xdd")
_ACK = struct.Struct("<Q")

HELLO, FRAMES, RUNNING = "HELLO", "FRAMES", "RUNNING"
TRANSITIONS = {("bob", HELLO): {ALICE_HELLO: FRAMES}, ("bob", FRAMES): {FRAME: FRAMES},
               ("alice", HELLO): {BOB_HELLO: RUNNING}, ("alice", RUNNING): {ACK: RUNNING}}


@dataclass(frozen=True)
class BobHello:
    pass


@dataclass(frozen=True)
class AliceHello:
    detection: str
    symbol_rate_hz: float


@dataclass(frozen=True)
class Ack:
    frame_id: int


@dataclass(frozen=True)
class CvFrameMessage:
    frame_id: int
    lo_variance_v2: float
    electronic_variance_v2: float
    quadrature: np.ndarray          # (symbols,) uint8
    volts: np.ndarray               # (symbols, quadratures) float32


Message = BobHello | AliceHello | Ack | CvFrameMessage


def _message(kind: int, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, 0, len(body)) + body


def encode_bob_hello() -> bytes:
    return _message(BOB_HELLO, b"")


def encode_alice_hello(hello: AliceHello) -> bytes:
    return _message(ALICE_HELLO, _ALICE_HELLO.pack(DETECTION_CODES[hello.detection], hello.symbol_rate_hz))


def encode_ack(frame_id: int) -> bytes:
    return _message(ACK, _ACK.pack(frame_id))


def encode_frame(message: CvFrameMessage) -> bytes:
    volts = np.ascontiguousarray(message.volts, dtype="<f4")
    symbols, quadratures = volts.shape
    head = _FRAME_HEAD.pack(message.frame_id, symbols, quadratures, message.lo_variance_v2,
                            message.electronic_variance_v2)
    return _message(FRAME, head + np.ascontiguousarray(message.quadrature, dtype=np.uint8).tobytes()
                    + volts.tobytes())


class Receiver(FramedReceiver):
    """The GG02 wire's parser (the buffering is qkdd.hal.sim.framing's, as for qkdd.hal.sim.wire, so
    qkdd.hal.sim.stream.read_message reads it). Bob's keeps the last frame id across connections."""

    HEADER = HEADER
    TRANSITIONS = TRANSITIONS

    def __init__(self, role: str, *, max_symbols: int = MAX_SYMBOLS):
        super().__init__(role)
        self.max_symbols = max_symbols
        self.quadratures = 1

    def max_body_bytes(self, kind: int) -> int:
        if kind == FRAME:
            return _FRAME_HEAD.size + self.max_symbols * (1 + 2 * 4)
        return {ALICE_HELLO: _ALICE_HELLO.size, BOB_HELLO: 0, ACK: _ACK.size}[kind]

    def _check_header(self, raw: bytes) -> tuple[int, int]:
        magic, version, kind, reserved, length = HEADER.unpack(raw)
        if magic != MAGIC or version != VERSION or reserved:
            raise WireError("CV quantum channel: bad header (magic, version or reserved bytes)")
        if kind not in TYPE_NAMES:
            raise WireError(f"CV quantum channel: unknown message type {kind}")
        if kind not in TRANSITIONS[(self.role, self.state)]:
            raise WireError(f"CV quantum channel: {self.role} in state {self.state} cannot take {TYPE_NAMES[kind]}")
        if length > self.max_body_bytes(kind):
            raise WireError(f"CV quantum channel: {TYPE_NAMES[kind]} of {length} bytes exceeds the limit")
        return kind, length

    def _parse(self, kind: int, body: bytearray) -> Message:
        if kind == BOB_HELLO:
            return BobHello()
        if kind == ACK:
            if len(body) != _ACK.size:
                raise WireError("CV quantum channel: ACK has the wrong length")
            return Ack(_ACK.unpack(body)[0])
        if kind == ALICE_HELLO:
            if len(body) != _ALICE_HELLO.size:
                raise WireError("CV quantum channel: ALICE_HELLO has the wrong length")
            code, rate = _ALICE_HELLO.unpack(body)
            names = {v: k for k, v in DETECTION_CODES.items()}
            if code not in names or not math.isfinite(rate) or rate <= 0:
                raise WireError("CV quantum channel: ALICE_HELLO has a bad detection or symbol rate")
            self.quadratures = 1 if names[code] == "homodyne" else 2
            return AliceHello(names[code], rate)
        return self._parse_frame(body)

    def _parse_frame(self, body: bytearray) -> CvFrameMessage:
        if len(body) < _FRAME_HEAD.size:
            raise WireError("CV quantum channel: FRAME shorter than its head")
        frame_id, symbols, quadratures, lo_var, el_var = _FRAME_HEAD.unpack_from(body)
        if quadratures != self.quadratures or not 1 <= symbols <= self.max_symbols:
            raise WireError(f"CV quantum channel: FRAME of {symbols} symbols x {quadratures} quadratures refused")
        if len(body) != _FRAME_HEAD.size + symbols * (1 + 4 * quadratures):
            raise WireError("CV quantum channel: FRAME length does not match its symbol count")
        if not (math.isfinite(lo_var) and math.isfinite(el_var) and 0 <= el_var < lo_var):
            raise WireError("CV quantum channel: FRAME calibration variances are not valid")
        if self.last_frame_id is not None and frame_id <= self.last_frame_id:
            raise WireError(f"CV quantum channel: frame id {frame_id} not above {self.last_frame_id}")
        offset = _FRAME_HEAD.size
        quadrature = np.frombuffer(body, dtype=np.uint8, count=symbols, offset=offset).copy()
        volts = np.frombuffer(body, dtype="<f4", count=symbols * quadratures,
                              offset=offset + symbols).reshape(symbols, quadratures).astype(np.float64)
        if np.any(quadrature > (1 if quadratures == 1 else 0)):
            raise WireError("CV quantum channel: FRAME quadrature choices out of range")
        if not np.all(np.isfinite(volts)):
            raise WireError("CV quantum channel: FRAME holds non-finite values")
        self.last_frame_id = frame_id
        return CvFrameMessage(frame_id, lo_var, el_var, quadrature, volts)
