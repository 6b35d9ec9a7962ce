"""Serving a link's reservation service over an in-memory stream: the real ReservationService, registered
on a stand-in for the LinkChannel that only records the registration, so a test drives the exchange
(the KME's, /v1's) with a sans-IO endpoint at the other end and no sockets."""
from __future__ import annotations

import logging

import trio

from qkdd.link_channel import RESERVATION_CHANNEL
from qkdd.peer.errors import SessionClosedError
from qkdd.reservation.service import ReservationService


class RegistrationOnly:
    """Records what registers on it, as LinkChannel.register would; runs nothing."""

    def __init__(self) -> None:
        self.handlers = {}

    def register(self, channel: int, handler) -> None:
        self.handlers[channel] = handler


class MemoryStream:
    """One end of an in-memory session: send / receive, SessionClosedError once the other end closed.
    `sent` keeps every payload this end wrote, in order."""

    def __init__(self, inbound: trio.MemoryReceiveChannel, outbound: trio.MemorySendChannel) -> None:
        self.inbound, self.outbound = inbound, outbound
        self.sent: list[bytes] = []

    async def send(self, payload: bytes) -> None:
        try:
            await self.outbound.send(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise SessionClosedError("the other end closed") from None
        self.sent.append(payload)

    async def receive(self) -> bytes:
        try:
            return await self.inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SessionClosedError("the other end closed") from None

    async def serve_inline(self, on_payload) -> None:
        """As MuxStream.serve_inline: every payload to `on_payload` in order (a failing one is logged and
        dropped, as the mux does), until the stream ends with SessionClosedError."""
        while True:
            payload = await self.receive()
            try:
                await on_payload(payload)
            except Exception:
                logging.getLogger("qkdd.peer").exception("a record's handler failed; the record is dropped")

    async def aclose(self) -> None:
        """End the session from this end: the other end's receive raises SessionClosedError."""
        await self.outbound.aclose()


def memory_session(capacity: int = 16) -> tuple[MemoryStream, MemoryStream]:
    """Both ends of one in-memory session, each direction buffering `capacity` payloads."""
    a_out, b_in = trio.open_memory_channel[bytes](capacity)
    b_out, a_in = trio.open_memory_channel[bytes](capacity)
    return MemoryStream(a_in, a_out), MemoryStream(b_in, b_out)


def reservation_service(link_id: str):
    """(service, serve): `await serve(stream)` runs the service's exchange over `stream` (send / receive)."""
    channel = RegistrationOnly()
    service = ReservationService(link_id, channel)
    return service, channel.handlers[RESERVATION_CHANNEL]


async def serve_kme(kme, link_id: str, stream) -> None:
    """The KME's reservations on `link_id` over `stream`, until the stream ends."""
    service, serve = reservation_service(link_id)
    kme.attach(link_id, service)
    await serve(stream)
