"""The classical channel to each peer KME while no link engine runs the link's session: one
PeerConnector per `[[etsi014.peers]]` entry with a `channel` table, carrying the reservation exchange on
its own mux channel. Once the link engine owns the session it calls `KmeService.serve_channel` with a
stream of its ChannelMux on ETSI014_CHANNEL instead, and this module goes away."""
from __future__ import annotations

import trio

from qkdd.config import parse_host_port
from qkdd.kme.config import PeerKmeConfig
from qkdd.kme.service import KmeService
from qkdd.peer import ChannelMux, PeerConnector, PeerSettings, load_private_key, load_public_key

ETSI014_CHANNEL = 0x0E14      # the mux channel of the reservation exchange


def connector_for(service: KmeService, peer: PeerKmeConfig) -> PeerConnector:
    channel = peer.channel
    assert channel is not None
    settings = PeerSettings(
        link_id=peer.link_id,
        dial=parse_host_port(channel.dial) if channel.dial else None,
        listen=parse_host_port(channel.listen, allow_port_zero=True) if channel.listen else None)

    async def on_session(session) -> None:
        mux = ChannelMux(session, [ETSI014_CHANNEL])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            await service.serve_channel(peer.link_id, mux.stream(ETSI014_CHANNEL))
            nursery.cancel_scope.cancel()

    return PeerConnector(settings, load_private_key(channel.identity_key_file),
                         load_public_key(channel.peer_public_key_file), on_session)
