"""Toeplitz hashing kernel (native/src/toeplitz.c): y = T(seed) x over GF(2), bit-packed.

Seed convention, bit-exact with randextract's ToeplitzHashing (seed_mode="default"):
T[i][j] = seed[(i - j) mod (n + m - 1)], see native/include/qkd_toeplitz.h.
"""
from __future__ import annotations

import numpy as np

from qkdd._native import lib
from qkdd.bindings import as_words, check, ptr, wptr
from qkdd.bindings.bits import words_for_bits

MAX_INPUT_BITS = int(lib.QKD_TOEPLITZ_MAX_BITS)
CPU_FEATURES = int(lib.qkd_cpu_features())
PCLMUL = int(lib.QKD_CPU_PCLMUL)


def seed_bits_for(n_bits: int, m_bits: int) -> int:
    """Seed length for an n -> m Toeplitz hash: n + m - 1 bits."""
    _check_sizes(n_bits, m_bits)
    return n_bits + m_bits - 1


def _check_sizes(n_bits: int, m_bits: int) -> None:
    if not 0 < n_bits <= MAX_INPUT_BITS:
        raise ValueError(f"input length must be in [1, {MAX_INPUT_BITS}] bits, got {n_bits}")
    if not 0 < m_bits <= n_bits:
        raise ValueError(f"output length must be in [1, {n_bits}] bits, got {m_bits}")


def toeplitz_hash(seed: np.ndarray, key: np.ndarray, n_bits: int, m_bits: int, *,
                  cpu_features: int | None = None) -> np.ndarray:
    """The m-bit Toeplitz hash of the first n bits of `key` under `seed` (n + m - 1 bits), packed.

    `cpu_features` restricts the instruction sets the kernel may use (a subset of CPU_FEATURES;
    0 = portable C, PCLMUL = no AVX-512 VPCLMULQDQ); the result is the same on every path.
    """
    _check_sizes(n_bits, m_bits)
    as_words(seed, "seed")
    as_words(key, "key")
    if seed.size < words_for_bits(n_bits + m_bits - 1):
        raise ValueError(f"seed has {seed.size} words, needs {words_for_bits(n_bits + m_bits - 1)} "
                         f"for {n_bits + m_bits - 1} bits")
    if key.size < words_for_bits(n_bits):
        raise ValueError(f"input has {key.size} words, needs {words_for_bits(n_bits)} for {n_bits} bits")
    out = np.empty(words_for_bits(m_bits), dtype=np.uint64)
    scratch = np.empty(lib.qkd_toeplitz_scratch_words(n_bits, m_bits), dtype=np.uint64)
    features = CPU_FEATURES if cpu_features is None else CPU_FEATURES & cpu_features
    check(lib.qkd_toeplitz_hash(ptr("uint64_t *", seed), seed.size, ptr("uint64_t *", key), key.size, n_bits, m_bits,
                                wptr("uint64_t *", out), out.size, wptr("uint64_t *", scratch), scratch.size,
                                features), "toeplitz hash")
    return out
