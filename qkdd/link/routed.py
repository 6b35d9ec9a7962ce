"""Queues from the link engine's record router to its readers (a frame's task, a registered channel's
handler), bounded by records each and by bytes over all of one session's queues (qkdd.peer.budget).

When a queue is full the router waits, so the session's reader stops and TCP flow control slows the
peer: an authenticated peer that floods cannot make this end hold more than about the byte budget, and
no record is dropped. A reader that is done closes its queue: the bytes of the records it will never
take go back to the budget, and a later `put` says the reader is gone (the caller logs and drops).
"""
from __future__ import annotations

import trio

from qkdd.peer.budget import ByteBudget


class RoutedQueue:
    def __init__(self, budget: ByteBudget, max_records: int) -> None:
        self.budget = budget
        self._send, self.receive_channel = trio.open_memory_channel[bytes](max_records)

    async def put(self, payload: bytes) -> bool:
        """Queue `payload`, waiting while the queue or the budget is full; False if the reader is gone."""
        await self.budget.acquire(len(payload))
        try:
            await self._send.send(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.budget.release(len(payload))
            return False
        except BaseException:                       # cancelled while waiting for room
            self.budget.release(len(payload))
            raise
        return True

    async def get(self) -> bytes:
        """The next record, in order; trio.EndOfChannel or ClosedResourceError once closed."""
        payload = await self.receive_channel.receive()
        self.budget.release(len(payload))
        return payload

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.get()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        """The reader is done: release what it left unread and refuse further records."""
        while True:
            try:
                payload = self.receive_channel.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            self.budget.release(len(payload))
        self.receive_channel.close()
