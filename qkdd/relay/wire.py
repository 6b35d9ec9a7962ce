"""Byte layout helpers of the relay's messages (big-endian): a writer and a bounds-checked reader whose
every failure is one RelayWireError, so a peer's truncated or oversized field can never crash a decoder."""
from __future__ import annotations

import struct


class RelayWireError(ValueError):
    """A relay or link-state message that cannot be decoded (truncated, oversized, bad text)."""


class Writer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(struct.pack(">B", value))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(struct.pack(">H", value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(struct.pack(">I", value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(struct.pack(">Q", value))
        return self

    def f64(self, value: float) -> Writer:
        self._parts.append(struct.pack(">d", value))
        return self

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def blob(self, data: bytes) -> Writer:
        """u16 length then the bytes."""
        if len(data) > 0xFFFF:
            raise ValueError("field longer than 65535 bytes")
        return self.u16(len(data)).raw(data)

    def text(self, value: str) -> Writer:
        return self.blob(value.encode("utf-8"))

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    def _take(self, count: int, what: str) -> memoryview:
        if self._at + count > len(self._data):
            raise RelayWireError(f"truncated {what}")
        chunk = self._data[self._at:self._at + count]
        self._at += count
        return chunk

    def u8(self, what: str = "u8") -> int:
        return self._take(1, what)[0]

    def u16(self, what: str = "u16") -> int:
        return struct.unpack(">H", self._take(2, what))[0]

    def u32(self, what: str = "u32") -> int:
        return struct.unpack(">I", self._take(4, what))[0]

    def u64(self, what: str = "u64") -> int:
        return struct.unpack(">Q", self._take(8, what))[0]

    def f64(self, what: str = "f64") -> float:
        return struct.unpack(">d", self._take(8, what))[0]

    def raw(self, count: int, what: str = "bytes") -> bytes:
        return bytes(self._take(count, what))

    def blob(self, what: str = "blob", max_bytes: int = 0xFFFF) -> bytes:
        length = self.u16(what)
        if length > max_bytes:
            raise RelayWireError(f"{what} of {length} bytes, at most {max_bytes}")
        return self.raw(length, what)

    def text(self, what: str = "text", max_bytes: int = 64) -> str:
        try:
            return self.blob(what, max_bytes).decode("utf-8")
        except UnicodeDecodeError:
            raise RelayWireError(f"{what} is not UTF-8") from None

    @property
    def consumed(self) -> int:
        return self._at

    def end(self) -> None:
        if self._at != len(self._data):
            raise RelayWireError(f"{len(self._data) - self._at} bytes after the message")
