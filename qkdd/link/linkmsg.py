"""The link pipeline's own small messages (parameter estimation, key ids, abort) and key-id derivation.

Layouts (little-endian, inside an envelope part; see envelope.py):

    SLOTS     u64 count | u8 width (4 or 8) | 7 zero bytes | count gaps of `width` bytes: the first slot,
              then the differences (slot numbers strictly increasing); or width 1 (SLOT_STREAM, what this
              version sends): the varint stream of qkd_sift.h (first slot, then gaps minus one; about one
              byte a detection instead of four, coded and checked in C off the GIL; decoders since this
              version read all three widths)
    REVEAL    (ESTIMATE step, Alice) 6 x f64 decoy settings (mu signal, decoy, vacuum; p signal, decoy;
              q_x) | u64 pulses sent | f64 eps_sec | f64 eps_cor (both in [MIN_EPS, 1)) | then per
              intensity class (signal, decoy, vacuum): u64 bit count | ceil(count/64) words of her sifted
              test-basis (Z) bits
    ERRORS    (ESTIMATE step, Bob) 3 x u64 test-basis errors per intensity class
    KEYS      32-byte key-id seed | u32 key count | u32 bits per key | f64 expiry time of the frame's keys
              (Unix seconds on Alice's clock: both ends store this one value; Bob bounds it by his own clock)
    ABORT     u8 reason code | u16 text length | UTF-8 text (a short sentence, never key material)
    COMMIT    empty
"""
from __future__ import annotations

import enum
import hashlib
import math
import struct
import uuid

import numpy as np

from qkdd.bindings import NativeError
from qkdd.bindings import sift as sift_kernel
from qkdd.bindings.bits import words_for_bits
from qkdd.protocols.bb84_finite import DecoySettings

CLASSES = 3
KEY_ID_SEED_BYTES = 32
_SETTINGS = struct.Struct("<6dQdd")
_KEYS = struct.Struct(f"<{KEY_ID_SEED_BYTES}sIId")
_ABORT = struct.Struct("<BH")
MAX_ABORT_TEXT_BYTES = 400
KEY_ID_LABEL = b"qkdd/key-ids\x00"
# The smallest eps_sec and eps_cor a REVEAL may announce: verification's at most 4 tags of 64 bits reach an
# eps_cor of ((2^24 + 2) / 2^64)^4 ~ 7e-49 on a frame of 2^30 bits, and the finite-key analysis stays in range.
MIN_EPS = 1e-40


class LinkMessageError(ValueError):
    """A link pipeline message is malformed."""


class AbortReason(enum.IntEnum):
    PROTOCOL = 1          # a peer message was refused
    QBER = 2              # the QBER gate refused the frame
    ESTIMATION = 3        # decoy/finite-key analysis aborts (no single photons, phase error, l <= 0)
    VERIFICATION = 4      # the corrected keys differ
    NO_KEY = 5            # too short for one key
    UNKNOWN_FRAME = 6     # this end has no such frame (dropped, restarted)
    SHUTDOWN = 7
    STORE = 8             # this end's key store cannot take the frame's keys (at capacity, or failing)
    AUTH = 9              # the transcript's Wegman-Carter tag does not match (a message was altered)
    AUTH_POOL = 10        # the authentication pool is dry: the link halts


def _words(view, n_words: int, offset: int, what: str) -> tuple[np.ndarray, int]:
    end = offset + 8 * n_words
    if end > len(view):
        raise LinkMessageError(f"{what}: truncated")
    return np.frombuffer(view[offset:end], dtype="<u8").astype(np.uint64), end


SLOT_STREAM = 1                 # SLOTS width code of the varint stream
_SLOTS_HEAD = struct.Struct("<QB7x")    # SLOTS: detections u64, width u8, 7 zero bytes
_NO_SLOT_BOUND = 2 ** 64 - 1    # the stream's slot bound: any u64 below it (strict increase is what is checked)


def encode_slots(slots: np.ndarray) -> bytes:
    """Slot numbers (strictly increasing) as the varint stream (SLOT_STREAM)."""
    return bytes(slots_part(slots))


def slots_part(slots: np.ndarray) -> memoryview:
    """encode_slots() as a view of the buffer the stream was encoded into after its header, for a record
    (envelope.encode copies it once): no copy of its own, a byte a detection."""
    code = sift_kernel.encode_slots(np.ascontiguousarray(slots, dtype=np.uint64), _NO_SLOT_BOUND,
                                    prefix_bytes=_SLOTS_HEAD.size)
    code[:_SLOTS_HEAD.size] = np.frombuffer(_SLOTS_HEAD.pack(slots.size, SLOT_STREAM), dtype=np.uint8)
    return memoryview(code)


