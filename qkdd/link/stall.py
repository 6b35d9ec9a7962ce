"""The stall watch: tells a link that runs but yields (almost) no key from one that works, behind the
"stalled" alarm of /healthz (qkdd.health.LINK_ALARMS).

Theory of operation
-------------------
A link is *generating* while its engine reports "running" or "degraded" and its key store's guard does
not pause it; only then must its secret key rate reach the configured floor (`min_key_rate_bps`). The
watch samples the rate (the engine's window of the last 10 s) every STALL_POLL_S. A sample below the
floor while generating starts a clock; a sample at or above it, or the link not generating (its own
state then says why: failed, suspended, store_full, ...), resets it. The clock reaching `stall_after_s`
raises "stalled" (one warning line); a sample back at the floor, or the link leaving the generating
states, clears it (one info line). Time comes in with each sample: no I/O in StallDetector.

    state     sample                                                 next
    ok        generating, rate < floor                               below (clock starts)
    below     generating, rate < floor, clock >= stall_after_s       stalled
    below     rate >= floor, or not generating                       ok
    stalled   rate >= floor, or not generating                       ok
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import trio

log = logging.getLogger("qkdd.link")

OK, BELOW, STALLED = "ok", "below", "stalled"
STALL_POLL_S = 2.0
GENERATING_STATES = frozenset({"running", "degraded"})
ALARM = "stalled"


@dataclass(frozen=True)
class StallChange:
    stalled: bool
    detail: str


class StallDetector:
    """Rate samples in, "stalled" raised or cleared out."""

    def __init__(self, min_key_rate_bps: float, stall_after_s: float):
        if not min_key_rate_bps > 0 or not stall_after_s > 0:
            raise ValueError("min_key_rate_bps and stall_after_s must be positive")
        self.min_key_rate_bps = min_key_rate_bps
        self.stall_after_s = stall_after_s
        self.state = OK
        self._below_since_s = 0.0

    def observe(self, now_s: float, rate_bps: float, generating: bool) -> StallChange | None:
        if not generating or rate_bps >= self.min_key_rate_bps:
            was_stalled, self.state = self.state == STALLED, OK
            if was_stalled:
                why = "not generating" if not generating else f"secret key rate {rate_bps:.0f} bit/s"
                return StallChange(False, f"stall over ({why})")
            return None
        if self.state == OK:
            self.state, self._below_since_s = BELOW, now_s
        if self.state == BELOW and now_s - self._below_since_s >= self.stall_after_s:
            self.state = STALLED
            return StallChange(True, f"secret key rate {rate_bps:.0f} bit/s, below the floor of "
                                     f"{self.min_key_rate_bps:g} bit/s for {now_s - self._below_since_s:.0f} s")
        return None


async def run_stall_watch(link_id: str, health, detector: StallDetector, rate_bps: Callable[[], float],
                          generating: Callable[[], bool], *, poll_s: float = STALL_POLL_S) -> None:
    """Sample every `poll_s` until cancelled; raise and clear the link's "stalled" alarm on `health`."""
    try:
        while True:
            change = detector.observe(trio.current_time(), rate_bps(), generating())
            if change is not None:
                if change.stalled:
                    log.warning("link %s: stalled: %s", link_id, change.detail)
                    health.set_link_alarm(link_id, ALARM, change.detail)
                else:
                    log.info("link %s: %s", link_id, change.detail)
                    health.clear_link_alarm(link_id, ALARM)
            await trio.sleep(poll_s)
    finally:
        health.clear_link_alarm(link_id, ALARM)


async def watch_stall(engine, health, min_key_rate_bps: float, stall_after_s: float) -> None:
    """The stall watch of a link engine (its status: state and secret key rate; its store guard)."""
    status = engine.status

    def generating() -> bool:
        guard = getattr(engine, "store_guard", None)
        return status.state in GENERATING_STATES and not (guard is not None and guard.paused)

    await run_stall_watch(engine.link_id, health, StallDetector(min_key_rate_bps, stall_after_s),
                          lambda: status.rates()[0], generating)
