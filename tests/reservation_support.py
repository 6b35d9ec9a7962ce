"""Serving a link's reservation service over an in-memory stream: the real ReservationService, registered
on a stand-in for the LinkChannel that only records the registration, so a test drives the exchange
(the KME's, /v1's) with a sans-IO endpoint at the other end and no sockets."""
from __future__ import annotations

from qkdd.link_channel import RESERVATION_CHANNEL
from qkdd.reservation.service import ReservationService


class RegistrationOnly:
    """Records what registers on it, as LinkChannel.register would; runs nothing."""

    def __init__(self) -> None:
        self.handlers = {}

    def register(self, channel: int, handler) -> None:
        self.handlers[channel] = handler


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
