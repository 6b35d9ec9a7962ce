"""Sifting for decoy-state BB84: both ends keep the detections measured in Alice's basis.

Theory of operation. Bob announces which slots of the frame produced a detection and in which
basis he measured (never the outcome). Alice answers, per detection, whether the bases matched and
the intensity class of the pulse (in decoy BB84 the intensities are revealed only after detection,
Lo, Ma, Chen, PRL 94, 230504 (2005)), together with how many pulses of each class and basis she
sent. For classes she marks as revealed (decoys used only for estimation) she also discloses her
sifted bits; Bob counts the errors there and reports them. Both ends then hold the same sifted index
sets and the same count table (per intensity class and basis: pulses sent, detections, basis-matched
detections, errors where revealed), which is what decoy-state estimation needs.

States and transitions (one object per frame and end):

    role   state            event               next             sends
    bob    START            start()             AWAIT_ANSWER     DETECTIONS
    bob    AWAIT_ANSWER     receive(ANSWER)     DONE             REPORT
    alice  AWAIT_DETECTIONS receive(DETECTIONS) AWAIT_REPORT     ANSWER
    alice  AWAIT_REPORT     receive(REPORT)     DONE             -
    (any)  (any)            bad peer message    FAILED           -  (the frame is discarded)
Anything else raises PeerMessageError (peer message) or SiftingStateError (local call).

Messages (wire.py header, then little-endian payload; "words" are uint64, bit i of a packed
array in word i // 64 at position i % 64):
    DETECTIONS (kind 0x11, Bob):  n_slots u64 | count u64 | code_bytes u64 | slot stream, code_bytes
                                  bytes zero-padded to a multiple of 8 | bases ceil(count/64) words
        The slot stream (native/include/qkd_sift.h) is LEB128 varints: the first slot, then each
        gap to the previous slot minus one, so slots are strictly increasing by construction; a
        slot past n_slots, a truncated stream, an overlong varint or trailing bytes are refused.
        Typical detections cost 1 to 3 bytes instead of 8.
    ANSWER     (kind 0x12, Alice): count u64 | n_classes u8 | 7 zero bytes | revealed-class mask u64 |
                                  sent n_classes*2 x u64 ([class][basis]) | match ceil(count/64) words |
                                  class per detection, count bytes, zero-padded to a multiple of 8 |
                                  for each revealed class, for basis 0 then 1: its sifted bit count u64
                                  and her sifted bits in ceil(bits/64) words
    REPORT     (kind 0x13, Bob):  n_classes u8 | 7 zero bytes | errors n_classes*2 x u64 ([class][basis],
                                  zero for classes not revealed)
Unused bits past the end of any packed array must be zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qkdd.bindings import NativeBufferError, NativeProtocolError, NativeRangeError, as_words
from qkdd.bindings import bits
from qkdd.bindings import sift as kernel
from qkdd.bindings.bits import words_for_bits
from qkdd.postprocess import wire
from qkdd.postprocess.wire import PeerMessageError

DETECTIONS, ANSWER, REPORT = 0x11, 0x12, 0x13
KIND_NAMES = {DETECTIONS: "DETECTIONS", ANSWER: "ANSWER", REPORT: "REPORT"}
BASIS_Z, BASIS_X = 0, 1
MAX_CLASSES = kernel.MAX_CLASSES

START, AWAIT_ANSWER, AWAIT_DETECTIONS, AWAIT_REPORT, DONE, FAILED = (
    "START", "AWAIT_ANSWER", "AWAIT_DETECTIONS", "AWAIT_REPORT", "DONE", "FAILED")
ALICE, BOB = "alice", "bob"
TRANSITIONS = {
    (BOB, START, "start"): AWAIT_ANSWER,
    (BOB, AWAIT_ANSWER, ANSWER): DONE,
    (ALICE, AWAIT_DETECTIONS, DETECTIONS): AWAIT_REPORT,
    (ALICE, AWAIT_REPORT, REPORT): DONE,
}
_EXPECTED = {AWAIT_ANSWER: ANSWER, AWAIT_DETECTIONS: DETECTIONS, AWAIT_REPORT: REPORT}


class SiftingStateError(RuntimeError):
    """A local call that the current state does not allow."""


def _le_words(view) -> np.ndarray:
    """uint64 little-endian words from a buffer, zero-copy when aligned."""
    words = np.frombuffer(view, dtype="<u8")
    if not words.flags.aligned or words.dtype != np.uint64:
        words = words.astype(np.uint64)
    return words


def _tail_clear(words: np.ndarray, n_bits: int) -> bool:
    return n_bits % 64 == 0 or words.size == 0 or int(words[-1]) >> (n_bits % 64) == 0


@dataclass(frozen=True)
class AliceRecords:
    """Alice's prepared states for one frame: one byte per slot (value | basis << 1 | class << 2)."""

    states: np.ndarray
    n_classes: int

    @classmethod
    def from_columns(cls, value: np.ndarray, basis: np.ndarray, intensity_class: np.ndarray,
                     n_classes: int) -> "AliceRecords":
        """Pack per-slot columns (0/1, 0/1, 0..n_classes-1) into state bytes. uint8 columns (a device's) in one
        pass of the C kernel, without the frame-sized temporaries of the shifts and ors; others, and columns it
        refuses (for the precise error), the plain way."""
        value, basis, intensity_class = (np.asarray(a) for a in (value, basis, intensity_class))
        if not value.shape == basis.shape == intensity_class.shape or value.ndim != 1:
            raise ValueError("value, basis and intensity class must be 1-D arrays of one length")
        if all(a.dtype == np.uint8 for a in (value, basis, intensity_class)) and 1 <= n_classes <= MAX_CLASSES:
            try:
                return cls(kernel.pack_states(*(np.ascontiguousarray(a) for a in (value, basis, intensity_class)),
                                              n_classes), n_classes)
            except NativeBufferError:
                pass
        if value.size and (value.max() > 1 or basis.max() > 1 or value.min() < 0 or basis.min() < 0):
            raise ValueError("value and basis must be 0 or 1")
        if intensity_class.size and not (0 <= intensity_class.min() and intensity_class.max() < n_classes):
            raise ValueError(f"intensity classes must be in [0, {n_classes})")
        states = (value.astype(np.uint8) | (basis.astype(np.uint8) << 1)
                  | (intensity_class.astype(np.uint8) << kernel.CLASS_SHIFT))
        return cls(np.ascontiguousarray(states, dtype=np.uint8), n_classes)

    @property
    def n_slots(self) -> int:
        return self.states.size


