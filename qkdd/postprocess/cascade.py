"""Cascade reconciliation as sans-IO protocol objects: Bob asks parity questions, Alice answers.

Theory of operation
-------------------
Bob holds the noisy copy of Alice's sifted key. He draws a 256-bit seed from the OS CSPRNG, picks a
schedule from the QBER estimate (cascade_schedules.py) and announces both in START. Both ends derive
the same shuffle of every pass from the seed. Alice answers START with the parity of every top-level
block of every pass at once (those parities are disclosed in every run anyway). From then on Bob
works pass by pass: every block whose parity differs from Alice's is binary-searched, all blocks in
parallel, every open search contributing one question to a single QUESTIONS message per round; each
error found is flipped and re-opens the blocks containing it in earlier passes (the cascade effect),
whose searches join the same rounds. When no question is left in the last pass Bob sends DONE with
his counts, which Alice checks against hers. The heavy work is in C (qkd_cascade.h); this module only
frames, checks and sequences messages.

Message layout (version 1, little-endian), identical in both directions::

    offset  size  field
    0       2     magic b"QC"
    2       1     version (1)
    3       1     type: 1 START, 2 PARITIES, 3 QUESTIONS, 4 DONE
    4       8     frame id
    12      4     sequence number: Bob numbers his messages 0, 1, 2, ...; Alice's PARITIES carries
                  the number of the message it answers
    16      4     payload length in bytes
    20      ...   payload
    START      u64 n_bits, 32-byte seed, u16 passes, then per pass u8 kind, u32 block bits
    PARITIES   u32 count, ceil(count/8) bytes of parity bits (bit i: byte i/8, bit i%8; padding zero)
    QUESTIONS  u32 count, count x (u8 pass, u32 start, u32 length): parity of [start, start+length)
               of that pass's order
    DONE       u64 disclosed bits, u64 corrected bits, u32 round trips (Bob's counts)

States and transitions (anything else raises CascadeStateError; a rejected message changes nothing)::

    role   state            event (message or call)   action                           next state
    Bob    IDLE             start()                   send START (seq 0)               AWAIT_PARITIES
    Bob    AWAIT_PARITIES   PARITIES seq == sent      correct; send QUESTIONS (seq+1)  AWAIT_PARITIES
                                                      or, no question left, DONE       DONE
    Alice  AWAIT_START      START seq 0               send PARITIES (all top blocks)   ANSWERING
    Alice  ANSWERING        QUESTIONS seq == next     send PARITIES (answers)          ANSWERING
    Alice  ANSWERING        DONE seq == next          check counts                     DONE
"""
from __future__ import annotations

import enum
import os
import struct

import numpy as np

from qkdd.bindings import NativeError
from qkdd.bindings.cascade import (ALICE, BOB, MAX_BITS, MAX_PASSES, PASS_KINDS, QUESTION_BYTES, SEED_BYTES,
                                   CascadeKernel, parities_bytes)
from qkdd.postprocess.cascade_schedules import schedule as make_schedule

MAGIC = b"QC"
VERSION = 1
HEADER = struct.Struct("<2sBBQII")
HEADER_BYTES = HEADER.size
_START_FIXED = struct.Struct(f"<Q{SEED_BYTES}sH")
_START_PASS = struct.Struct("<BI")
_DONE = struct.Struct("<QQI")
MAX_START_PAYLOAD_BYTES = _START_FIXED.size + MAX_PASSES * _START_PASS.size


class MessageType(enum.IntEnum):
    START = 1
    PARITIES = 2
    QUESTIONS = 3
    DONE = 4


class State(enum.Enum):
    IDLE = "IDLE"
    AWAIT_PARITIES = "AWAIT_PARITIES"
    AWAIT_START = "AWAIT_START"
    ANSWERING = "ANSWERING"
    DONE = "DONE"


class CascadeError(ValueError):
    """A Cascade message or call was refused; the protocol object is unchanged."""


class CascadeMessageError(CascadeError):
    """Malformed message: bad magic or version, truncated, oversized, inconsistent lengths."""


class CascadeFrameError(CascadeError):
    """The message belongs to another frame."""


class CascadeSequenceError(CascadeError):
    """Replayed, duplicated or out-of-order message."""


class CascadeStateError(CascadeError):
    """The message type or call is not legal in the current state."""


def encode(msg_type: MessageType, frame_id: int, seq: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, msg_type, frame_id, seq, len(payload)) + payload


_TYPES = {int(t): t for t in MessageType}


