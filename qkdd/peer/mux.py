"""The one multiplexer of a peer session: each channel kind (frames, key-store inventory, reservations, ...)
gets its own in-order queue, so each protocol reads only its own messages.

    mux = ChannelMux(session, [PIPELINE, INVENTORY, RESERVATION])
    mux.attach()                            # before the session reads: its reader dispatches into the queues
    stream = mux.stream(RESERVATION)
    await stream.send(payload); payload = await stream.receive()

Flow control, in one place: every queue is bounded by records and all of a session's queues together by
bytes (the session's receive_queue_bytes, budget.py), frame inboxes made with `stream.subqueue()`
included. When a queue or the budget is full the session's reader waits, so TCP flow control slows the
peer: an authenticated peer that floods cannot make this end hold more than about the byte budget, and
nothing a reader is still to read is dropped. Every registered channel must therefore keep being read (a
reader that is done closes its queue, which gives its bytes back). A record on a channel nobody
registered, or whose reader is done, is logged and dropped (a peer with a newer purpose).
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable, Iterable

import trio

from qkdd.log_limit import RateLimitedLog

from .budget import ByteBudget
from .errors import SessionClosedError
from .session import PeerSession

log = logging.getLogger("qkdd.peer")

QUEUE_RECORDS = 64       # records per channel queue or frame inbox


class BoundedQueue:
    """Records for one reader, bounded by `max_records` and by a byte budget shared with other queues."""

    def __init__(self, budget: ByteBudget, max_records: int = QUEUE_RECORDS) -> None:
        self.budget = budget
        self._send, self._receive = trio.open_memory_channel[bytes](max_records)

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
        payload = await self._receive.receive()
        self.budget.release(len(payload))
        return payload

    def get_nowait(self) -> bytes:
        """The next record if one is queued; trio.WouldBlock if none, EndOfChannel once ended."""
        payload = self._receive.receive_nowait()
        self.budget.release(len(payload))
        return payload

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.get()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def end(self) -> None:
        """No more records will come (the session is over): the reader gets what is queued, then the end."""
        self._send.close()

    def close(self) -> None:
        """The reader is done: release what it left unread and refuse further records."""
        while True:
            try:
                payload = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            self.budget.release(len(payload))
        self._receive.close()


class MuxStream:
    """One channel of a session: send and receive payloads of this purpose only."""

    def __init__(self, session: PeerSession, channel: int, queue: BoundedQueue, mux: "ChannelMux") -> None:
        self.session = session
        self.channel = channel
        self.queue = queue
        self._mux = mux

    async def send(self, payload: bytes) -> None:
        await self.session.send(self.channel, payload)

    async def send_many(self, payloads: list[bytes]) -> None:
        """Several payloads of this channel in one write."""
        await self.session.send_many([(self.channel, payload) for payload in payloads])

    async def receive(self) -> bytes:
        """The next payload on this channel. Raises SessionClosedError once the session is over."""
        try:
            return await self.queue.get()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SessionClosedError(f"link {self.session.link_id}: session {self.session.session_id} "
                                     f"is over (channel {self.channel})") from None

    async def serve_inline(self, on_payload: Callable[[bytes], Awaitable[None]]) -> None:
        """Hand every payload of this channel to `await on_payload(payload)` straight from the session's
        reader, with no task switch (first what is queued already, in order), until the session ends;
        then SessionClosedError. The reader waits while `on_payload` runs (backpressure), so it returns
        promptly; it must not raise (an exception is logged and the payload dropped)."""
        while True:
            try:
                payload = self.queue.get_nowait()
            except trio.WouldBlock:
                break                     # nothing queued: from here on the reader calls on_payload itself
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise SessionClosedError(f"link {self.session.link_id}: session {self.session.session_id} "
                                         f"is over (channel {self.channel})") from None
            await on_payload(payload)
        ended = self._mux.route_inline(self.channel, on_payload)
        await ended.wait()
        raise SessionClosedError(f"link {self.session.link_id}: session {self.session.session_id} "
                                 f"is over (channel {self.channel})")

    def subqueue(self, max_records: int = QUEUE_RECORDS) -> BoundedQueue:
        """A further queue (a frame's inbox) under the same byte budget as every queue of the session."""
        return BoundedQueue(self.queue.budget, max_records)


class ChannelMux:
    def __init__(self, session: PeerSession, channels: Iterable[int], queue_records: int = QUEUE_RECORDS,
                 queue_bytes: int | None = None) -> None:
        channels = list(channels)
        for index, channel in enumerate(channels):
            if not 0 <= channel <= 0xFFFF or channel in channels[:index]:
                raise ValueError(f"channel {channel} is out of range or registered twice")
        self.session = session
        # one budget for all channels: what this end holds for the peer
        self.budget = ByteBudget(session.receive_queue_bytes if queue_bytes is None else queue_bytes)
        self._queues = {channel: BoundedQueue(self.budget, queue_records) for channel in channels}
        self._inline: dict[int, Callable[[bytes], Awaitable[None]]] = {}
        self._ended = trio.Event()
        self.dropped_records = 0
        self._drops = RateLimitedLog(log)

    @property
    def queued_bytes(self) -> int:
        """Payload bytes dispatched to queues (channels and subqueues) and not yet taken from them."""
        return self.budget.held_bytes

    def stream(self, channel: int) -> MuxStream:
        if channel not in self._queues:
            raise KeyError(f"channel {channel} is not registered with this mux")
        return MuxStream(self.session, channel, self._queues[channel], self)

    def attach(self) -> None:
        """Have the session's reader hand every record to `dispatch` (call before the session reads)."""
        self.session.route_all(self.dispatch)

    def route_inline(self, channel: int, on_payload: Callable[[bytes], Awaitable[None]]) -> trio.Event:
        """From now on `dispatch` hands `channel`'s records to `on_payload` instead of its queue (which
        must be empty: MuxStream.serve_inline); returns the event set when the session is over."""
        self._inline[channel] = on_payload
        return self._ended

    async def dispatch(self, channel: int, payload: bytes) -> None:
        """Queue one record for its channel's reader, waiting while there is no room (backpressure), or
        hand it to the channel's inline handler."""
        inline = self._inline.get(channel)
        if inline is not None:
            try:
                await inline(payload)
            except Exception:
                log.exception("link %s: channel %d: a record's handler failed; the record is dropped",
                              self.session.link_id, channel)
            return
        queue = self._queues.get(channel)
        if queue is not None and await queue.put(payload):
            return
        self.dropped_records += 1
        self._drops.log(logging.WARNING, "mux-unregistered" if queue is None else "mux-reader-done",
                        "link %s: session %s: dropped a %d-byte record on channel %d (%s)",
                        self.session.link_id, self.session.session_id, len(payload), channel,
                        "no reader registered" if queue is None else "its reader is done")

    async def run(self) -> None:
        """Dispatch what `session.receive()` yields until the session ends (for a session not attached)."""
        try:
            while True:
                try:
                    channel, payload = await self.session.receive()
                except SessionClosedError:
                    return
                await self.dispatch(channel, payload)
        finally:
            self.end()

    def end(self) -> None:
        """The session is over: readers get what is queued, then SessionClosedError."""
        for queue in self._queues.values():
            queue.end()
        self._ended.set()
        self._drops.flush()