def detections_slots_part(detections) -> memoryview | tuple:
    """SLOTS for Bob's detections (qkdd.hal.base.BobDetections): the device's varint stream as it came, behind
    its header (no pass over the slots, none decoded), or else slots_part() of the slots."""
    if detections.slot_stream is None:
        return slots_part(detections.slots)
    return _SLOTS_HEAD.pack(detections.count, SLOT_STREAM), memoryview(detections.slot_stream)


def encode_slots_fixed(slots: np.ndarray) -> bytes:
    """The fixed-width form earlier versions send: gaps (first slot, then differences), 4 bytes each when
    every gap fits, else 8 (tests: decoders still read it)."""
    gaps = np.diff(slots.astype(np.uint64), prepend=np.uint64(0))
    width = 4 if slots.size == 0 or int(gaps.max()) < 2 ** 32 else 8
    return _SLOTS_HEAD.pack(slots.size, width) + gaps.astype("<u4" if width == 4 else "<u8").tobytes()


def is_slot_stream_of(view, slots: np.ndarray) -> bool:
    """Whether SLOTS `view` is the varint stream of exactly `slots` (the usual case at Alice: Bob detected what
    her records hold). The stream's encoding is canonical (the decoder refuses overlong varints), so equal bytes
    mean equal slots: this compares the stream with her slots' encoding as it encodes them (qkd_sift_stream_equals:
    no stream written), where decoding the stream would build and compare a uint64 array of them (256 MB for 2^25
    detections). False whenever the slots differ or the stream is of another form; the caller then decodes it, with
    its checks."""
    if len(view) < 16:
        return False
    count, width = struct.unpack_from("<QB", view)
    if count != slots.size or width != SLOT_STREAM or bytes(view[9:16]) != bytes(7):
        return False
    stream = np.frombuffer(view, dtype=np.uint8, offset=16)
    return sift_kernel.stream_equals(np.ascontiguousarray(slots, dtype=np.uint64), _NO_SLOT_BOUND, stream)


def decode_slots(view, max_count: int) -> np.ndarray:
    if len(view) < 16:
        raise LinkMessageError("SLOTS: truncated")
    count, width = struct.unpack_from("<QB", view)
    if count > max_count:
        raise LinkMessageError(f"SLOTS: {count} detections, this end holds at most {max_count}")
    if width not in (SLOT_STREAM, 4, 8) or bytes(view[9:16]) != bytes(7):
        raise LinkMessageError("SLOTS: malformed header")
    if width == SLOT_STREAM:
        try:
            return sift_kernel.decode_slots(np.frombuffer(view, dtype=np.uint8, offset=16), count, _NO_SLOT_BOUND)
        except NativeError as exc:
            raise LinkMessageError(f"SLOTS: {exc}") from None
    if len(view) != 16 + width * count:
        raise LinkMessageError(f"SLOTS: {len(view)} bytes do not hold {count} slots")
    gaps = np.frombuffer(view[16:], dtype="<u4" if width == 4 else "<u8").astype(np.uint64)
    if count > 1 and not bool(np.all(gaps[1:] > 0)):
        raise LinkMessageError("SLOTS: slot numbers are not strictly increasing")
    slots = np.cumsum(gaps, dtype=np.uint64)
    if count > 1 and not bool(np.all(slots[1:] > slots[:-1])):     # the sum wrapped past 2^64 somewhere
        raise LinkMessageError("SLOTS: slot numbers overflow")
    return slots


def encode_reveal(settings: DecoySettings, pulses_sent: int, eps_sec: float, eps_cor: float,
                  test_bits: list[tuple[np.ndarray, int]]) -> bytes:
    parts = [_SETTINGS.pack(settings.mu_signal, settings.mu_decoy, settings.mu_vacuum, settings.p_signal,
                            settings.p_decoy, settings.q_x, pulses_sent, eps_sec, eps_cor)]
    for words, n_bits in test_bits:
        parts.append(struct.pack("<Q", n_bits))
        parts.append(words[:words_for_bits(n_bits)].astype("<u8").tobytes())
    return b"".join(parts)


def decode_reveal(view, expected_bits: list[int]):
    """(settings, pulses_sent, eps_sec, eps_cor, [(words, n_bits)] per class); the bit counts must be
    the ones this end's sifting gave."""
    if len(view) < _SETTINGS.size:
        raise LinkMessageError("REVEAL: truncated")
    *numbers, pulses, eps_sec, eps_cor = _SETTINGS.unpack_from(view)
    try:
        settings = DecoySettings(*numbers)
    except ValueError as exc:
        raise LinkMessageError(f"REVEAL: decoy settings refused: {exc}") from None
    if not (MIN_EPS <= eps_sec < 1 and MIN_EPS <= eps_cor < 1):
        raise LinkMessageError(f"REVEAL: security parameters outside [{MIN_EPS:g}, 1)")
    offset = _SETTINGS.size
    revealed = []
    for c, expected in enumerate(expected_bits):
        if offset + 8 > len(view):
            raise LinkMessageError("REVEAL: truncated")
        (n_bits,) = struct.unpack_from("<Q", view, offset)
        if n_bits != expected:
            raise LinkMessageError(f"REVEAL: class {c} has {n_bits} test bits, sifting gave {expected}")
        words, offset = _words(view, words_for_bits(n_bits), offset + 8, "REVEAL")
        if n_bits % 64 and words.size and int(words[-1]) >> (n_bits % 64):
            raise LinkMessageError("REVEAL: bits set past the end")
        revealed.append((words, n_bits))
    if offset != len(view):
        raise LinkMessageError("REVEAL: trailing bytes")
    return settings, pulses, eps_sec, eps_cor, revealed


