"""A byte budget for receive queues: records from the peer wait (backpressure) while the queued bytes are
over the cap, so an authenticated peer can make this end hold at most about `limit_bytes`, not
queue-length × record-cap (64 records of 64 MiB would be 4 GiB).

One record is always admitted into an empty budget, however large (up to the record cap), so the cap
never blocks a legal record; otherwise a record waits until the application has taken enough out.
Nothing is dropped: waiting stops the reader, TCP flow control then stops the peer.
"""
from __future__ import annotations

import trio


class ByteBudget:
    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError("byte budget must be >= 1")
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self._freed = trio.Event()

    async def acquire(self, nbytes: int) -> None:
        """Wait until `nbytes` fit (or nothing is held), then hold them."""
        while self.held_bytes and self.held_bytes + nbytes > self.limit_bytes:
            await self._freed.wait()
        self.held_bytes += nbytes

    def release(self, nbytes: int) -> None:
        """The application took `nbytes` out of the queue: wake whoever waits for room."""
        self.held_bytes -= nbytes
        self._freed.set()
        self._freed = trio.Event()
