"""Exceptions of the classical channel. Messages name what went wrong and where, never key material."""
from __future__ import annotations


class PeerError(Exception):
    """Something went wrong on the classical channel; the session (if any) is torn down."""


class FrameError(PeerError):
    """The byte stream is not valid framing: bad magic, version or type, oversized or truncated frame."""


class HandshakeError(PeerError):
    """The authenticated handshake failed. `alert` is the code sent to the peer (see handshake.Alert)."""

    def __init__(self, message: str, alert: int) -> None:
        super().__init__(message)
        self.alert = alert


class PeerAuthenticationError(HandshakeError):
    """The peer did not prove possession of the pinned ML-DSA-65 key (wrong key or bad signature)."""


class PeerRefusedError(HandshakeError):
    """The peer aborted the handshake with an (unauthenticated) alert."""


class RecordError(PeerError):
    """A record failed its MAC or sequence check (tampering, replay, reordering, or a foreign key)."""


class SessionTruncatedError(PeerError):
    """The connection ended without the peer's authenticated close record."""


class PeerResetError(SessionTruncatedError):
    """The peer's host took the connection and reset or closed it before a session was established: nothing
    listens behind it yet (a proxy or port forward in front of a daemon that is restarting), or a listener
    with every handshake slot taken."""


class PeerTimeoutError(PeerError):
    """The peer stayed silent past a deadline (handshake timeout or idle timeout)."""


class SessionClosedError(PeerError):
    """The session is over (closed by either side or torn down); no more sends or receives."""
