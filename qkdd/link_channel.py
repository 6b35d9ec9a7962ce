"""The daemon's classical channel for one link: one PeerConnector, one ChannelMux per session, shared by
every part that talks to the other end (link engine, WireGuard epochs, ...).

Each user registers a channel number and a session handler before `run`; on every (re)established
session each handler gets its own MuxStream and runs until the session ends (then again for the next).
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from qkdd.config import LinkConfig, parse_host_port
from qkdd.peer import ChannelMux, MuxStream, PeerConnector, PeerSession, PeerSettings, SessionClosedError
from qkdd.peer import load_private_key, load_public_key

log = logging.getLogger("qkdd.link")

# Channel numbers of the classical channel (records carry them; see qkdd.peer.records).
WIREGUARD_CHANNEL = 0x5747          # "WG": WireGuard epoch agreement (qkdd.consumers.wg_epoch)

StreamHandler = Callable[[MuxStream], Awaitable[None]]


class LinkChannel:
    def __init__(self, link: LinkConfig, *, settings: PeerSettings | None = None) -> None:
        self.link = link
        self.settings = settings or peer_settings(link)
        self._handlers: dict[int, StreamHandler] = {}

    def register(self, channel: int, handler: StreamHandler) -> None:
        if channel in self._handlers:
            raise ValueError(f"link {self.link.link_id}: channel {channel} registered twice")
        self._handlers[channel] = handler

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the session to the other end up and serve the registered handlers; raises IdentityError
        (before `started`) when the key files are unusable."""
        signing_key = load_private_key(self.link.peer_key_file)
        pinned = load_public_key(self.link.peer_public_key)
        connector = PeerConnector(self.settings, signing_key, pinned, self._on_session)
        await connector.run(task_status=task_status)

    async def _on_session(self, session: PeerSession) -> None:
        mux = ChannelMux(session, list(self._handlers))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            for channel, handler in self._handlers.items():
                nursery.start_soon(_until_session_ends, handler, mux.stream(channel))


async def _until_session_ends(handler: StreamHandler, stream: MuxStream) -> None:
    try:
        await handler(stream)
    except SessionClosedError:
        pass


def peer_settings(link: LinkConfig) -> PeerSettings:
    if link.peer_addr:
        return PeerSettings(link.link_id, dial=parse_host_port(link.peer_addr))
    return PeerSettings(link.link_id, listen=parse_host_port(link.peer_listen, allow_port_zero=True))
