"""Sifting kernels (native/src/sift.c): slot checks, per-class counts, match and gather of sifted bits.

Layouts (see native/include/qkd_sift.h): Alice holds one state byte per slot (bit 0 value, bit 1
basis, bits 2..5 intensity class); Bob holds sorted uint64 slots and uint8 basis/outcome columns.
Sifted bits come out grouped by g = class * 2 + basis, each group starting on a word boundary.
Counts come out as an array of shape (n_classes, 2, 3): [class, basis, SENT | DETECTED | MATCHED].
"""
from __future__ import annotations

import numpy as np

from qkdd._native import ffi, lib
from qkdd.bindings import NativeBufferError, NativeProtocolError, NativeRangeError, as_words, check, ptr, wptr
from qkdd.bindings.bits import words_for_bits

MAX_CLASSES = int(lib.QKD_SIFT_MAX_CLASSES)
SENT, DETECTED, MATCHED = int(lib.QKD_SIFT_SENT), int(lib.QKD_SIFT_DETECTED), int(lib.QKD_SIFT_MATCHED)
NCOUNTS = int(lib.QKD_SIFT_NCOUNTS)
CLASS_SHIFT = int(lib.QKD_SIFT_STATE_CLASS_SHIFT)
MAX_VARINT_BYTES = int(lib.QKD_SIFT_MAX_VARINT_BYTES)
_FEATURES = lib.qkd_cpu_features()


def _u8(array: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 1:
        raise TypeError(f"{name} must be a 1-D numpy array of uint8")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return array


def _classes_ok(n_classes: int) -> None:
    if not 1 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"number of intensity classes must be in [1, {MAX_CLASSES}], got {n_classes}")


def check_slots(slots: np.ndarray, n_slots: int) -> None:
    """Raise unless slots are strictly increasing and below n_slots, naming the first bad one."""
    as_words(slots, "slots")
    bad = ffi.new("size_t *")
    code = lib.qkd_sift_check_slots(ptr("uint64_t *", slots), slots.size, n_slots, bad)
    if code == lib.QKD_ERANGE:
        raise NativeRangeError(f"slot {int(slots[bad[0]])} at index {bad[0]} is outside the frame of {n_slots} slots")
    if code == lib.QKD_EPROTO:
        i = bad[0]
        what = "duplicate" if slots[i] == slots[i - 1] else "unsorted"
        raise NativeProtocolError(f"slots must be strictly increasing: {what} slot {int(slots[i])} at index {i}")
    check(code, "check slots")


def pack_states(value: np.ndarray, basis: np.ndarray, intensity_class: np.ndarray, n_classes: int) -> np.ndarray:
    """Alice's state bytes (value | basis << 1 | class << 2) from three uint8 columns of one length, in one pass.
    NativeBufferError names the first slot whose value or basis is above 1 or whose class is >= n_classes (the
    rule broken, never the value)."""
    for array, name in ((value, "value"), (basis, "basis"), (intensity_class, "intensity_class")):
        _u8(array, name)
    if not value.size == basis.size == intensity_class.size:
        raise ValueError("value, basis and intensity class must have one length")
    _classes_ok(n_classes)
    out = np.empty(value.size, dtype=np.uint8)
    bad = ffi.new("size_t *")
    code = lib.qkd_sift_pack_states(ptr("uint8_t *", value), ptr("uint8_t *", basis), ptr("uint8_t *", intensity_class),
                                    value.size, n_classes, wptr("uint8_t *", out), out.size, bad)
    if code == lib.QKD_EINVAL:
        i = bad[0]
        what = "class" if intensity_class[i] >= n_classes else "value or basis"
        raise NativeBufferError(f"slot {i}: {what} out of range")
    check(code, "pack states")
    return out


