"""Socket options of the peer channel's TCP connection: a cap on the retransmission timeout, so that a
session that outlived a short network partition carries traffic again within a second of its end.

Without the cap, TCP doubles its retransmission timeout on every unanswered retransmission (RFC 6298
§5.5) up to 120 s on Linux: after a 10 s partition the next retransmission, the first that can get
through, came 2-13 s after the path was back. Linux 6.15 added TCP_RTO_MAX_MS (tcp(7); its setter
accepts 1000..120000 ms), capping that backoff per socket. A link has one peer and one connection, so a
1 s ceiling costs at most one small retransmission a second during a partition. Older kernels refuse
the option (Debian 12 runs 6.1): there the dialling end watches its connection instead
(`retransmission_state`, `path_stalled`) and, once the peer is silent past its heartbeat while TCP is
backing off beyond the ceiling, dials a new session beside the stalled one (qkdd/peer/connector.py): a
fresh connection's SYN is sent again every second, so the new session comes up within about a second of
the path's return, whatever the old connection's backoff has grown to.
"""
from __future__ import annotations

import errno
import logging
import socket
import sys

log = logging.getLogger("qkdd.peer")

TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)     # linux/tcp.h, since Linux 6.15
RTO_CEILING_MS = 1000                                       # the smallest ceiling the kernel accepts
# struct tcp_info (linux/tcp.h): u8 state, ca_state, retransmits, probes, backoff, ...; u32 rto (µs) at byte 8
_TCP_INFO_BYTES = 104
_BACKOFF_AT, _RTO_AT = 4, 8
# A healthy peer sends a record at least every heartbeat interval; this much more silence is a stall.
SILENCE_MARGIN_S = 1.0

_unsupported_logged = False


def cap_retransmission_timeout(sock: socket.socket, ceiling_ms: int = RTO_CEILING_MS) -> bool:
    """Cap `sock`'s retransmission timeout at `ceiling_ms`; False where the kernel has no such option."""
    global _unsupported_logged
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS, ceiling_ms)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        if not _unsupported_logged:
            _unsupported_logged = True
            log.info("this kernel cannot cap TCP's retransmission timeout (TCP_RTO_MAX_MS, Linux 6.15): after "
                     "a short partition a peer session resumes at TCP's next retransmission")
        return False


def retransmission_cap_supported() -> bool:
    """Whether this kernel takes TCP_RTO_MAX_MS (probed on a socket of its own)."""
    with socket.socket() as probe:
        return cap_retransmission_timeout(probe)


def retransmission_state(sock) -> tuple[int, float] | None:
    """(exponential backoff count, current retransmission timeout in s) of a connected TCP socket, from
    TCP_INFO (tcp(7)); None where the socket or kernel does not say."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except (OSError, AttributeError):
        return None
    if len(info) < _RTO_AT + 4:
        return None
    return info[_BACKOFF_AT], int.from_bytes(info[_RTO_AT:_RTO_AT + 4], sys.byteorder) / 1e6


def path_stalled(silent_s: float, heartbeat_interval_s: float, backoff: int, rto_s: float) -> bool:
    """Whether a session's connection waits on TCP's backoff rather than on the peer: nothing came for
    longer than the peer's heartbeat interval (plus a margin), and TCP has backed off past the ceiling a
    capped kernel would keep (its next retransmission, the first that could get through, is far)."""
    return (silent_s > heartbeat_interval_s + SILENCE_MARGIN_S and backoff > 0
            and rto_s > RTO_CEILING_MS / 1000)
