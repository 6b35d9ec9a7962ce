"""Thin, checked bindings over the compiled C library qkdd._native (one module per kernel family).

Nothing above this package sees a cffi pointer: each binding checks dtypes and lengths, hands numpy
buffers to C with ffi.from_buffer, and turns C return codes into the exceptions below.
"""
from __future__ import annotations

import numpy as np

from qkdd._native import ffi, lib


class NativeError(Exception):
    """A C kernel refused its arguments."""


class NativeRangeError(NativeError, IndexError):
    """An index or range lies outside the buffer."""


class NativeBufferError(NativeError, ValueError):
    """An output or scratch buffer is too small, or an argument is inconsistent."""


class NativeProtocolError(NativeError, ValueError):
    """A peer message is malformed or out of sequence."""


_ERRORS = {
    lib.QKD_EINVAL: NativeBufferError,
    lib.QKD_ERANGE: NativeRangeError,
    lib.QKD_ENOMEM: NativeBufferError,
    lib.QKD_EPROTO: NativeProtocolError,
}


def check(code: int, what: str) -> int:
    """Return `code` if non-negative, else raise the exception its C error code names."""
    if code >= 0:
        return code
    raise _ERRORS.get(code, NativeError)(f"{what}: native error {code}")


def as_words(array: np.ndarray, name: str, writable: bool = False) -> np.ndarray:
    """Check that `array` is a C-contiguous uint64 vector (the bit-packed layout) and return it."""
    if not isinstance(array, np.ndarray) or array.dtype != np.uint64 or array.ndim != 1:
        raise TypeError(f"{name} must be a 1-D numpy array of uint64 (bit-packed words)")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if writable and not array.flags.writeable:
        raise ValueError(f"{name} must be writable")
    return array


def ptr(ctype: str, array: np.ndarray):
    """A cffi pointer of type `ctype` into a numpy array's buffer (no copy)."""
    return ffi.cast(ctype, ffi.from_buffer(array, require_writable=False))


def wptr(ctype: str, array: np.ndarray):
    """A writable cffi pointer into a numpy array's buffer (no copy)."""
    return ffi.cast(ctype, ffi.from_buffer(array, require_writable=True))
