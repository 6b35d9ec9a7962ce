"""Device faults logged once per episode, not once per retry: the first fault of an episode is one line, a
later fault of a kind not yet seen in it one more, repeats are counted into a summary line at most every
`summary_interval_s`, and the end of the episode is one "recovered" line with its duration and count.

Theory of operation
-------------------
A driver retries a failing device every fraction of a second for as long as it fails; logging every try
floods the journal and hides the one line that matters. Each source of faults (a vendor KME's key calls,
a tty, an SDK library) owns one FaultEpisodes. `fault(kind, message)` starts an episode or counts into the
current one; `recovered(message)` ends it, `flush()` (called from the owner's polling loop) writes a due
summary. An episode of faults with `ends_when_quiet` (data faults in a stream that otherwise works: CRC
errors, garbage) has no recovery event: it ends by itself once no fault came for a summary interval.
Kinds are a small fixed set chosen by the driver (error classes, never text from the device), so the
per-episode tally stays bounded.

    state      event                     next       written
    IDLE       fault                     FAILING    the fault's message
    FAILING    fault of a new kind       FAILING    the fault's message
    FAILING    fault of a seen kind      FAILING    nothing (counted); a summary once the interval is over
    FAILING    flush, interval over      FAILING    a summary of what was counted, if anything
    FAILING    recovered                 IDLE       "<message> after T s (N faults)"
    FAILING    flush or fault, an        IDLE       a summary of what was counted, if anything
               interval without a fault             (ends_when_quiet only; a fault then starts anew)
    IDLE       recovered / flush         IDLE       nothing
"""
from __future__ import annotations

import logging
import time
from collections import Counter

SUMMARY_INTERVAL_S = 60.0


class FaultEpisodes:
    """Faults of one source under `prefix` (e.g. "link a-b: vendor KME"), logged once per episode;
    `summary_interval_s` defaults to SUMMARY_INTERVAL_S."""

    def __init__(self, logger: logging.Logger, prefix: str, *, summary_interval_s: float | None = None,
                 ends_when_quiet: bool = False, clock=time.monotonic) -> None:
        self.summary_interval_s = SUMMARY_INTERVAL_S if summary_interval_s is None else summary_interval_s
        if not self.summary_interval_s > 0:
            raise ValueError("summary_interval_s must be positive")
        self.logger = logger
        self.prefix = prefix
        self.ends_when_quiet = ends_when_quiet
        self._clock = clock
        self.failing = False
        self.faults = 0                       # in the current episode
        self._started_s = 0.0
        self._last_fault_s = 0.0
        self._summary_s = 0.0                 # when the last line of this episode was written
        self._kinds: set[str] = set()
        self._counted: Counter[str] = Counter()
        self._last_message = ""
        self._level = logging.WARNING

    def fault(self, kind: str, message: str, level: int = logging.WARNING) -> bool:
        """One fault; returns whether a line was written."""
        now = self._clock()
        self._end_if_quiet(now)
        self._last_fault_s = now
        self.faults += 1
        if not self.failing or kind not in self._kinds:
            if not self.failing:
                self.failing, self.faults, self._started_s = True, 1, now
            self._kinds.add(kind)
            self._summary_s = now
            self.logger.log(level, "%s: %s", self.prefix, message)
            return True
        self._counted[kind] += 1
        self._last_message, self._level = message, level
        return self._summary_if_due(now)

    def recovered(self, message: str = "recovered") -> bool:
        """The source works again: ends the episode with one line; returns whether one was written."""
        if not self.failing:
            return False
        now = self._clock()
        self.logger.info("%s: %s after %.1f s (%d faults)", self.prefix, message, now - self._started_s, self.faults)
        self._reset()
        return True

    def flush(self) -> bool:
        """Write a due summary (and end a quiet episode); returns whether a line was written."""
        if not self.failing:
            return False
        now = self._clock()
        return self._end_if_quiet(now) or self._summary_if_due(now)

    def _summary_if_due(self, now: float) -> bool:
        if not self._counted or now - self._summary_s < self.summary_interval_s:
            return False
        self._summary()
        self._summary_s = now
        return True

    def _summary(self) -> None:
        total = sum(self._counted.values())
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self._counted.items()))
        self.logger.log(self._level, "%s: %d more faults since the last line (%s); last: %s", self.prefix, total,
                        kinds, self._last_message)
        self._counted.clear()

    def _end_if_quiet(self, now: float) -> bool:
        if not (self.failing and self.ends_when_quiet) or now - self._last_fault_s < self.summary_interval_s:
            return False
        written = bool(self._counted)
        if written:
            self._summary()
        self._reset()
        return written

    def _reset(self) -> None:
        self.failing, self.faults = False, 0
        self._kinds.clear()
        self._counted.clear()
