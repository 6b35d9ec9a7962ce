"""The bytes of request bodies one listener holds in memory at once: one budget shared by its connections.

A request reserves its declared Content-Length before a byte of its body is read (a chunked body
reserves each chunk as it arrives) and gives the bytes back once its response is sent. A request that
finds no room waits, first come first served, at most the listener's `body_wait_s`; then the server
answers 503 without reading the body. So the bodies in memory never add up to more than
`max_buffered_body_bytes`, however many connections a listener holds. Reserving the whole length up
front, rather than chunk by chunk, lets the first requests finish and hand their room on, where
hundreds of half-read bodies would otherwise hold the budget between them until every one times out.
"""
from __future__ import annotations

from collections import deque

import trio


class _Waiter:
    __slots__ = ("size_bytes", "granted")

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.granted = trio.Event()


class BodyBudget:
    """Room for request bodies, in bytes, shared by the connections of one listener."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError("the body budget must not be negative")
        self.capacity_bytes = capacity_bytes
        self.in_use_bytes = 0
        self.peak_bytes = 0
        self._waiting: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for room now."""
        return len(self._waiting)

    async def reserve(self, size_bytes: int, wait_s: float) -> bool:
        """Take `size_bytes` of room, waiting at most `wait_s` behind earlier requests; False if none came.
        A True answer must be matched by release(size_bytes)."""
        if size_bytes <= 0:
            return True
        if size_bytes > self.capacity_bytes:
            return False
        if not self._waiting and self.in_use_bytes + size_bytes <= self.capacity_bytes:
            self._take(size_bytes)
            return True
        waiter = _Waiter(size_bytes)
        self._waiting.append(waiter)
        try:
            with trio.move_on_after(wait_s):
                await waiter.granted.wait()
        except BaseException:            # cancelled (connection closed): nothing held afterwards
            self._forget(waiter)
            raise
        if waiter.granted.is_set():
            return True
        self._forget(waiter)
        return False

    def release(self, size_bytes: int) -> None:
        if size_bytes <= 0:
            return
        if size_bytes > self.in_use_bytes:
            raise RuntimeError("released more body bytes than were reserved")
        self.in_use_bytes -= size_bytes
        self._grant()

    def _take(self, size_bytes: int) -> None:
        self.in_use_bytes += size_bytes
        self.peak_bytes = max(self.peak_bytes, self.in_use_bytes)

    def _forget(self, waiter: _Waiter) -> None:
        if waiter.granted.is_set():
            self.release(waiter.size_bytes)
            return
        self._waiting.remove(waiter)
        self._grant()                    # a large request leaving the head of the queue may let others in

    def _grant(self) -> None:
        while self._waiting and self.in_use_bytes + self._waiting[0].size_bytes <= self.capacity_bytes:
            waiter = self._waiting.popleft()
            self._take(waiter.size_bytes)
            waiter.granted.set()
