"""Rate-limited logging for events a remote party can trigger at will (refused handshakes, refused connections).

Each kind of message has a token bucket: `burst` messages pass at once, then `per_s` a second. What the
bucket holds back is counted and written as one line "N similar messages suppressed (kind)": before the
next message of that kind that passes, or by `flush()`, whichever comes first. The owner runs `run()`
(flush every SUMMARY_INTERVAL_S) next to whatever triggers the messages and flushes once more when it
stops, so a flood costs a few lines, not one per connection, and its count is written even when no
further message of that kind ever comes. Kinds are a small fixed set chosen by the caller (never an
address or other peer-chosen text), so the buckets cannot grow without bound.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio

DEFAULT_BURST = 10
DEFAULT_PER_S = 1.0
SUMMARY_INTERVAL_S = 10.0


@dataclass
class _Bucket:
    tokens: float
    updated_s: float
    suppressed: int = 0
    level: int = logging.INFO      # of the last message held back


class RateLimitedLog:
    """`log(level, kind, msg, *args)` as Logger.log, but at most `burst` then `per_s` a second per kind."""

    def __init__(self, logger: logging.Logger, *, burst: int = DEFAULT_BURST, per_s: float = DEFAULT_PER_S,
                 clock=time.monotonic) -> None:
        if burst < 1 or not per_s > 0:
            raise ValueError("burst must be >= 1 and per_s positive")
        self.logger = logger
        self.burst = burst
        self.per_s = per_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def log(self, level: int, kind: str, msg: str, *args, **kwargs) -> bool:
        """Log unless `kind` is over its rate; returns whether the message was written."""
        now = self._clock()
        bucket = self._buckets.get(kind)
        if bucket is None:
            bucket = self._buckets[kind] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated_s) * self.per_s)
        bucket.updated_s = now
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            bucket.level = level
            return False
        bucket.tokens -= 1.0
        self._summarise(kind, bucket)
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def flush(self) -> None:
        """Write the summary line of every kind with messages held back since its last line."""
        for kind, bucket in self._buckets.items():
            self._summarise(kind, bucket)

    async def run(self, interval_s: float | None = None) -> None:
        """flush() every `interval_s` (SUMMARY_INTERVAL_S) until cancelled."""
        while True:
            await trio.sleep(SUMMARY_INTERVAL_S if interval_s is None else interval_s)
            self.flush()

    def _summarise(self, kind: str, bucket: _Bucket) -> None:
        if bucket.suppressed:
            self.logger.log(bucket.level, "%d similar messages suppressed (%s)", bucket.suppressed, kind)
            bucket.suppressed = 0

    def suppressed(self, kind: str) -> int:
        """Messages of `kind` held back since the last one written."""
        bucket = self._buckets.get(kind)
        return bucket.suppressed if bucket is not None else 0
