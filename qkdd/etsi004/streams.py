"""ETSI 004 key streams at this end (sans-IO): OPEN_CONNECT's QoS negotiation, which client owns which KSID,
max_bps pacing and the TTL of chunks assigned but not fetched. Times are the caller's clock (trio's).

QoS (GS QKD 004 V2.1.1 clause 6.1, table 2): a zero field asks for this end's default. An OPEN whose
min_bps exceeds what the link sustains, whose key_chunk_size exceeds MAX_CHUNK_BYTES or whose metadata
mimetype is neither empty nor "application/json" is refused with status 7 and a counter proposal (the
closest QoS this end provides). max_bps paces GET_KEY: chunk n+1 is handed out no earlier than
chunk_bits / max_bps after chunk n. Chunks this end assigned or recorded for the stream and not fetched
within TTL seconds are erased (`expired`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from qkdd.etsi004.wire import QoS, Status

DEFAULT_CHUNK_BYTES = 32
MAX_CHUNK_BYTES = 65536
JSON = "application/json"


@dataclass(frozen=True)
class Defaults:
    timeout_ms: int = 5000
    ttl_s: int = 3600


def negotiate(asked: QoS, capacity_bps: float, defaults: Defaults = Defaults()) -> tuple[Status, QoS]:
    """(SUCCESSFUL, the QoS granted) or (QOS_NOT_MET, the counter proposal)."""
    granted = dataclasses.replace(
        asked,
        key_chunk_size=asked.key_chunk_size or DEFAULT_CHUNK_BYTES,
        max_bps=asked.max_bps or int(capacity_bps),
        timeout_ms=asked.timeout_ms or defaults.timeout_ms,
        ttl_s=asked.ttl_s or defaults.ttl_s)
    status = Status.SUCCESSFUL
    if granted.key_chunk_size > MAX_CHUNK_BYTES:
        granted, status = dataclasses.replace(granted, key_chunk_size=MAX_CHUNK_BYTES), Status.QOS_NOT_MET
    if granted.min_bps > capacity_bps:
        granted, status = dataclasses.replace(granted, min_bps=int(capacity_bps)), Status.QOS_NOT_MET
    if granted.metadata_mimetype not in ("", JSON):
        granted, status = dataclasses.replace(granted, metadata_mimetype=JSON), Status.QOS_NOT_MET
    return status, granted


@dataclass
class Stream:
    key_stream_id: str
    link_id: str
    owner: str                 # the client (certificate) that opened it
    qos: QoS
    next_at: float = 0.0       # pacing: the earliest time of the next chunk
    assigned: dict[int, float] = field(default_factory=dict)    # index -> when it was asked, not yet fetched

    def delay_s(self, now: float) -> float:
        """How long GET_KEY must wait before its chunk may go out (max_bps)."""
        return max(0.0, self.next_at - now)

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
