"""Classical channel between the two qkdd ends of a link: framing, authenticated handshake, records,
sessions, and the connector that keeps one session per link alive.

    connector = PeerConnector(settings, signing_key, pinned_peer_key, on_session)
    await nursery.start(connector.run)
    # on_session(session) runs once per (re)established session:
    #     await session.send(channel, payload); channel, payload = await session.receive()
    #     or per-purpose streams: ChannelMux(session, [SIFTING, ...]).stream(SIFTING)
"""
from .connector import PeerConnector
from .errors import (FrameError, HandshakeError, PeerAuthenticationError, PeerError, PeerRefusedError,
                     PeerTimeoutError, RecordError, SessionClosedError, SessionTruncatedError)
from .handshake import Role
from .identity import (IdentityError, generate_identity, key_fingerprint, load_private_key, load_public_key,
                       save_private_key, save_public_key)
from .mux import ChannelMux, MuxStream
from .session import PeerSession
from .settings import PeerSettings

__all__ = [
    "ChannelMux", "FrameError", "HandshakeError", "IdentityError", "MuxStream", "PeerAuthenticationError",
    "PeerConnector", "PeerError", "PeerRefusedError", "PeerSession", "PeerSettings", "PeerTimeoutError",
    "RecordError", "Role", "SessionClosedError", "SessionTruncatedError", "generate_identity", "key_fingerprint",
    "load_private_key", "load_public_key", "save_private_key", "save_public_key",
]