def sent_counts(states: np.ndarray, n_classes: int, *, portable: bool = False) -> np.ndarray:
    """Pulses sent per [class, basis] (Alice's basis), shape (n_classes, 2), uint64."""
    _u8(states, "states")
    _classes_ok(n_classes)
    counts = np.zeros((n_classes, 2, NCOUNTS), dtype=np.uint64)
    bad = ffi.new("size_t *")
    code = lib.qkd_sift_sent_counts(ptr("uint8_t *", states), states.size, n_classes, wptr("uint64_t *", counts),
                                    counts.size, bad, 0 if portable else _FEATURES)
    if code == lib.QKD_EINVAL:
        # the byte itself holds a key bit: name the slot and the rule, never the value
        raise NativeBufferError(f"malformed state at slot {bad[0]} (expected value | basis << 1 | class << 2 "
                                f"with class < {n_classes} and bits 6-7 clear)")
    check(code, "sent counts")
    return counts[:, :, SENT].copy()


class Sifted:
    """One end's kernel output: match bits, classes, counts (n_classes, 2, 3), grouped key, group lengths."""

    def __init__(self, match: np.ndarray, classes: np.ndarray, counts: np.ndarray, key: np.ndarray,
                 group_bits: np.ndarray):
        self.match = match
        self.classes = classes
        self.counts = counts
        self.key = key
        self.group_bits = group_bits


def _outputs(count: int, n_classes: int):
    counts = np.zeros((n_classes, 2, NCOUNTS), dtype=np.uint64)
    key = np.empty(lib.qkd_sift_key_words(count, n_classes), dtype=np.uint64)
    group_bits = np.empty(2 * n_classes, dtype=np.uint64)
    scratch = np.empty(count, dtype=np.uint8)
    return counts, key, group_bits, scratch


def slot_code_bound(count: int) -> int:
    """The most bytes the varint stream of `count` slots can take (encode_slots; 0 if that overflows)."""
    return lib.qkd_sift_slot_code_bound(count)


def encode_slots(slots: np.ndarray, n_slots: int, *, prefix_bytes: int = 0) -> np.ndarray:
    """Bob's slots as the varint stream of qkd_sift.h (first slot, then gaps minus one), uint8; with
    `prefix_bytes`, after that many bytes left for the caller to fill (a message header)."""
    as_words(slots, "slots")
    bound = slot_code_bound(slots.size)
    if bound == 0 and slots.size:
        raise NativeBufferError(f"{slots.size} slots overflow the stream length")
    out = np.empty(prefix_bytes + bound, dtype=np.uint8)
    stream = out[prefix_bytes:]
    used, bad = ffi.new("size_t *"), ffi.new("size_t *")
    code = lib.qkd_sift_encode_slots(ptr("uint64_t *", slots), slots.size, n_slots, wptr("uint8_t *", stream),
                                     stream.size, used, bad)
    if code in (lib.QKD_ERANGE, lib.QKD_EPROTO):
        check_slots(slots, n_slots)  # raises the precise error
    check(code, "encode slots")
    return out[:prefix_bytes + used[0]]


def stream_equals(slots: np.ndarray, n_slots: int, code: np.ndarray) -> bool:
    """Whether `code` is exactly encode_slots(slots, n_slots), compared as it is encoded (no stream written);
    False also for slots that cannot be encoded."""
    as_words(slots, "slots")
    _u8(code, "code")
    return bool(lib.qkd_sift_stream_equals(ptr("uint64_t *", slots), slots.size, n_slots, ptr("uint8_t *", code),
                                           code.size))


def _stream_error(code: int, bad: int, count: int, n_slots: int) -> None:
    if code == lib.QKD_ERANGE:
        raise NativeRangeError(f"slot of detection {bad} is outside the frame of {n_slots} slots")
    if code == lib.QKD_EPROTO and bad >= count:
        raise NativeProtocolError(f"slot stream has bytes after the last of its {count} detections")
    if code == lib.QKD_EPROTO:
        raise NativeProtocolError(f"slot stream truncated or with an overlong varint at detection {bad}")


def decode_slots(code: np.ndarray, count: int, n_slots: int) -> np.ndarray:
    """The count slots of a varint stream, checked (see encode_slots)."""
    _u8(code, "code")
    slots = np.empty(count, dtype=np.uint64)
    bad = ffi.new("size_t *")
    rc = lib.qkd_sift_decode_slots(ptr("uint8_t *", code), code.size, count, n_slots, wptr("uint64_t *", slots),
                                   slots.size, bad)
    _stream_error(rc, bad[0], count, n_slots)
    check(rc, "decode slots")
    return slots


