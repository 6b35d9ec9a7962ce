"""Per-purpose streams over one session: each registered channel (sifting, reconciliation, key-store
resync, ...) gets its own in-order queue, so each protocol reads only its own messages.

    mux = ChannelMux(session, [SIFTING, CASCADE, KEYSTORE_SYNC])
    nursery.start_soon(mux.run)             # dispatches until the session ends
    cascade = mux.stream(CASCADE)
    await cascade.send(payload); payload = await cascade.receive()

Queues are bounded, by records per channel and by bytes over all channels (the session's
receive_queue_bytes, budget.py); when one is full, dispatch waits (backpressure on the whole session), so a protocol
that stops reading its channel eventually stalls the others: every registered channel must be read.
A record on a channel nobody registered is logged and dropped (a peer with a newer purpose).
"""
from __future__ import annotations

import logging
from typing import Iterable

import trio

from .budget import ByteBudget
from .errors import SessionClosedError
from .session import PeerSession

log = logging.getLogger("qkdd.peer")


class MuxStream:
    """One channel of a session: send and receive payloads of this purpose only."""

    def __init__(self, session: PeerSession, channel: int, receive_channel: trio.MemoryReceiveChannel,
                 budget: ByteBudget | None = None) -> None:
        self.session = session
        self.channel = channel
        self._incoming = receive_channel
        self._budget = budget

    async def send(self, payload: bytes) -> None:
        await self.session.send(self.channel, payload)

    async def receive(self) -> bytes:
        """The next payload on this channel. Raises SessionClosedError once the session is over."""
        try:
            payload = await self._incoming.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SessionClosedError(f"link {self.session.link_id}: session {self.session.session_id} "
                                     f"is over (channel {self.channel})") from None
        if self._budget is not None:
            self._budget.release(len(payload))
        return payload


class ChannelMux:
    def __init__(self, session: PeerSession, channels: Iterable[int], queue_records: int = 64,
                 queue_bytes: int | None = None) -> None:
        self.session = session
        self._queues: dict[int, tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel]] = {}
        for channel in channels:
            if not 0 <= channel <= 0xFFFF or channel in self._queues:
                raise ValueError(f"channel {channel} is out of range or registered twice")
            self._queues[channel] = trio.open_memory_channel[bytes](queue_records)
        # one budget for all channels: what the mux holds for this peer, as the session's own queue
        self._budget = ByteBudget(session.receive_queue_bytes if queue_bytes is None else queue_bytes)
        self.dropped_records = 0

    @property
    def queued_bytes(self) -> int:
        """Payload bytes dispatched to channel queues and not yet received from them."""
        return self._budget.held_bytes

    def stream(self, channel: int) -> MuxStream:
        if channel not in self._queues:
            raise KeyError(f"channel {channel} is not registered with this mux")
        return MuxStream(self.session, channel, self._queues[channel][1], self._budget)

    async def run(self) -> None:
        """Dispatch incoming records to their channel's queue until the session ends."""
        try:
            while True:
                try:
                    channel, payload = await self.session.receive()
                except SessionClosedError:
                    return
                queue = self._queues.get(channel)
                if queue is None:
                    self.dropped_records += 1
                    log.warning("link %s: session %s: dropped a %d-byte record on unregistered channel %d",
                                self.session.link_id, self.session.session_id, len(payload), channel)
                    continue
                await self._budget.acquire(len(payload))
                await queue[0].send(payload)
        finally:
            for send_channel, _ in self._queues.values():
                send_channel.close()
