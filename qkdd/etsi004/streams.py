"""ETSI 004 key streams at this end (sans-IO): OPEN_CONNECT's QoS negotiation, which client owns which KSID,
max_bps pacing within the stream's jitter, the rank of a stream's next chunk among streams competing for
key (priority, then deadline) and the TTL of chunks assigned but not fetched. Times are the caller's clock
(trio's).

QoS (GS QKD 004 V2.1.1 clause 6.1, table 2): a zero field asks for this end's default (the "NULL" of clause
6.1: the system provides what it considers appropriate). An OPEN whose min_bps exceeds what the link can
still promise, whose key_chunk_size exceeds MAX_CHUNK_BYTES, whose metadata mimetype is neither empty nor
"application/json", or whose jitter the link cannot meet is refused with status 7 and a counter proposal
(the closest QoS this end provides).

- Jitter is "the maximum expected deviation, in bps, for key delivery" (table 2): the stream's delivery
  rate stays within [max_bps - jitter, max_bps + jitter]. The lower edge is a promise: floor_bps =
  max(min_bps, max_bps - jitter) must fit in what the link can still promise (below); if it does not, the
  OPEN is refused (status 7) with the smallest jitter the link can meet, max_bps - available. The upper
  edge is pacing: a chunk may go out up to chunk_bits / max_bps - chunk_bits / (max_bps + jitter) seconds
  before its nominal time (chunk_bits / max_bps after the one before), never earlier, so each chunk's
  interval is at least chunk_bits / (max_bps + jitter) and the mean rate stays max_bps. A jitter of 0 asks
  for this end's value: max_bps - min_bps, the deviation down to the rate the stream is promised.
- Priority: "guidance ... about the priority level of the request. The handling of this information is
  left to the specific implementation" (table 2; clause 6.1 consideration 4). Here a larger value is a
  higher priority (0, the default, the lowest). It orders streams that compete for key: (1) at OPEN the
  link's capacity minus the floors of the open streams of equal or higher priority is what the new
  stream's floor is held against (lower-priority streams' promises do not count against it), and (2) when
  the key stock cannot serve every waiting GET_KEY, a higher-priority stream's chunk is assigned first and
  a lower one waits (and times out, status 6, if the stock never serves it); among equal priorities the
  stream closest to breaking its jitter floor (its chunk's latest time within jitter) goes first.
- Chunks this end assigned or recorded for the stream and not fetched within TTL seconds are erased
  (`expired`; durable across restarts in qkdd.etsi004.deadlines).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from qkdd.etsi004.wire import QoS, Status

DEFAULT_CHUNK_BYTES = 32
MAX_CHUNK_BYTES = 65536
JSON = "application/json"


@dataclass(frozen=True)
class Defaults:
    timeout_ms: int = 5000
    ttl_s: int = 3600


def floor_bps(qos: QoS) -> int:
    """The delivery rate a granted stream is promised: min_bps, or max_bps less its jitter if that is more."""
    return max(qos.min_bps, qos.max_bps - qos.jitter, 0)


def negotiate(asked: QoS, capacity_bps: float, defaults: Defaults = Defaults(), *,
              committed_bps: float = 0.0) -> tuple[Status, QoS]:
    """(SUCCESSFUL, the QoS granted) or (QOS_NOT_MET, the counter proposal). `committed_bps`: the floors of
    the open streams of equal or higher priority (Streams.committed_bps), which the link already promised."""
    available_bps = max(0.0, capacity_bps - committed_bps)
    granted = dataclasses.replace(
        asked,
        key_chunk_size=asked.key_chunk_size or DEFAULT_CHUNK_BYTES,
        max_bps=asked.max_bps or int(capacity_bps),
        timeout_ms=asked.timeout_ms or defaults.timeout_ms,
        ttl_s=asked.ttl_s or defaults.ttl_s)
    if not asked.jitter:
        granted = dataclasses.replace(granted, jitter=max(0, granted.max_bps - granted.min_bps))
    status = Status.SUCCESSFUL
    if granted.key_chunk_size > MAX_CHUNK_BYTES:
        granted, status = dataclasses.replace(granted, key_chunk_size=MAX_CHUNK_BYTES), Status.QOS_NOT_MET
    if granted.min_bps > available_bps:
        granted, status = dataclasses.replace(granted, min_bps=int(available_bps)), Status.QOS_NOT_MET
    if granted.max_bps - granted.jitter > available_bps:
        granted = dataclasses.replace(granted, jitter=math.ceil(granted.max_bps - available_bps))
        status = Status.QOS_NOT_MET
    if granted.metadata_mimetype not in ("", JSON):
        granted, status = dataclasses.replace(granted, metadata_mimetype=JSON), Status.QOS_NOT_MET
    return status, granted


@dataclass
class Stream:
    key_stream_id: str
    link_id: str
    owner: str                 # the client (certificate) that opened it
    qos: QoS
    next_at: float = 0.0       # pacing: the nominal time of the next chunk
    assigned: dict[int, float] = field(default_factory=dict)    # index -> when it was asked, not yet fetched

    def _interval_s(self, rate_bps: float) -> float:
        return self.qos.key_chunk_size * 8 / rate_bps if rate_bps > 0 else math.inf

    def early_s(self) -> float:
        """How much before its nominal time a chunk may go out: the pacing slack the jitter allows."""
        if self.qos.max_bps <= 0 or self.qos.jitter <= 0:
            return 0.0
        return self._interval_s(self.qos.max_bps) - self._interval_s(self.qos.max_bps + self.qos.jitter)

    def delay_s(self, now: float) -> float:
        """How long GET_KEY must wait before its chunk may go out (max_bps, less the jitter's slack)."""
        return max(0.0, self.next_at - self.early_s() - now)

    def deadline(self) -> float:
        """The latest time the next chunk may go out with the stream's rate still within its jitter floor
        (max_bps - jitter): its nominal time plus the slack of the slower interval."""
        if self.qos.max_bps <= 0:
            return self.next_at
        slower = self._interval_s(self.qos.max_bps - self.qos.jitter) if self.qos.jitter < self.qos.max_bps \
            else math.inf
        return self.next_at + slower - self._interval_s(self.qos.max_bps)

    def rank(self) -> tuple[int, float]:
        """Where the stream's next chunk stands among chunks competing for key: lower first (priority, then
        deadline)."""
        return (-self.qos.priority, self.deadline())

    def served(self, now: float) -> None:
        """A chunk went out at `now`: the next one is due chunk_bits / max_bps later."""
        if self.qos.max_bps > 0:
            self.next_at = max(self.next_at, now) + self.qos.key_chunk_size * 8 / self.qos.max_bps

    def expired(self, now: float) -> list[int]:
        """Indexes assigned more than TTL ago and never fetched; forgotten here (the caller erases them)."""
        late = [index for index, at in self.assigned.items() if now - at >= self.qos.ttl_s]
        for index in late:
            del self.assigned[index]
        return late


class Streams:
    """The open key streams of this end, by KSID."""

    def __init__(self) -> None:
        self._streams: dict[str, Stream] = {}

    def open(self, key_stream_id: str, link_id: str, owner: str, qos: QoS) -> tuple[Status, Stream | None]:
        """SUCCESSFUL with the stream (a new one, or the owner's own again with its first QoS: clause 6.1),
        or KSID_IN_USE when another client holds it."""
        stream = self._streams.get(key_stream_id)
        if stream is not None:
            if stream.owner != owner:
                return Status.KSID_IN_USE, None
            return Status.SUCCESSFUL, stream
        stream = self._streams[key_stream_id] = Stream(key_stream_id, link_id, owner, qos)
        return Status.SUCCESSFUL, stream

    def get(self, key_stream_id: str, owner: str) -> Stream | None:
        stream = self._streams.get(key_stream_id)
        return stream if stream is not None and stream.owner == owner else None

    def close(self, key_stream_id: str, owner: str) -> Stream | None:
        stream = self.get(key_stream_id, owner)
        if stream is not None:
            del self._streams[key_stream_id]
        return stream

    def all(self) -> list[Stream]:
        return list(self._streams.values())

    def committed_bps(self, priority: int) -> float:
        """The floors (floor_bps) of the open streams of priority `priority` or higher."""
        return float(sum(floor_bps(stream.qos) for stream in self._streams.values()
                         if stream.qos.priority >= priority))
