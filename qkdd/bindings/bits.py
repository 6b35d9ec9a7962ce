"""Bit-packed arrays: bit i in word i // 64 at position i % 64, uint64 little-endian (see qkd_bits.h)."""
from __future__ import annotations

import numpy as np

from qkdd._native import lib
from qkdd.bindings import NativeRangeError, as_words, check, ptr, wptr


def words_for_bits(nbits: int) -> int:
    """Number of uint64 words that hold `nbits` bits."""
    if nbits < 0:
        raise ValueError("nbits must be non-negative")
    return (nbits + 63) // 64


def pack(bits: np.ndarray) -> np.ndarray:
    """Pack a vector of 0/1 values (any integer or bool dtype) into uint64 words."""
    bits = np.ascontiguousarray(bits, dtype=np.uint8)
    if bits.ndim != 1:
        raise ValueError("bits must be a 1-D array")
    out = np.empty(words_for_bits(bits.size), dtype=np.uint64)
    check(lib.qkd_bits_pack(ptr("uint8_t *", bits), bits.size, wptr("uint64_t *", out), out.size), "pack")
    return out


def unpack(words: np.ndarray, nbits: int) -> np.ndarray:
    """Unpack the first `nbits` bits of `words` into a uint8 vector of 0/1."""
    as_words(words, "words")
    if nbits < 0:
        raise ValueError("nbits must be non-negative")
    if nbits > words.size * 64:   # checked before the output is allocated: nbits may come from a peer
        raise NativeRangeError(f"unpack: {nbits} bits asked of {words.size} words")
    out = np.empty(nbits, dtype=np.uint8)
    check(lib.qkd_bits_unpack(ptr("uint64_t *", words), words.size, nbits, wptr("uint8_t *", out), out.size),
          "unpack")
    return out


def xor_into(dst: np.ndarray, src: np.ndarray) -> None:
    """dst ^= src, word by word; both must have the same length."""
    as_words(dst, "dst", writable=True)
    as_words(src, "src")
    if dst.size != src.size:
        raise ValueError(f"xor of {dst.size} words with {src.size} words")
    check(lib.qkd_bits_xor(wptr("uint64_t *", dst), ptr("uint64_t *", src), dst.size), "xor")


def popcount(words: np.ndarray, start: int = 0, stop: int | None = None) -> int:
    """Number of one bits in [start, stop)."""
    start, stop = _bit_range(words, start, stop)
    return check(lib.qkd_bits_popcount_range(ptr("uint64_t *", words), words.size, start, stop), "popcount")


def parity(words: np.ndarray, start: int = 0, stop: int | None = None) -> int:
    """XOR of the bits in [start, stop)."""
    start, stop = _bit_range(words, start, stop)
    return check(lib.qkd_bits_parity_range(ptr("uint64_t *", words), words.size, start, stop), "parity")


def _bit_range(words: np.ndarray, start: int, stop: int | None) -> tuple[int, int]:
    """Check `words` and resolve [start, stop) (stop defaults to every bit); the C side checks the bounds."""
    as_words(words, "words")
    stop = words.size * 64 if stop is None else stop
    if start < 0 or stop < 0:
        raise ValueError("start and stop must be non-negative")
    return start, stop


def gather(words: np.ndarray, nbits: int, index: np.ndarray) -> np.ndarray:
    """Bits of `words` at positions `index` (each < nbits), packed in index order."""
    as_words(words, "words")
    if nbits < 0:
        raise ValueError("nbits must be non-negative")
    index = np.ascontiguousarray(index, dtype=np.uint64)
    out = np.empty(words_for_bits(index.size), dtype=np.uint64)
    check(lib.qkd_bits_gather(ptr("uint64_t *", words), words.size, nbits, ptr("uint64_t *", index), index.size,
                              wptr("uint64_t *", out), out.size), "gather")
    return out


def cpu_features() -> set[str]:
    """Instruction-set extensions the running CPU offers to kernels that select at run time."""
    flags = lib.qkd_cpu_features()
    names = {"popcnt": lib.QKD_CPU_POPCNT, "avx2": lib.QKD_CPU_AVX2, "avx512f": lib.QKD_CPU_AVX512F,
             "pclmul": lib.QKD_CPU_PCLMUL, "vpclmul": lib.QKD_CPU_VPCLMUL, "bmi2": lib.QKD_CPU_BMI2}
    return {name for name, bit in names.items() if flags & bit}


def deal(values: np.ndarray, rows: int) -> np.ndarray:
    """A uint8 vector dealt round robin to `rows` rows, laid out row after row: row j is values[j::rows]."""
    return _deal(lib.qkd_bytes_deal, values, rows)


def undeal(dealt: np.ndarray, rows: int) -> np.ndarray:
    """The inverse of deal: the vector back in its order."""
    return _deal(lib.qkd_bytes_undeal, dealt, rows)


def deal_bits(words: np.ndarray, nbits: int, rows: int) -> np.ndarray:
    """deal() of the first `nbits` bits of packed `words`, as 0/1 bytes: no unpacked copy of the frame."""
    as_words(words, "words")
    if rows < 1 or nbits < 0:
        raise ValueError(f"deal: rows must be >= 1 and nbits >= 0, got {rows} and {nbits}")
    if nbits > words.size * 64:
        raise NativeRangeError(f"deal: {nbits} bits asked of {words.size} words")
    out = np.empty(nbits, dtype=np.uint8)
    check(lib.qkd_bits_deal(ptr("uint64_t *", words), words.size, nbits, rows, wptr("uint8_t *", out), out.size),
          "deal")
    return out


def undeal_bits(dealt: np.ndarray, rows: int, out: np.ndarray | None = None) -> np.ndarray:
    """undeal() of 0/1 bytes packed straight into words (`out`, all of it written: bits past the end zero)."""
    if dealt.ndim != 1 or dealt.dtype != np.uint8 or not dealt.flags.c_contiguous:
        raise ValueError("undeal: a contiguous 1-D uint8 array is needed")
    if rows < 1:
        raise ValueError(f"undeal: rows must be >= 1, got {rows}")
    if out is None:
        out = np.empty(words_for_bits(dealt.size), dtype=np.uint64)
    as_words(out, "out", writable=True)
    check(lib.qkd_bits_undeal(ptr("uint8_t *", dealt), dealt.size, rows, wptr("uint64_t *", out), out.size), "undeal")
    return out


def _deal(kernel, values: np.ndarray, rows: int) -> np.ndarray:
    if values.ndim != 1 or values.dtype != np.uint8:
        raise ValueError("deal: a 1-D uint8 array is needed")
    if rows < 1:
        raise ValueError(f"deal: rows must be >= 1, got {rows}")
    values = np.ascontiguousarray(values)
    out = np.empty(values.size, dtype=np.uint8)
    check(kernel(ptr("uint8_t *", values), values.size, rows, wptr("uint8_t *", out)), "deal")
    return out
