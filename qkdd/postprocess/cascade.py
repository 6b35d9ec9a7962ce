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
whose searches join the same rounds. Every parity Alice reveals is kept, so later searches start
from the smallest revealed sub-block that is known to hold an odd number of errors. When no question
is left in the last pass Bob sends DONE with his counts, which Alice checks against hers. Optional
BICONF rounds (`biconf_rounds`, off by default) are extra HALVES passes after the schedule's own,
announced in the same START and searched like any pass (see cascade_schedules.py). Alice
answers any well-formed question but refuses to disclose more than a cap per frame. The heavy work
is in C (qkd_cascade.h); this module only frames, checks and sequences messages.

Messages use the post-processing header of wire.py (magic b"QKPP", version 1, kind, frame id,
sequence number, payload length; 24 bytes, little-endian). Cascade's kinds are 0x41 START,
0x42 PARITIES, 0x43 QUESTIONS, 0x44 DONE. Bob numbers his messages 0, 1, 2, ...; Alice's PARITIES
carries the number of the message it answers. Payloads (little-endian)::

    START      u64 n_bits, 32-byte seed, u16 passes, then per pass u8 kind, u32 block bits
    PARITIES   u32 count, ceil(count/8) bytes of parity bits (bit i: byte i/8, bit i%8; padding zero)
    QUESTIONS  u32 count, count x (u8 pass, u32 start, u32 length): parity of [start, start+length)
               of that pass's order
    DONE       u64 disclosed bits, u64 corrected bits (at most n_bits), u32 round trips (Bob's counts)

States and transitions (anything else raises CascadeStateError; a rejected message changes nothing,
except that answers which contradict earlier ones fail Bob's frame for good)::

    role   state            event (message or call)   action                           next state
    Bob    IDLE             start()                   send START (seq 0)               AWAIT_PARITIES
    Bob    AWAIT_PARITIES   PARITIES seq == sent      correct; send QUESTIONS (seq+1)  AWAIT_PARITIES
                                                      or, no question left, DONE       DONE
                                                      or, parities contradict: raise   FAILED
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
from qkdd.bindings.cascade import (ALICE, BOB, MAX_BITS, MAX_PASSES, PASS_KINDS, SEED_BYTES,
                                   CascadeKernel, parities_bytes)
from qkdd.postprocess import wire
from qkdd.postprocess.cascade_schedules import schedule as make_schedule
from qkdd.postprocess.wire import PeerMessageError

HEADER_BYTES = wire.HEADER_BYTES
_START_FIXED = struct.Struct(f"<Q{SEED_BYTES}sH")
_START_PASS = struct.Struct("<BI")
_DONE = struct.Struct("<QQI")
MAX_START_PAYLOAD_BYTES = _START_FIXED.size + MAX_PASSES * _START_PASS.size


class MessageType(enum.IntEnum):
    START = 0x41
    PARITIES = 0x42
    QUESTIONS = 0x43
    DONE = 0x44


class State(enum.Enum):
    IDLE = "IDLE"
    AWAIT_PARITIES = "AWAIT_PARITIES"
    AWAIT_START = "AWAIT_START"
    ANSWERING = "ANSWERING"
    DONE = "DONE"
    FAILED = "FAILED"


class CascadeError(PeerMessageError):
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
    return wire.encode(msg_type, frame_id, seq, payload)


_TYPES = {int(t): t for t in MessageType}


def decode_header(message: bytes, frame_id: int, limits: dict[MessageType, int],
                  end: "_End") -> tuple[MessageType, int, memoryview]:
    """Check `message` against the kinds `end` expects now (and their payload limits in bytes);
    return (type, sequence number, payload)."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise CascadeMessageError(f"Cascade message must be bytes, not {type(message).__name__}")
    try:
        header, payload = wire.decode(message, max_payload_bytes=max(limits.values()))
    except PeerMessageError as exc:
        raise CascadeMessageError(f"Cascade message refused: {exc}") from None
    msg_type = _TYPES.get(header.kind)
    if msg_type is None:
        raise CascadeMessageError(f"unknown Cascade message kind {header.kind:#x}")
    if header.frame_id != frame_id:
        raise CascadeFrameError(f"Cascade message for frame {header.frame_id}, this is frame {frame_id}")
    if msg_type not in limits:
        raise end._illegal(f"a {msg_type.name} message")
    if header.payload_bytes > limits[msg_type]:
        raise CascadeMessageError(f"oversized Cascade {msg_type.name}: payload of {header.payload_bytes} "
                                  f"bytes, at most {limits[msg_type]} allowed")
    return msg_type, header.seq, payload


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
                 lookahead: tuple[int, int] | None = None, biconf_rounds: int = 0):
        """`lookahead` = (few, levels): once at most `few` binary searches remain open, each asks for
        `levels` levels of its halving tree per round, trading some disclosed parities for fewer
        round trips in the tail of the cascade. None: one level, fewest disclosed bits.
        `biconf_rounds`: BICONF rounds after the schedule's passes (cascade_schedules.py); 0, the
        default, turns BICONF off."""
        _check_key(key, n_bits)
        if not key.flags.writeable or not key.flags.c_contiguous:
            raise ValueError("Bob's key must be a writable C-contiguous array (it is corrected in place)")
        super().__init__(frame_id, n_bits)
        self.passes = make_schedule(schedule, qber_estimate, n_bits, biconf_rounds)
        self.biconf_rounds = biconf_rounds
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
        try:
            questions = self._kernel.bob_next_questions()
        except NativeError:
            self.state = State.FAILED
            raise CascadeMessageError("Alice's parities contradict each other (a bit would be corrected twice): "
                                      "frame lost") from None
        if questions is None:
            self.state = State.DONE
            stats = self._kernel.stats()
            done = _DONE.pack(stats["disclosed_bits"], stats["corrected_bits"], self.round_trips)
            return [encode(MessageType.DONE, self.frame_id, self._seq, done)]
        return [encode(MessageType.QUESTIONS, self.frame_id, self._seq, questions)]


class CascadeAlice(_End):
    """Alice's end: answers parity questions about her key, which she never changes."""

    role = "Alice"

    def __init__(self, key: np.ndarray, n_bits: int, frame_id: int, max_disclosed_bits: int | None = None):
        """`max_disclosed_bits` caps the parities Alice reveals in this frame; a START or QUESTIONS that
        would exceed it is refused. The default, 3/4 of the frame, is above what Cascade needs at any
        QBER that still leaves a key (about 0.6 n at 11 %, where h(Q) = 1/2) and stops a peer from
        asking for the whole key parity by parity."""
        _check_key(key, n_bits)
        super().__init__(frame_id, n_bits)
        self.max_disclosed_bits = 3 * n_bits // 4 if max_disclosed_bits is None else max_disclosed_bits
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
        if len(payload) >= 4:
            asked = int.from_bytes(payload[:4], "little")
            disclosed = self._kernel.stats()["disclosed_bits"]
            if disclosed + asked > self.max_disclosed_bits:
                raise CascadeMessageError(f"QUESTIONS for {asked} parities would disclose {disclosed + asked} bits, "
                                          f"more than the {self.max_disclosed_bits} allowed in this frame")
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
        if kernel.top_blocks > self.max_disclosed_bits:
            raise CascadeMessageError(f"START asks for {kernel.top_blocks} block parities, more than the "
                                      f"{self.max_disclosed_bits} bits Alice may disclose in this frame")
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
        if corrected > self.n_bits:
            raise CascadeMessageError(f"DONE reports {corrected} corrected bits in a {self.n_bits}-bit frame")
        self.corrected_bits = corrected
        self.state = State.DONE
        return []