def decode_header(message: bytes, frame_id: int, limits: dict[MessageType, int],
                  end: "_End") -> tuple[MessageType, int, memoryview]:
    """Check the header of `message` against the types `end` expects now and their payload limits in
    bytes; return (type, sequence number, payload)."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise CascadeMessageError(f"Cascade message must be bytes, not {type(message).__name__}")
    if len(message) < HEADER_BYTES:
        raise CascadeMessageError(f"truncated Cascade message: {len(message)} bytes, header needs {HEADER_BYTES}")
    magic, version, msg_type, msg_frame, seq, length = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise CascadeMessageError("not a Cascade message (bad magic)")
    if version != VERSION:
        raise CascadeMessageError(f"Cascade message version {version}, this end speaks {VERSION}")
    if msg_type not in _TYPES:
        raise CascadeMessageError(f"unknown Cascade message type {msg_type}")
    msg_type = _TYPES[msg_type]
    if msg_frame != frame_id:
        raise CascadeFrameError(f"Cascade message for frame {msg_frame}, this is frame {frame_id}")
    if msg_type not in limits:
        raise end._illegal(f"a {msg_type.name} message")
    max_payload_bytes = limits[msg_type]
    if length > max_payload_bytes:
        raise CascadeMessageError(f"oversized Cascade {msg_type.name}: payload of {length} bytes, "
                                  f"at most {max_payload_bytes} allowed")
    if len(message) != HEADER_BYTES + length:
        raise CascadeMessageError(f"Cascade {msg_type.name} is {len(message)} bytes, header says "
                                  f"{HEADER_BYTES + length} (truncated or trailing data)")
    return msg_type, seq, memoryview(message)[HEADER_BYTES:]


def _check_key(key: np.ndarray, n_bits: int) -> None:
    if not isinstance(key, np.ndarray) or key.dtype != np.uint64 or key.ndim != 1:
        raise TypeError("key must be a 1-D numpy array of uint64 (bit-packed words)")
    if not 1 <= n_bits <= MAX_BITS:
        raise ValueError(f"Cascade frame of {n_bits} bits: must be 1 to {MAX_BITS}")
    if key.size != (n_bits + 63) // 64:
        raise ValueError(f"key holds {key.size} words, a {n_bits}-bit frame needs {(n_bits + 63) // 64}")


def _native(what: str, call, *args):
    try:
        return call(*args)
    except NativeError as exc:
        raise CascadeMessageError(f"Cascade {what} refused: {exc}") from None


class _End:
    """What Alice and Bob share: the frame, the kernel and the counters both report."""

    role = ""

    def __init__(self, frame_id: int, n_bits: int):
        if not 0 <= frame_id < 2 ** 64:
            raise ValueError("frame_id must fit in 64 bits")
        self.frame_id = frame_id
        self.n_bits = n_bits
        self.state: State
        self._kernel: CascadeKernel | None = None
        self.round_trips = 0

    def _where(self) -> str:
        return f"Cascade {self.role} in state {self.state.value}"

    def _illegal(self, what: str) -> CascadeStateError:
        return CascadeStateError(f"{self._where()}: {what} not allowed")

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    @property
    def disclosed_bits(self) -> int:
        return self._kernel.stats()["disclosed_bits"] if self._kernel else 0


class CascadeBob(_End):
    """Bob's end: owns the noisy key (corrected in place) and drives the protocol."""

    role = "Bob"

    def __init__(self, key: np.ndarray, n_bits: int, frame_id: int, qber_estimate: float,
                 schedule: str = "efficient", seed: bytes | None = None,
                 lookahead: tuple[int, int] | None = None):
        """`lookahead` = (few, levels): once at most `few` binary searches remain open, each asks for
        `levels` levels of its halving tree per round, trading some disclosed parities for fewer
        round trips in the tail of the cascade. None: one level, fewest disclosed bits."""
        _check_key(key, n_bits)
        if not key.flags.writeable or not key.flags.c_contiguous:
            raise ValueError("Bob's key must be a writable C-contiguous array (it is corrected in place)")
        super().__init__(frame_id, n_bits)
        self.passes = make_schedule(schedule, qber_estimate, n_bits)
        self.seed = os.urandom(SEED_BYTES) if seed is None else bytes(seed)
        self._kernel = CascadeKernel(BOB, key, n_bits, self.seed, self.passes)
        if lookahead is not None:
            self._kernel.bob_set_lookahead(*lookahead)
        self.key = key
        self.state = State.IDLE
        self._seq = 0
        self._limits = {MessageType.PARITIES: parities_bytes(self._kernel.top_blocks)}

    @property
    def corrected_bits(self) -> int:
        return self._kernel.stats()["corrected_bits"]

    def start(self) -> bytes:
        """The START message announcing frame length, seed and pass layout."""
        if self.state is not State.IDLE:
            raise self._illegal("start()")
        payload = _START_FIXED.pack(self.n_bits, self.seed, len(self.passes)) + b"".join(
            _START_PASS.pack(kind, block) for kind, block in self.passes)
        self.state = State.AWAIT_PARITIES
        return encode(MessageType.START, self.frame_id, 0, payload)

    def receive(self, message: bytes) -> list[bytes]:
        """Take Alice's PARITIES; return the next QUESTIONS, or DONE when the key is reconciled."""
        if self.state is not State.AWAIT_PARITIES:
            raise self._illegal("receiving a message")
        msg_type, seq, payload = decode_header(message, self.frame_id, self._limits, self)
        if seq != self._seq:
            kind = "replayed" if seq < self._seq else "out-of-order"
            raise CascadeSequenceError(f"{kind} PARITIES: sequence {seq}, expected {self._seq}")
        if self._seq == 0:
            _native("top-level parities", self._kernel.bob_set_top_parities, payload)
        else:
            _native("answers", self._kernel.bob_apply_answers, payload)
        self.round_trips += 1
        self._seq += 1
        questions = self._kernel.bob_next_questions()
        if questions is None:
            self.state = State.DONE
            stats = self._kernel.stats()
            done = _DONE.pack(stats["disclosed_bits"], stats["corrected_bits"], self.round_trips)
            return [encode(MessageType.DONE, self.frame_id, self._seq, done)]
        return [encode(MessageType.QUESTIONS, self.frame_id, self._seq, questions)]


