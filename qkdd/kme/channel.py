"""The classical channel that carries the reservation exchange to each peer KME, on its own channel
number (ETSI014_CHANNEL) of a peer session:

- a peer whose `link_id` is one of this daemon's `[[links]]` with a running link engine: the engine's
  peer session (`register_on_engines`; the engine hands `KmeService.serve_channel` a stream per session,
  after the key stores' resynchronisation);
- a peer with its own `[etsi014.peers.channel]` table (a daemon without a link engine for that link, as
  when the key store is filled by other means): one PeerConnector of its own (`connector_for`),
  whose sessions hand the channel's records straight to `KmeService.serve_session`."""
from __future__ import annotations

from functools import partial

from qkdd.config import parse_host_port
from qkdd.kme.config import PeerKmeConfig
from qkdd.kme.service import KmeService
from qkdd.peer import PeerConnector, PeerSettings, load_private_key, load_public_key

ETSI014_CHANNEL = 0x0E14      # the mux channel of the reservation exchange


def register_on_engines(service: KmeService, peers, engines: dict) -> list[str]:
    """Serve the reservation exchange on the peer session of each peer's link engine (peers with their own
    channel table excepted); returns the link ids of peers that have neither (no Get key reaches them)."""
    unreached = []
    for peer in peers:
        if peer.channel is not None:
            continue
        engine = engines.get(peer.link_id)
        if engine is None:
            unreached.append(peer.link_id)
            continue
        engine.register_channel(ETSI014_CHANNEL, partial(service.serve_channel, peer.link_id))
    return unreached


def connector_for(service: KmeService, peer: PeerKmeConfig) -> PeerConnector:
    channel = peer.channel
    assert channel is not None
    settings = PeerSettings(
        link_id=peer.link_id,
        dial=parse_host_port(channel.dial) if channel.dial else None,
        listen=parse_host_port(channel.listen, allow_port_zero=True) if channel.listen else None)

    async def on_session(session) -> None:
        await service.serve_session(peer.link_id, session, ETSI014_CHANNEL)

    return PeerConnector(settings, load_private_key(channel.identity_key_file),
                         load_public_key(channel.peer_public_key_file), on_session)
