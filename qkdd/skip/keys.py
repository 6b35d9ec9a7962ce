"""SKIP keys of one link: a router asks this end for a new key for a remote system, and the router at the
other end fetches the same key by its id from its own qkdd, once. The same exchange as /v1's keys
(qkdd.link.key_requests) under SKIP's own purpose and holder ("skip:<bits>"), so neither interface can
fetch the other's keys. Each end erases its copy when it hands the key over (the draft's exactly-once rule)."""
from __future__ import annotations

from qkdd.link.key_requests import KeyRequests
from qkdd.reservation.protocol import Purpose, SkipKeyReservation


class SkipKeys(KeyRequests):
    PURPOSE = Purpose.SKIP
    HOLDER_PREFIX = "skip:"
    RESERVATION = SkipKeyReservation
    metrics = None           # a qkdd.metrics.AppLinkMetrics of the link (set by qkdd.apps), or None
