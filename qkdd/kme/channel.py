"""Which classical channel carries the KME's reservations to each peer KME: the link's own LinkChannel
when the peer's `link_id` is one of this daemon's `[[links]]` with a peer identity, otherwise the channel
its `[etsi014.peers.channel]` table describes (a daemon whose key store is filled by other means). Either
way it is the one LinkChannel of that link, whose reservation service the KME attaches to."""
from __future__ import annotations

from qkdd.config import parse_host_port
from qkdd.kme.config import PeerKmeConfig
from qkdd.kme.service import KmeService
from qkdd.link.service import Links
from qkdd.link_channel import LinkChannel
from qkdd.peer import IdentityError, PeerSettings, load_private_key, load_public_key
from qkdd.preflight import StartupError


def channel_of_table(peer: PeerKmeConfig) -> LinkChannel:
    """The LinkChannel a peer's channel table describes; IdentityError or OSError when its key files are
    unusable."""
    table = peer.channel
    assert table is not None
    settings = PeerSettings(
        link_id=peer.link_id,
        dial=parse_host_port(table.dial) if table.dial else None,
        listen=parse_host_port(table.listen, allow_port_zero=True) if table.listen else None)
    return LinkChannel(peer.link_id, settings, load_private_key(table.identity_key_file),
                       load_public_key(table.peer_public_key_file))


def attach_kme(kme: KmeService, peers, links: Links) -> list[str]:
    """Attach the KME to the reservation service of each peer KME's link, opening the channel of a peer's
    table first; returns the link ids of peers with neither (no Get key reaches them). StartupError for
    a table whose key files are unusable, or for a link that has a channel of its own already."""
    unreached = []
    for index, peer in enumerate(peers):
        if peer.node:                           # reached through the relay network, not a link
            continue
        if peer.channel is not None:
            key = f"etsi014.peers[{index}].channel"
            if peer.link_id in links.channels:
                raise StartupError(key, f"link {peer.link_id} has its classical channel already (a [[links]] entry "
                                        "with a peer identity, or an earlier table): remove this table")
            try:
                links.add_channel(channel_of_table(peer))
            except (IdentityError, OSError) as exc:
                raise StartupError(key, str(exc)) from None
        service = links.reservations.get(peer.link_id)
        if service is None:
            unreached.append(peer.link_id)
        elif not kme.attached(peer.link_id):
            kme.attach(peer.link_id, service)
    return unreached
