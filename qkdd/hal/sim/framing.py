"""The byte side of the simulated quantum channels' receivers (qkdd.hal.sim.wire, qkdd.hal.sim.cv_wire):
buffer one connection's bytes and cut them into header-checked messages; each wire adds its checks and parsers.

Both wires frame a message as a fixed header whose last field is the body length (`HEADER`), then the body.
A subclass checks the header (`_check_header` -> (type, body length), before any body is buffered), parses
the body (`_parse`) and names its state table (`TRANSITIONS`: (role, state) -> {type: next state}).
"""
from __future__ import annotations

import struct
from typing import Any


class FramedReceiver:
    """One end's parser of the other end's messages: feed bytes, take checked messages.

    `role` is the receiving end ("bob" receives Alice's messages). The last frame id is kept across
    connections (`reset()` starts a new connection, keeping it), so ids never go backwards.
    """

    HEADER: struct.Struct
    TRANSITIONS: dict[tuple[str, str], dict[int, str]]
    FIRST_STATE = "HELLO"

    def __init__(self, role: str):
        if role not in ("alice", "bob"):
            raise ValueError(f"role: alice or bob, got {role!r}")
        self.role = role
        self.last_frame_id: int | None = None
        self.bytes_received = 0     # over every connection, for the benchmarks' wire figures
        self.reset()

    def reset(self) -> None:
        """A new connection: empty buffer, hello expected again (the last frame id is kept)."""
        self.state = self.FIRST_STATE
        self._buffer = bytearray()
        self._header: tuple[int, int] | None = None

    def bytes_wanted(self) -> int:
        """How many more bytes complete the message being read (at least 1)."""
        if self._header is None:
            return max(1, self.HEADER.size - len(self._buffer))
        return max(1, self._header[1] - len(self._buffer))

    def bytes_buffered(self) -> int:
        """Bytes of a message received but not yet consumed (header included)."""
        return len(self._buffer) + (self.HEADER.size if self._header is not None else 0)

    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        self.bytes_received += len(data)

    def ready_body_bytes(self) -> int:
        """The body length of the message being read once all of it is buffered (next_message() will return
        it), else 0: a caller parses a large one in a worker thread."""
        if not self._take_header() or len(self._buffer) < self._header[1]:
            return 0
        return self._header[1]

    def _take_header(self) -> bool:
        """Check and take the next message's header once its bytes are in; whether one is taken."""
        if self._header is None:
            if len(self._buffer) < self.HEADER.size:
                return False
            self._header = self._check_header(bytes(self._buffer[:self.HEADER.size]))
            # a new buffer (a copy of at most what one receive added), not `del`, which would only move its
            # start: a body then starts on a fresh allocation, aligned for the parsers' zero-copy views
            self._buffer = self._buffer[self.HEADER.size:]
        return True

    def next_message(self) -> Any | None:
        """The next complete, checked message, or None when more bytes are needed."""
        if not self._take_header():
            return None
        kind, body_bytes = self._header
        if len(self._buffer) < body_bytes:
            return None
        if len(self._buffer) == body_bytes:          # the usual case for a large frame: no copy
            body, self._buffer = self._buffer, bytearray()
        else:
            body = self._buffer[:body_bytes]
            del self._buffer[:body_bytes]
        self._header = None
        message = self._parse(kind, body)
        self.state = self.TRANSITIONS[(self.role, self.state)][kind]
        return message

    def _check_header(self, raw: bytes) -> tuple[int, int]:
        raise NotImplementedError

    def _parse(self, kind: int, body: bytearray) -> Any:
        raise NotImplementedError