@dataclass(frozen=True)
class BobDetections:
    """Bob's detections in one frame of n_slots slots: sorted slots, basis and outcome columns."""

    n_slots: int
    slots: np.ndarray | None    # uint64, strictly increasing, < n_slots; None: every slot, 0 .. n_slots - 1
    basis: np.ndarray    # uint8, 0 = Z, 1 = X
    outcome: np.ndarray  # uint8, 0/1

    def __post_init__(self):
        if self.slots is not None:
            as_words(self.slots, "slots")
        shape = (self.n_slots,) if self.slots is None else self.slots.shape
        for name in ("basis", "outcome"):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.shape != shape:
                raise ValueError(f"{name} must be a uint8 array with one entry per slot")
        if self.slots is not None:
            kernel.check_slots(self.slots, self.n_slots)

    @classmethod
    def every_slot(cls, basis: np.ndarray, outcome: np.ndarray) -> "BobDetections":
        """A detection in each slot (a frame numbered by its detections, as the link sifts it): no slot array
        is built; the slot stream is then one zero byte a detection (slot 0, then gaps of one)."""
        return cls(int(basis.size), None, basis, outcome)

    @property
    def count(self) -> int:
        return self.n_slots if self.slots is None else int(self.slots.size)

    def slot_array(self) -> np.ndarray:
        return np.arange(self.n_slots, dtype=np.uint64) if self.slots is None else self.slots

    def slot_code(self) -> np.ndarray:
        """The varint slot stream of qkd_sift.h."""
        if self.slots is None:
            return np.zeros(self.n_slots, dtype=np.uint8)     # first slot 0, then gaps of one (varint 0 each)
        return kernel.encode_slots(self.slots, self.n_slots)


@dataclass(frozen=True)
class SiftCounts:
    """Per [intensity class, basis]: pulses sent (Alice's basis), detections (Bob's basis),
    basis-matched detections, and errors among them for revealed classes (zero elsewhere)."""

    sent: np.ndarray
    detected: np.ndarray
    matched: np.ndarray
    errors: np.ndarray
    revealed_classes: tuple[int, ...]


