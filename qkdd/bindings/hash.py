"""Polynomial hash kernel (native/src/hash.c): GF(2^64) tags of a bit-packed frame."""
from __future__ import annotations

import numpy as np

from qkdd._native import lib
from qkdd.bindings import as_words, check, ptr, wptr
from qkdd.bindings.bits import words_for_bits

MAX_KEYS = int(lib.QKD_HASH_MAX_KEYS)
_FEATURES = lib.qkd_cpu_features()


def poly64_tags(frame: np.ndarray, n_bits: int, keys: np.ndarray, *, portable: bool = False) -> np.ndarray:
    """One 64-bit tag per key of the first n_bits of `frame` (see qkd_hash.h for the definition)."""
    as_words(frame, "frame")
    as_words(keys, "keys")
    if n_bits < 0:
        raise ValueError("n_bits must be non-negative")
    if frame.size < words_for_bits(n_bits):
        raise ValueError(f"frame has {frame.size} words, needs {words_for_bits(n_bits)} for {n_bits} bits")
    if not 1 <= keys.size <= MAX_KEYS:
        raise ValueError(f"between 1 and {MAX_KEYS} hash keys, got {keys.size}")
    tags = np.empty(keys.size, dtype=np.uint64)
    features = 0 if portable else _FEATURES
    check(lib.qkd_hash_poly64(ptr("uint64_t *", frame), frame.size, n_bits, ptr("uint64_t *", keys), keys.size,
                              wptr("uint64_t *", tags), tags.size, features), "polynomial hash")
    return tags


def gf64_mul(a: int, b: int, *, portable: bool = False) -> int:
    """a * b in GF(2^64) modulo x^64 + x^4 + x^3 + x + 1."""
    return int(lib.qkd_gf64_mul(a, b, 0 if portable else _FEATURES))
