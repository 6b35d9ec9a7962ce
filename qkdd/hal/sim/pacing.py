"""Real-time pacing of the simulated source (sans-IO): when each frame of pulse slots is complete on the
wall clock, given the clock rate. The caller sleeps until `frame_done_s`.

A frame of S slots at clock f lasts S / f seconds; frame k is complete at start + (slots of frames 0..k)/f.
If the host falls behind by more than `max_lag_s`, the timeline restarts at the present instead of
bursting to catch up (a real source would have lost those pulses; the simulator just resumes).
"""
from __future__ import annotations


class Pacer:
    def __init__(self, clock_hz: float, *, realtime: bool = True, max_lag_s: float = 1.0):
        if not clock_hz > 0:
            raise ValueError(f"clock_hz: must be > 0, got {clock_hz!r}")
        self.clock_hz = float(clock_hz)
        self.realtime = realtime
        self.max_lag_s = max_lag_s
        self._next_start_s: float | None = None

    def restart(self, now_s: float) -> None:
        """Start a new timeline at `now_s` (first frame, or after the receiver reconnected)."""
        self._next_start_s = now_s

    def frame_done_s(self, slot_count: int, now_s: float) -> float:
        """The wall-clock time at which a frame of `slot_count` slots, emitted next, is complete."""
        if not self.realtime:
            return now_s
        start_s = now_s if self._next_start_s is None or now_s - self._next_start_s > self.max_lag_s \
            else self._next_start_s
        done_s = start_s + slot_count / self.clock_hz
        self._next_start_s = done_s
        return done_s