def encode_errors(errors: list[int]) -> bytes:
    return struct.pack(f"<{CLASSES}Q", *errors)


def decode_errors(view, bits_per_class: list[int]) -> list[int]:
    if len(view) != 8 * CLASSES:
        raise LinkMessageError(f"ERRORS: {len(view)} bytes, expected {8 * CLASSES}")
    errors = list(struct.unpack(f"<{CLASSES}Q", view))
    for c, (e, n) in enumerate(zip(errors, bits_per_class)):
        if e > n:
            raise LinkMessageError(f"ERRORS: {e} errors among {n} test bits of class {c}")
    return errors


def encode_keys(seed: bytes, count: int, key_bits: int, expires_at: float) -> bytes:
    return _KEYS.pack(seed, count, key_bits, expires_at)


def decode_keys(view) -> tuple[bytes, int, int, float]:
    """(key-id seed, key count, bits per key, expiry time); the expiry is a positive finite number here,
    the receiver checks it against its own clock."""
    if len(view) != _KEYS.size:
        raise LinkMessageError(f"KEYS: {len(view)} bytes, expected {_KEYS.size}")
    seed, count, key_bits, expires_at = _KEYS.unpack(view)
    if not (math.isfinite(expires_at) and expires_at > 0):
        raise LinkMessageError(f"KEYS: expiry time {expires_at!r} is not a positive finite number")
    return seed, count, key_bits, expires_at


def encode_abort(reason: AbortReason, text: str) -> bytes:
    body = text.encode()[:MAX_ABORT_TEXT_BYTES]
    return _ABORT.pack(int(reason), len(body)) + body


def decode_abort(view) -> tuple[int, str]:
    if len(view) < _ABORT.size:
        raise LinkMessageError("ABORT: truncated")
    code, length = _ABORT.unpack_from(view)
    if length > MAX_ABORT_TEXT_BYTES or len(view) != _ABORT.size + length:
        raise LinkMessageError("ABORT: malformed text length")
    return code, bytes(view[_ABORT.size:]).decode("utf-8", "replace")


FRAME_PREFIX_BITS = 48


def derive_key_ids(seed: bytes, count: int, frame_id: int | None = None) -> list[str]:
    """`count` UUIDs from an announced seed: SHAKE256(label || seed), 16 bytes each.

    Both ends derive the same ids; the seed comes fresh from the OS CSPRNG, so ids never repeat. With the
    frame id (what the link does since peer protocol version 2) the ids are UUID version 8 whose first 48 bits
    are the frame id (mod 2^48) and whose other 74 bits come from the seed: a frame's keys then sit next to
    each other in the key store's id index, so storing a frame writes a few index pages however many keys the
    store holds (random version-4 ids put each key on its own page). Without it: version 4, all from the seed."""
    if len(seed) != KEY_ID_SEED_BYTES:
        raise ValueError(f"key-id seed must be {KEY_ID_SEED_BYTES} bytes")
    stream = hashlib.shake_256(KEY_ID_LABEL + seed).digest(16 * count)
    if frame_id is None:
        return [str(uuid.UUID(bytes=stream[16 * i:16 * i + 16], version=4)) for i in range(count)]
    # The 16 bytes of id i: the frame id's low 48 bits (big-endian), then bytes 6-15 of its 16 from the stream,
    # with the version nibble (byte 6, high) 8 and the RFC 9562 variant (byte 8, top two bits) 10; written as
    # text for all ids at once (a frame has tens of thousands of keys: a UUID object each cost 5 us)
    raw = np.frombuffer(stream, dtype=np.uint8).reshape(count, 16).copy()
    raw[:, :6] = np.frombuffer((frame_id % (1 << FRAME_PREFIX_BITS)).to_bytes(6, "big"), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x80
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    digits = _HEX_DIGITS[np.stack([raw >> 4, raw & 0x0F], axis=2).reshape(count, 32)]
    text = np.full((count, 37), ord("-"), dtype=np.uint8)
    text[:, _UUID_DIGIT_COLUMNS] = digits
    text[:, 36] = ord("\n")
    return text.tobytes().decode("ascii").split("\n")[:count]


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_DIGIT_COLUMNS = np.array([c for c in range(36) if c not in (8, 13, 18, 23)])     # 8-4-4-4-12
