"""Rate limit of link-state floods (sans-IO): token buckets that drop the announcements of an origin that
originates faster than the network's configured rate, and the messages of a link that carries more than its
share of the network's floods, before their signatures cost a verification.

Theory of operation
-------------------
Flooding (linkstate.py) forwards an announcement once per origination: every node forwards to each
neighbour only what is newer than what it holds. So a well-behaved origin puts at most its origination rate
on each link, and a link carries at most the sum over the origins it can hear from, plus one copy of the
whole database when its session starts. Two buckets bound both, in the manner of OSPF's MinLSArrival
(RFC 2328 section 13, a newer LSA of one origin within MinLSArrival is discarded), but with a burst so that
a few changes close together (links coming up at start) all pass:

    bucket        what takes a token                          holds                      refills
    origin O      an announcement of O newer than the held    ORIGIN_BURST               per_origin_per_s
                  one (duplicates and stale copies take none)
    link L        every announcement message arriving on L,   LINK_BURST + ORIGIN_BURST  per_origin_per_s x
                  before it is decoded                        x (nodes known + 1)        (nodes known + 1)

An empty bucket drops the announcement ("rate-limited"); nothing else changes, so a later announcement of
the same origin (its periodic refresh, or a neighbour's re-flood of it) is accepted once tokens are back:
floods still converge, at most one refill interval late. A node throttles its own originations (service.py)
to OWN_BURST and OWN_RATE_FRACTION of the rate, so that its neighbours never drop a legitimate announcement of it, even
when the network delays some of them more than others (the margin of the burst absorbs the bunching).

The origin buckets are bounded (MAX_ORIGIN_BUCKETS, least recently used out); link buckets exist only for
this node's configured links.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

ORIGIN_BURST = 20                 # originations of one origin that pass at once (a start-up's link changes)
OWN_BURST = 15                    # what a node allows itself: less, so delays on the way never cause a drop
OWN_RATE_FRACTION = 0.8
LINK_BURST = 32                   # on top of every known origin's burst, per link
MAX_ORIGIN_BUCKETS = 2048         # twice linkstate.MAX_NODES: held origins and those waiting for a voucher
DEFAULT_PER_ORIGIN_PER_S = 1.0


@dataclass
class TokenBucket:
    capacity: float
    per_s: float
    tokens: float
    updated_s: float

    def take(self, now_s: float, *, capacity: float | None = None, per_s: float | None = None) -> bool:
        """One token if there is one (refilled up to `now_s`); `capacity` and `per_s` may change per call."""
        if capacity is not None:
            self.capacity = capacity
        if per_s is not None:
            self.per_s = per_s
        elapsed_s = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.capacity, self.tokens + elapsed_s * self.per_s)
        self.updated_s = max(self.updated_s, now_s)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def wait_s(self, now_s: float) -> float:
        """Seconds from `now_s` until a token is there (0 when one is)."""
        tokens = min(self.capacity, self.tokens + max(0.0, now_s - self.updated_s) * self.per_s)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.per_s


class FloodLimiter:
    """The buckets of one node. `now_s` is monotonic time, passed in."""

    def __init__(self, per_origin_per_s: float = DEFAULT_PER_ORIGIN_PER_S) -> None:
        if not per_origin_per_s > 0:
            raise ValueError("per_origin_per_s must be positive")
        self.per_origin_per_s = per_origin_per_s
        self._origins: OrderedDict[str, TokenBucket] = OrderedDict()
        self._links: dict[str, TokenBucket] = {}

    def origin_bucket(self, origin: str, now_s: float) -> TokenBucket:
        bucket = self._origins.get(origin)
        if bucket is None:
            bucket = self._origins[origin] = TokenBucket(ORIGIN_BURST, self.per_origin_per_s, ORIGIN_BURST, now_s)
            while len(self._origins) > MAX_ORIGIN_BUCKETS:
                self._origins.popitem(last=False)
        self._origins.move_to_end(origin)
        return bucket

    def admit_origin(self, origin: str, now_s: float) -> bool:
        """A new announcement of `origin` (newer than the one held) may be accepted."""
        return self.origin_bucket(origin, now_s).take(now_s)

    def own_bucket(self, now_s: float) -> TokenBucket:
        """The bucket a node throttles its own originations with."""
        return TokenBucket(OWN_BURST, self.per_origin_per_s * OWN_RATE_FRACTION, OWN_BURST, now_s)

    def admit_link(self, link_id: str, now_s: float, nodes_known: int) -> bool:
        """One more announcement message on `link_id` may be looked at."""
        capacity = LINK_BURST + ORIGIN_BURST * (nodes_known + 1)
        per_s = self.per_origin_per_s * (nodes_known + 1)
        bucket = self._links.get(link_id)
        if bucket is None:
            bucket = self._links[link_id] = TokenBucket(capacity, per_s, capacity, now_s)
        return bucket.take(now_s, capacity=capacity, per_s=per_s)
