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
NTT_MAX_OUTPUT_BITS = int(lib.QKD_TOEPLITZ_NTT_MAX_OUT_BITS)
# From this output length up, the additive-FFT kernel (native/src/toeplitz_fft.c, O(n log^2 n)) beats the
# carry-less Karatsuba one (O(n m^0.58)); below it, or for short outputs of long inputs, Karatsuba wins.
# Measured (CPU time, 2 cores AMD EPYC Zen 4, loaded): n = 2^22, m = 2^21: 54 ms against 84 ms;
# n = 2^21, m = 2^20: 34 ms against 29 ms; n = 2^24, m = 2^16: 246 ms against 62 ms.
FFT_MIN_OUTPUT_BITS = 1 << 21


def seed_bits_for(n_bits: int, m_bits: int) -> int:
    """Seed length for an n -> m Toeplitz hash: n + m - 1 bits."""
    _check_sizes(n_bits, m_bits)
    return n_bits + m_bits - 1


def _check_sizes(n_bits: int, m_bits: int) -> None:
    if not 0 < n_bits <= MAX_INPUT_BITS:
        raise ValueError(f"input length must be in [1, {MAX_INPUT_BITS}] bits, got {n_bits}")
    if not 0 < m_bits <= n_bits:
        raise ValueError(f"output length must be in [1, {n_bits}] bits, got {m_bits}")


def fft_available(n_bits: int, m_bits: int, cpu_features: int | None = None) -> bool:
    """Whether the additive-FFT kernel can hash n -> m bits here (PCLMULQDQ, transform size in range)."""
    features = CPU_FEATURES if cpu_features is None else CPU_FEATURES & cpu_features
    return bool(features & PCLMUL) and lib.qkd_toeplitz_fft_scratch_words(n_bits, m_bits) > 0


def toeplitz_hash(seed: np.ndarray, key: np.ndarray, n_bits: int, m_bits: int, *,
                  cpu_features: int | None = None, ntt: bool = False, fft: bool | None = None) -> np.ndarray:
    """The m-bit Toeplitz hash of the first n bits of `key` under `seed` (n + m - 1 bits), packed.

    `cpu_features` restricts the instruction sets the kernel may use (a subset of CPU_FEATURES;
    0 = portable C, PCLMUL = no AVX-512 VPCLMULQDQ); the result is the same on every path.
    `ntt=True` takes the number-theoretic path instead (m <= NTT_MAX_OUTPUT_BITS; not the default
    anywhere yet: it is slower than the carry-less path at every size measured, see toeplitz.c).
    `fft`: None picks the additive-FFT kernel for outputs of FFT_MIN_OUTPUT_BITS or more when the CPU
    allows it, True requires it, False keeps to the carry-less one. Every path gives the same bits.
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
    if ntt:
        if m_bits > NTT_MAX_OUTPUT_BITS:
            raise ValueError(f"the NTT path takes at most {NTT_MAX_OUTPUT_BITS} output bits, got {m_bits}")
        scratch = np.empty(lib.qkd_toeplitz_ntt_scratch_words(n_bits, m_bits), dtype=np.uint64)
        check(lib.qkd_toeplitz_hash_ntt(ptr("uint64_t *", seed), seed.size, ptr("uint64_t *", key), key.size, n_bits,
                                        m_bits, wptr("uint64_t *", out), out.size, wptr("uint64_t *", scratch),
                                        scratch.size), "toeplitz hash (NTT)")
        return out
    features = CPU_FEATURES if cpu_features is None else CPU_FEATURES & cpu_features
    if fft is None:
        fft = m_bits >= FFT_MIN_OUTPUT_BITS and fft_available(n_bits, m_bits, features)
    if fft:
        if not fft_available(n_bits, m_bits, features):
            raise ValueError(f"the FFT path needs PCLMULQDQ and n + n + m within its transform, got n={n_bits}, "
                             f"m={m_bits}")
        scratch = np.empty(lib.qkd_toeplitz_fft_scratch_words(n_bits, m_bits), dtype=np.uint64)
        check(lib.qkd_toeplitz_hash_fft(ptr("uint64_t *", seed), seed.size, ptr("uint64_t *", key), key.size, n_bits,
                                        m_bits, wptr("uint64_t *", out), out.size, wptr("uint64_t *", scratch),
                                        scratch.size, features), "toeplitz hash (FFT)")
        return out
    scratch = np.empty(lib.qkd_toeplitz_scratch_words(n_bits, m_bits), dtype=np.uint64)
    check(lib.qkd_toeplitz_hash(ptr("uint64_t *", seed), seed.size, ptr("uint64_t *", key), key.size, n_bits, m_bits,
                                wptr("uint64_t *", out), out.size, wptr("uint64_t *", scratch), scratch.size,
                                features), "toeplitz hash")
    return out