class SiftResult:
    """What one end holds after sifting: its own sifted bits per group, and the shared tables."""

    def __init__(self, role: str, sifted: kernel.Sifted, slots, bob_basis: np.ndarray,
                 counts: SiftCounts, n_classes: int):
        """`slots` and `bob_basis`: the detected slots and Bob's bases (0/1 per detection), or callables that
        build them when first asked for (sifted_slots)."""
        self.role = role
        self.counts = counts
        self.n_classes = n_classes
        self._sifted = sifted
        self._slots = slots
        self._bob_basis = bob_basis
        offsets = np.concatenate([[0], np.cumsum([words_for_bits(int(b)) for b in sifted.group_bits])])
        self._offsets = offsets.astype(int)

    def key_bits(self, intensity_class: int, basis: int) -> tuple[np.ndarray, int]:
        """This end's sifted bits of one class and basis, in slot order: (packed words, bit count)."""
        group = self._group(intensity_class, basis)
        words = self._sifted.key[self._offsets[group]:self._offsets[group + 1]].copy()
        return words, int(self._sifted.group_bits[group])

    def sifted_slots(self, intensity_class: int, basis: int) -> np.ndarray:
        """Slots of the sifted bits of one class and basis (identical on both ends)."""
        self._group(intensity_class, basis)
        if callable(self._slots):
            self._slots = self._slots()
        count = self._slots.size
        if callable(self._bob_basis):
            self._bob_basis = self._bob_basis()
        match = np.unpackbits(self._sifted.match.view(np.uint8), bitorder="little", count=count).astype(bool)
        keep = match & (self._sifted.classes == intensity_class) & (self._bob_basis == basis)
        return self._slots[keep]

    def _group(self, intensity_class: int, basis: int) -> int:
        if not 0 <= intensity_class < self.n_classes or basis not in (BASIS_Z, BASIS_X):
            raise ValueError(f"no group for class {intensity_class}, basis {basis}")
        return 2 * intensity_class + basis


