"""The E91 frame pipeline's own messages (qkdd.link.e91_pipeline): analyser settings, their classes,
the test-round reveal and its disagreement counts. Sans-IO encode/decode, every length checked.

Layouts (little-endian, inside an envelope part; see envelope.py):

    SETTINGS  (SIFT step, both ways) u64 count | count x u8 analyser codes (qkdd.hal.sim.records: 0 = 0 deg,
              1 = 45 deg, 2 = 22.5 deg, 3 = -22.5 deg; Alice uses 0 and 1 only), one per detection in
              Bob's SLOTS order. Settings are public in E91; outcomes never cross here.
    REPORT    (SIFT step, Bob) 7 x u64 detections per class (CLASS_NAMES order), which Alice checks
    REVEAL    (ESTIMATE step, Alice) f64 eps_sec | f64 eps_cor | f64 chsh_eps (each in [MIN_EPS, 1)) |
              u64 n | ceil(n/8) bytes: her outcomes of the test rounds (X and the four CHSH classes) in
              detection order, packed most significant bit first (numpy.packbits), padding bits zero
    ERRORS    (ESTIMATE step, Bob) 5 x u64 disagreeing outcome pairs per test class (TEST_CLASSES: X, then
              the four CHSH classes)
"""
from __future__ import annotations

import struct

import numpy as np

from qkdd.link.linkmsg import MIN_EPS, LinkMessageError

# Detection classes by (Alice code, Bob code): the key (both 0 deg), the X test (both 45 deg), the four
# CHSH correlators in qkdd.protocols.e91.CHSH_TERMS order (Alice 0/45 deg x Bob 22.5/-22.5 deg), the rest
# discarded.
KEY_Z, TEST_X, CHSH_0, CHSH_1, CHSH_2, CHSH_3, DISCARDED = range(7)
CLASS_NAMES = ("key_z", "test_x", "chsh_a0b0", "chsh_a0b1", "chsh_a1b0", "chsh_a1b1", "discarded")
CHSH_CLASSES = (CHSH_0, CHSH_1, CHSH_2, CHSH_3)
TEST_CLASSES = (TEST_X, *CHSH_CLASSES)
ALICE_CODES, BOB_CODES = 2, 4
CLASS_OF = np.full(ALICE_CODES * BOB_CODES, DISCARDED, dtype=np.uint8)      # index: alice code * 4 + bob code
for _alice, _bob, _class in ((0, 0, KEY_Z), (1, 1, TEST_X), (0, 2, CHSH_0), (0, 3, CHSH_1), (1, 2, CHSH_2),
                             (1, 3, CHSH_3)):
    CLASS_OF[_alice * BOB_CODES + _bob] = _class

_COUNT = struct.Struct("<Q")
_REPORT = struct.Struct(f"<{len(CLASS_NAMES)}Q")
_REVEAL = struct.Struct("<dddQ")
_ERRORS = struct.Struct(f"<{len(TEST_CLASSES)}Q")


def classify(alice_codes: np.ndarray, bob_codes: np.ndarray) -> np.ndarray:
    """The class of every detection (both ends compute the same from the two SETTINGS)."""
    return CLASS_OF[alice_codes.astype(np.intp) * BOB_CODES + bob_codes]


def class_counts(classes: np.ndarray) -> list[int]:
    return [int(n) for n in np.bincount(classes, minlength=len(CLASS_NAMES))]


def encode_settings(codes: np.ndarray) -> bytes:
    return _COUNT.pack(codes.size) + np.ascontiguousarray(codes, dtype=np.uint8).tobytes()


def decode_settings(view, count: int, code_limit: int) -> np.ndarray:
    """Codes of `count` detections, each below `code_limit`."""
    if len(view) < _COUNT.size:
        raise LinkMessageError("SETTINGS: truncated")
    (n,) = _COUNT.unpack_from(view)
    if n != count or len(view) != _COUNT.size + n:
        raise LinkMessageError(f"SETTINGS: {n} codes in {len(view)} bytes, this frame has {count} detections")
    codes = np.frombuffer(view, dtype=np.uint8, offset=_COUNT.size).copy()
    if n and int(codes.max()) >= code_limit:
        raise LinkMessageError(f"SETTINGS: analyser code {int(codes.max())} out of range (0..{code_limit - 1})")
    return codes


def encode_report(counts: list[int]) -> bytes:
    return _REPORT.pack(*counts)


def decode_report(view) -> list[int]:
    if len(view) != _REPORT.size:
        raise LinkMessageError(f"REPORT: {len(view)} bytes, expected {_REPORT.size}")
    return list(_REPORT.unpack(view))


def encode_reveal(eps_sec: float, eps_cor: float, chsh_eps: float, outcomes: np.ndarray) -> bytes:
    return _REVEAL.pack(eps_sec, eps_cor, chsh_eps, outcomes.size) + np.packbits(outcomes.astype(np.uint8)).tobytes()


def decode_reveal(view, expected_bits: int) -> tuple[float, float, float, np.ndarray]:
    """(eps_sec, eps_cor, chsh_eps, outcomes as uint8 0/1); the count must be this end's test rounds."""
    if len(view) < _REVEAL.size:
        raise LinkMessageError("REVEAL: truncated")
    eps_sec, eps_cor, chsh_eps, n = _REVEAL.unpack_from(view)
    if not all(MIN_EPS <= eps < 1 for eps in (eps_sec, eps_cor, chsh_eps)):
        raise LinkMessageError(f"REVEAL: security parameters outside [{MIN_EPS:g}, 1)")
    if n != expected_bits:
        raise LinkMessageError(f"REVEAL: {n} test outcomes, this end has {expected_bits} test rounds")
    packed = np.frombuffer(view, dtype=np.uint8, offset=_REVEAL.size)
    if packed.size != (n + 7) // 8:
        raise LinkMessageError(f"REVEAL: {packed.size} bytes do not hold {n} outcomes")
    outcomes = np.unpackbits(packed)
    if outcomes[n:].any():
        raise LinkMessageError("REVEAL: bits set past the end")
    return eps_sec, eps_cor, chsh_eps, outcomes[:n]


def encode_errors(errors: list[int]) -> bytes:
    return _ERRORS.pack(*errors)


def decode_errors(view, rounds: list[int]) -> list[int]:
    """Disagreements per test class (TEST_CLASSES order), each at most its rounds."""
    if len(view) != _ERRORS.size:
        raise LinkMessageError(f"ERRORS: {len(view)} bytes, expected {_ERRORS.size}")
    errors = list(_ERRORS.unpack(view))
    for name, e, n in zip((CLASS_NAMES[c] for c in TEST_CLASSES), errors, rounds):
        if e > n:
            raise LinkMessageError(f"ERRORS: {e} disagreements in {n} {name} rounds")
    return errors