def check_slot_stream(code: np.ndarray, count: int, n_slots: int) -> None:
    """decode_slots' checks without the slots: raises as it does unless `code` holds exactly `count` slots below
    n_slots (qkd_sift_check_slot_stream)."""
    _u8(code, "code")
    bad = ffi.new("size_t *")
    rc = lib.qkd_sift_check_slot_stream(ptr("uint8_t *", code), code.size, count, n_slots, bad)
    _stream_error(rc, bad[0], count, n_slots)
    check(rc, "check slot stream")


def alice(states: np.ndarray, slot_code: np.ndarray, count: int, bob_basis: np.ndarray, n_classes: int, *,
          portable: bool = False) -> Sifted:
    """Alice's side: match Bob's detections (varint slot stream, bit-packed bases) against her states.

    `portable=True` forces the code path without AVX2/BMI2 (for tests; same result).
    """
    _u8(states, "states")
    _u8(slot_code, "slot_code")
    as_words(bob_basis, "bob_basis")
    _classes_ok(n_classes)
    if bob_basis.size != words_for_bits(count):
        raise NativeBufferError(f"{bob_basis.size} basis words for {count} detections")
    match = np.empty(words_for_bits(count), dtype=np.uint64)
    classes = np.empty(count, dtype=np.uint8)
    counts, key, group_bits, scratch = _outputs(count, n_classes)
    bad = ffi.new("size_t *")
    code = lib.qkd_sift_alice(ptr("uint8_t *", states), states.size, ptr("uint8_t *", slot_code), slot_code.size,
                              ptr("uint64_t *", bob_basis), bob_basis.size, count, n_classes,
                              wptr("uint64_t *", match), match.size, wptr("uint8_t *", classes), classes.size,
                              wptr("uint64_t *", counts), counts.size, wptr("uint64_t *", key), key.size,
                              wptr("uint64_t *", group_bits), group_bits.size, wptr("uint8_t *", scratch),
                              scratch.size, bad, _FEATURES if not portable else 0)
    _stream_error(code, bad[0], count, states.size)
    if code == lib.QKD_EINVAL:
        slot = int(decode_slots(slot_code, count, states.size)[bad[0]])
        raise NativeBufferError(f"malformed state at slot {slot} (class >= {n_classes} or bits 6-7 set)")
    check(code, "sift (alice)")
    return Sifted(match, classes, counts, key, group_bits)


def bob(basis: np.ndarray, outcome: np.ndarray, match: np.ndarray, classes: np.ndarray, n_classes: int, *,
        portable: bool = False) -> Sifted:
    """Bob's side: apply Alice's answer (match bits, class per detection) to his detections."""
    _u8(basis, "basis")
    _u8(outcome, "outcome")
    _u8(classes, "classes")
    as_words(match, "match")
    _classes_ok(n_classes)
    count = basis.size
    if outcome.size != count or classes.size != count:
        raise NativeBufferError(f"{count} bases, {outcome.size} outcomes and {classes.size} classes differ in length")
    if match.size != words_for_bits(count):
        raise NativeBufferError(f"{match.size} match words for {count} detections")
    counts, key, group_bits, scratch = _outputs(count, n_classes)
    bad = ffi.new("size_t *")
    code = lib.qkd_sift_bob(ptr("uint8_t *", basis), ptr("uint8_t *", outcome), count, ptr("uint64_t *", match),
                            match.size, ptr("uint8_t *", classes), n_classes, wptr("uint64_t *", counts), counts.size,
                            wptr("uint64_t *", key), key.size, wptr("uint64_t *", group_bits), group_bits.size,
                            wptr("uint8_t *", scratch), scratch.size, bad, _FEATURES if not portable else 0)
    if code == lib.QKD_EPROTO:
        raise NativeProtocolError(f"intensity class {int(classes[bad[0]])} of detection {bad[0]} "
                                  f"is not below {n_classes}")
    if code == lib.QKD_EINVAL:
        i = bad[0]
        what = "basis" if basis[i] > 1 else "outcome"  # a valid outcome is a key bit: never print it
        raise NativeBufferError(f"detection {i}: {what} must be 0 or 1")
    check(code, "sift (bob)")
    return Sifted(match, classes, counts, key, group_bits)
