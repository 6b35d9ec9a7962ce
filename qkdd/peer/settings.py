"""Settings of one link's classical channel (who dials, timeouts, caps), checked when built."""
from __future__ import annotations

from dataclasses import dataclass

from .framing import DEFAULT_MAX_RECORD_BYTES, MAX_HANDSHAKE_BODY_BYTES

# Payload bytes queued for the application per session (and again per ChannelMux) before the reader waits:
# a few of the largest pipeline records (a 4 M-detection SLOTS message is 16 MiB), not 64 × 64 MiB.
DEFAULT_RECEIVE_QUEUE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PeerSettings:
    """Exactly one of `dial` (this end connects, the handshake INITIATOR) and `listen` (this end
    accepts, the RESPONDER) is set, as (host, port); port 0 lets the system choose a listening port."""

    link_id: str
    dial: tuple[str, int] | None = None
    listen: tuple[str, int] | None = None
    handshake_timeout_s: float = 10.0  # TCP connect + TLS + authenticated handshake
    heartbeat_interval_s: float = 5.0  # a PING record at least this often
    idle_timeout_s: float = 20.0  # no record for this long: the peer is gone
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # cap on a record frame body
    receive_queue_records: int = 64  # records buffered for the application before backpressure
    receive_queue_bytes: int = DEFAULT_RECEIVE_QUEUE_BYTES  # ...and bytes (one record always fits)
    backoff_initial_s: float = 0.5  # first redial delay; doubles per failure (with jitter)
    # Redial delay ceiling; a completed handshake resets the backoff. Short: a link has one peer, and on a cut
    # path every attempt already blocks for handshake_timeout_s, so a longer ceiling only delays the session
    # after a partition ends (30 s here kept a link down ~25 s after a 5-minute partition; issue 24 asks 5 s).
    backoff_max_s: float = 4.0
    max_pending_handshakes: int = 8  # listener: connections still handshaking at once
    tls_cert_file: str | None = None  # optional; otherwise an ephemeral self-signed certificate
    tls_key_file: str | None = None
    # Channels whose records carry no session MAC (TRANSCRIPT_DATA, qkdd.peer.records): their consumer
    # authenticates them itself (auth "its": the frame path's Wegman-Carter transcript tags).
    transcript_channels: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if (self.dial is None) == (self.listen is None):
            raise ValueError(f"link {self.link_id!r}: set exactly one of peer dial and listen addresses")
        host, port = self.address
        lowest_port = 1 if self.dial is not None else 0
        if not isinstance(host, str) or not isinstance(port, int) or not lowest_port <= port <= 65535:
            raise ValueError(f"link {self.link_id!r}: peer address must be (host, port {lowest_port}..65535)")
        if not 1 <= len(self.link_id.encode()) <= 255:
            raise ValueError("link id must be 1..255 bytes of UTF-8")
        for name in ("handshake_timeout_s", "heartbeat_interval_s", "idle_timeout_s",
                     "backoff_initial_s", "backoff_max_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"link {self.link_id!r}: peer {name} must be positive")
        if self.idle_timeout_s <= self.heartbeat_interval_s:
            raise ValueError(f"link {self.link_id!r}: peer idle_timeout_s must exceed heartbeat_interval_s")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"link {self.link_id!r}: peer backoff_max_s must be >= backoff_initial_s")
        if self.max_record_bytes < MAX_HANDSHAKE_BODY_BYTES:
            raise ValueError(f"link {self.link_id!r}: peer max_record_bytes must be >= {MAX_HANDSHAKE_BODY_BYTES}")
        if self.receive_queue_records < 1 or self.receive_queue_bytes < 1 or self.max_pending_handshakes < 1:
            raise ValueError(f"link {self.link_id!r}: peer queue and pending-handshake limits must be >= 1")
        if not all(isinstance(c, int) and 0 <= c <= 0xFFFF for c in self.transcript_channels):
            raise ValueError(f"link {self.link_id!r}: transcript channels must be channel numbers 0..65535")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(f"link {self.link_id!r}: set both or neither of peer tls_cert_file and tls_key_file")

    @property
    def address(self) -> tuple[str, int]:
        return self.dial if self.dial is not None else self.listen