class Sifting(wire.FrameExchange):
    """One end of sifting of one frame. Alice is built with AliceRecords, Bob with BobDetections."""

    def __init__(self, role: str, frame_id: int, records: AliceRecords | BobDetections, n_classes: int,
                 revealed_classes: tuple[int, ...] = (), *, message_parts: bool = False):
        """`message_parts`: DETECTIONS and ANSWER returned as the tuple of their buffers (wire.message_parts) for a
        caller that puts them into a record of its own (the link pipeline), not joined into bytes first: each of
        a frame's size, copied once instead of twice."""
        if role == ALICE and not isinstance(records, AliceRecords):
            raise TypeError("alice needs AliceRecords")
        if role == BOB and not isinstance(records, BobDetections):
            raise TypeError("bob needs BobDetections")
        if role not in (ALICE, BOB):
            raise ValueError(f"role must be {ALICE!r} or {BOB!r}")
        if not 1 <= n_classes <= MAX_CLASSES:
            raise ValueError(f"n_classes must be in [1, {MAX_CLASSES}]")
        if any(not 0 <= c < n_classes for c in revealed_classes):
            raise ValueError("revealed classes must be intensity classes of this frame")
        if role == ALICE and records.n_classes != n_classes:
            raise ValueError("records and exchange disagree on the number of intensity classes")
        self.role = role
        self.state = START if role == BOB else AWAIT_DETECTIONS
        self._records = records
        self._n_classes = n_classes
        self._revealed = tuple(sorted(set(revealed_classes)))
        self._seq = wire.Sequencer(frame_id)
        self._failure = ""
        self._sent_seq = 0
        self._result: SiftResult | None = None
        self._pending = None
        self._message_parts = message_parts

    @property
    def frame_id(self) -> int:
        return self._seq.frame_id

    @property
    def result(self) -> SiftResult:
        if self._result is None:
            raise SiftingStateError(f"no result yet (state {self.state})")
        return self._result

    # Bob -------------------------------------------------------------------------------------
    def start(self) -> list[bytes]:
        """Bob: announce detected slots and bases."""
        self._advance("start")
        det = self._records
        count = det.count
        bases = np.zeros(words_for_bits(count), dtype=np.uint64)
        packed = np.packbits(det.basis, bitorder="little")
        bases.view(np.uint8)[:packed.size] = packed
        code = det.slot_code()
        header = np.array([det.n_slots, count, code.size], dtype="<u8")
        return [self._send(DETECTIONS, [header, code, bytes(-code.size % 8), bases], self._message_parts)]

    def _on_answer(self, payload) -> list[bytes]:
        det = self._records
        count = det.count
        reader = wire.Reader(payload, "ANSWER")
        if reader.u64() != count:
            raise PeerMessageError(f"ANSWER is for a different number of detections than the {count} announced")
        n_classes = reader.u8()
        if bytes(reader.take(7)) != bytes(7):
            raise PeerMessageError("ANSWER: reserved bytes not zero")
        if n_classes != self._n_classes:
            raise PeerMessageError(f"ANSWER has {n_classes} intensity classes, this end expects {self._n_classes}")
        mask = reader.u64()
        if mask >> n_classes:
            raise PeerMessageError("ANSWER reveals an intensity class that does not exist")
        revealed = tuple(c for c in range(n_classes) if mask >> c & 1)
        sent = _le_words(reader.words(2 * n_classes)).reshape(n_classes, 2)
        match = _le_words(reader.words(words_for_bits(count)))
        if not _tail_clear(match, count):
            raise PeerMessageError("ANSWER: match bits set past the last detection")
        classes_bytes = reader.take(count + (-count) % 8)
        if any(bytes(classes_bytes[count:])):
            raise PeerMessageError("ANSWER: class padding not zero")
        classes = np.frombuffer(classes_bytes[:count], dtype=np.uint8)
        try:
            sifted = kernel.bob(det.basis, det.outcome, match, classes, n_classes)
        except NativeProtocolError as exc:  # a class out of range in Alice's answer
            raise PeerMessageError(f"ANSWER: {exc}") from None
        errors = np.zeros((n_classes, 2), dtype=np.uint64)
        offsets = np.concatenate([[0], np.cumsum([words_for_bits(int(b)) for b in sifted.group_bits])]).astype(int)
        for c in revealed:
            for basis in (BASIS_Z, BASIS_X):
                g = 2 * c + basis
                n_bits = reader.u64()
                if n_bits != int(sifted.group_bits[g]):
                    raise PeerMessageError(f"ANSWER: revealed class {c} basis {basis} has {n_bits} bits, "
                                           f"the match bits give {int(sifted.group_bits[g])}")
                alice_bits = _le_words(reader.words(words_for_bits(n_bits)))
                if not _tail_clear(alice_bits, n_bits):
                    raise PeerMessageError("ANSWER: revealed bits set past their length")
                own = sifted.key[offsets[g]:offsets[g + 1]]
                errors[c, basis] = bits.popcount(alice_bits ^ own)
        reader.finish()
        self._advance(ANSWER)
        counts = SiftCounts(sent=sent.astype(np.uint64), detected=sifted.counts[:, :, kernel.DETECTED].copy(),
                            matched=sifted.counts[:, :, kernel.MATCHED].copy(), errors=errors,
                            revealed_classes=revealed)
        bases = self._records.basis
        self._result = SiftResult(BOB, sifted, det.slot_array, bases, counts, n_classes)
        report = bytes([n_classes]) + bytes(7) + errors.astype("<u8").tobytes()
        return [self._send(REPORT, [report])]

    # Alice -----------------------------------------------------------------------------------
    def _on_detections(self, payload) -> list[bytes]:
        records = self._records
        reader = wire.Reader(payload, "DETECTIONS")
        n_slots, count, code_bytes = reader.u64(), reader.u64(), reader.u64()
        if n_slots != records.n_slots:
            raise PeerMessageError(f"DETECTIONS for a frame of {n_slots} slots, this frame has {records.n_slots}")
        if count > n_slots:
            raise PeerMessageError(f"DETECTIONS: {count} detections in {n_slots} slots")
        if code_bytes < count:
            raise PeerMessageError(f"DETECTIONS: {code_bytes} stream bytes cannot hold {count} slots")
        code = np.frombuffer(reader.take(code_bytes), dtype=np.uint8)
        if any(bytes(reader.take(-code_bytes % 8))):
            raise PeerMessageError("DETECTIONS: slot stream padding not zero")
        bases = _le_words(reader.words(words_for_bits(count)))
        reader.finish()
        if not _tail_clear(bases, count):
            raise PeerMessageError("DETECTIONS: basis bits set past the last detection")
        try:
            sifted = kernel.alice(records.states, code, count, bases, self._n_classes)  # checks the stream too
        except (NativeRangeError, NativeProtocolError) as exc:
            raise PeerMessageError(f"DETECTIONS: {exc}") from None
        sent = kernel.sent_counts(records.states, self._n_classes)
        self._advance(DETECTIONS)
        mask = sum(1 << c for c in self._revealed)
        parts = [np.array([count], dtype="<u8"), bytes([self._n_classes]) + bytes(7),
                 np.array([mask], dtype="<u8"), sent.astype("<u8"), sifted.match, sifted.classes, bytes(-count % 8)]
        offsets = np.concatenate([[0], np.cumsum([words_for_bits(int(b)) for b in sifted.group_bits])]).astype(int)
        for c in self._revealed:
            for basis in (BASIS_Z, BASIS_X):
                g = 2 * c + basis
                parts.append(np.array([sifted.group_bits[g]], dtype="<u8"))
                parts.append(sifted.key[offsets[g]:offsets[g + 1]])
        self._pending = (sifted, lambda: kernel.decode_slots(code, count, n_slots),
                         lambda: np.unpackbits(bases.view(np.uint8), bitorder="little", count=count), sent)
        return [self._send(ANSWER, parts, self._message_parts)]

    def _on_report(self, payload) -> list[bytes]:
        reader = wire.Reader(payload, "REPORT")
        n_classes = reader.u8()
        if bytes(reader.take(7)) != bytes(7) or n_classes != self._n_classes:
            raise PeerMessageError(f"REPORT: malformed header or {n_classes} classes, expected {self._n_classes}")
        errors = _le_words(reader.words(2 * n_classes)).reshape(n_classes, 2).astype(np.uint64)
        reader.finish()
        sifted, slots, bob_basis, sent = self._pending
        for c in range(n_classes):
            for basis in (BASIS_Z, BASIS_X):
                if c not in self._revealed and errors[c, basis]:
                    raise PeerMessageError(f"REPORT: errors for class {c}, which was not revealed")
                if errors[c, basis] > sifted.counts[c, basis, kernel.MATCHED]:
                    raise PeerMessageError(f"REPORT: more errors than sifted bits in class {c} basis {basis}")
        self._advance(REPORT)
        counts = SiftCounts(sent=sent, detected=sifted.counts[:, :, kernel.DETECTED].copy(),
                            matched=sifted.counts[:, :, kernel.MATCHED].copy(), errors=errors,
                            revealed_classes=self._revealed)
        self._result = SiftResult(ALICE, sifted, slots, bob_basis, counts, self._n_classes)
        self._pending = None
        return []

    # common ----------------------------------------------------------------------------------
    def _receive(self, message: bytes) -> list[bytes]:
        header, payload = wire.decode(message, max_payload_bytes=self._max_payload_bytes())
        self._seq.accept(header, _EXPECTED.get(self.state), KIND_NAMES, self.state)
        handler = {ANSWER: self._on_answer, DETECTIONS: self._on_detections, REPORT: self._on_report}[header.kind]
        return handler(payload)

    def _max_payload_bytes(self) -> int:
        if self.role == ALICE:
            n = self._records.n_slots
            return 24 + 8 * words_for_bits(kernel.MAX_VARINT_BYTES * n) + 8 * words_for_bits(n)
        count = self._records.count
        k = self._n_classes
        return 24 + 16 * k + 8 * words_for_bits(count) + count + 8 + 2 * k * 8 + 8 * (words_for_bits(count) + 2 * k)

    def _advance(self, event) -> None:
        next_state = TRANSITIONS.get((self.role, self.state, event))
        if next_state is None:
            raise SiftingStateError(f"{event}() not allowed for {self.role} in state {self.state}")
        self.state = next_state

    def _send(self, kind: int, parts: list, as_parts: bool = False):
        encode = wire.message_parts if as_parts else wire.encode_parts
        message = encode(kind, self.frame_id, self._sent_seq, parts)
        self._sent_seq += 1
        return message