class CascadeAlice(_End):
    """Alice's end: answers parity questions about her key, which she never changes."""

    role = "Alice"

    def __init__(self, key: np.ndarray, n_bits: int, frame_id: int):
        _check_key(key, n_bits)
        super().__init__(frame_id, n_bits)
        self.key = key
        self.state = State.AWAIT_START
        self._next_seq = 0
        self.corrected_bits = 0  # as reported by Bob in DONE

    def receive(self, message: bytes) -> list[bytes]:
        """Take START, QUESTIONS or DONE; return the PARITIES reply (nothing after DONE)."""
        if self.state is State.AWAIT_START:
            limits = {MessageType.START: MAX_START_PAYLOAD_BYTES}
            msg_type, seq, payload = decode_header(message, self.frame_id, limits, self)
            self._check_seq(seq, msg_type)
            return self._on_start(payload)
        if self.state is not State.ANSWERING:
            raise self._illegal("receiving a message")
        msg_type, seq, payload = decode_header(message, self.frame_id, self._limits, self)
        self._check_seq(seq, msg_type)
        if msg_type is MessageType.DONE:
            return self._on_done(payload)
        answers = _native("questions", self._kernel.alice_answer, payload)
        self._next_seq += 1
        self.round_trips += 1
        return [encode(MessageType.PARITIES, self.frame_id, seq, answers)]

    def _check_seq(self, seq: int, msg_type: MessageType) -> None:
        if seq != self._next_seq:
            kind = "replayed" if seq < self._next_seq else "out-of-order"
            raise CascadeSequenceError(f"{kind} {msg_type.name}: sequence {seq}, expected {self._next_seq}")

    def _on_start(self, payload: memoryview) -> list[bytes]:
        if len(payload) < _START_FIXED.size:
            raise CascadeMessageError(f"truncated START payload: {len(payload)} bytes")
        n_bits, seed, npasses = _START_FIXED.unpack_from(payload)
        if n_bits != self.n_bits:
            raise CascadeMessageError(f"START announces a {n_bits}-bit frame, Alice holds {self.n_bits} bits")
        if not 1 <= npasses <= MAX_PASSES:
            raise CascadeMessageError(f"START announces {npasses} passes, 1 to {MAX_PASSES} allowed")
        if len(payload) != _START_FIXED.size + npasses * _START_PASS.size:
            raise CascadeMessageError(f"START payload of {len(payload)} bytes does not hold {npasses} passes")
        passes = [_START_PASS.unpack_from(payload, _START_FIXED.size + i * _START_PASS.size)
                  for i in range(npasses)]
        for kind, block in passes:
            if kind not in PASS_KINDS:
                raise CascadeMessageError(f"START announces unknown pass kind {kind}")
        kernel = _native("START", CascadeKernel, ALICE, self.key, self.n_bits, seed, passes)
        parities = kernel.alice_top_parities()
        self._kernel = kernel
        self._limits = {MessageType.QUESTIONS: kernel.question_capacity_bytes, MessageType.DONE: _DONE.size}
        self.passes = passes
        self.state = State.ANSWERING
        self._next_seq = 1
        self.round_trips = 1
        return [encode(MessageType.PARITIES, self.frame_id, 0, parities)]

    def _on_done(self, payload: memoryview) -> list[bytes]:
        if len(payload) != _DONE.size:
            raise CascadeMessageError(f"DONE payload of {len(payload)} bytes, expected {_DONE.size}")
        disclosed, corrected, round_trips = _DONE.unpack(payload)
        mine = self._kernel.stats()["disclosed_bits"]
        if disclosed != mine or round_trips != self.round_trips:
            raise CascadeMessageError(f"DONE reports {disclosed} disclosed bits in {round_trips} round trips; "
                                      f"Alice counted {mine} in {self.round_trips}")
        self.corrected_bits = corrected
        self.state = State.DONE
        return []
