"""CRC-32C kernel (native/src/crc.c): the frame check of the serial device protocol."""
from __future__ import annotations

from qkdd._native import ffi, lib


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of `data`, continuing from `crc`; releases the GIL."""
    view = memoryview(data).cast("B")
    return int(lib.qkd_crc32c(crc, ffi.from_buffer("uint8_t[]", view), view.nbytes))
