"""Socket options of the peer channel's TCP connection: a cap on the retransmission timeout, so that a
session that outlived a short network partition carries traffic again within a second of its end.

Without the cap, TCP doubles its retransmission timeout on every unanswered retransmission (RFC 6298
§5.5) up to 120 s on Linux: after a 10 s partition the next retransmission, the first that can get
through, came 2-13 s after the path was back. Linux 6.15 added TCP_RTO_MAX_MS (tcp(7); its setter
accepts 1000..120000 ms), capping that backoff per socket. A link has one peer and one connection, so a
1 s ceiling costs at most one small retransmission a second during a partition. Older kernels refuse
the option; the session then keeps the kernel's default and recovers at its next retransmission.
"""
from __future__ import annotations

import errno
import logging
import socket

log = logging.getLogger("qkdd.peer")

TCP_RTO_MAX_MS = getattr(socket, "TCP_RTO_MAX_MS", 44)     # linux/tcp.h, since Linux 6.15
RTO_CEILING_MS = 1000                                       # the smallest ceiling the kernel accepts

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
