"""The one source of fresh randomness for post-processing, and a deterministic seed expander.

Everything random that the two ends must share (hash keys, Toeplitz seeds, sample positions) is
drawn here by one end from the operating system's CSPRNG (getrandom(2) via os.urandom) and then
announced to the other. Long seeds may instead be announced as 256 bits and expanded on both ends
with SHAKE256 (FIPS 202), which is deterministic, so both ends derive the same bits.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

SEED_BYTES = 32  # a 256-bit announced seed for expand_words


def fresh_bytes(n_bytes: int) -> bytes:
    """n_bytes from the OS CSPRNG (getrandom). Never from a user-space PRNG."""
    if n_bytes < 0:
        raise ValueError("n_bytes must be non-negative")
    return os.urandom(n_bytes)


def fresh_words(n_words: int) -> np.ndarray:
    """n_words uniformly random uint64 words from the OS CSPRNG."""
    if n_words < 0:
        raise ValueError("n_words must be non-negative")
    return np.frombuffer(fresh_bytes(8 * n_words), dtype="<u8").astype(np.uint64)


def fresh_seed() -> bytes:
    """A fresh 256-bit seed to announce for expand_words."""
    return fresh_bytes(SEED_BYTES)


def expand_words(seed: bytes, n_words: int, label: bytes) -> np.ndarray:
    """n_words pseudo-random uint64 words from a 256-bit seed: SHAKE256(label || 0x00 || seed), read-only (a view
    of the digest, not a copy, on a little-endian machine).

    `label` separates uses (e.g. b"qkdd/toeplitz"), so one seed never yields related streams.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if n_words < 0:
        raise ValueError("n_words must be non-negative")
    stream = hashlib.shake_256(label + b"\x00" + seed).digest(8 * n_words)
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64, copy=False)
