"""The event loop's watch: how long trio's one thread runs without polling I/O (a *stall*: no listener
accepts, reads or answers meanwhile), as a trio instrument, for /metrics, the daemon's log and the benchmarks.

Theory of operation
-------------------
trio alternates between waiting for I/O (`before_io_wait` .. `after_io_wait`) and running the tasks that
became runnable, one step each. The span from `after_io_wait` to the next `before_io_wait` is one *tick*:
a request that arrives during a tick waits at least until its end. The watch keeps the longest tick since
the process started (`worst_stall_s`), counts ticks over STALL_THRESHOLD_S (the 50 ms the throughput issue
allows), and remembers the task whose single step took longest in the worst tick (a coroutine name, never
data). A tick over LOG_STALL_S is one warning line naming that task.

With `trace_s` > 0 (QKDD_STALL_TRACE_S in the environment; profiling only) a sampler thread also records
the main thread's innermost frames (file:line, function) of any tick still running after `trace_s`, and
the warning line carries them: where the loop spent its time, without a profiler.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback

import trio

log = logging.getLogger("qkdd.loop")

STALL_THRESHOLD_S = 0.05        # issue 22: "no event-loop stall over 50 ms"
LOG_STALL_S = 1.0               # a tick this long is a warning line
TRACE_ENV = "QKDD_STALL_TRACE_S"
TRACE_FRAMES = 8


class LoopWatch(trio.abc.Instrument):
    """Ticks of the trio loop it is installed in (`trio.run(..., instruments=[watch])`)."""

    def __init__(self, *, clock=time.perf_counter, trace_s: float | None = None):
        self._clock = clock
        self.worst_stall_s = 0.0
        self.worst_task = ""            # the longest single step of the worst tick: its task's name
        self.worst_stall_cpu_s = 0.0    # the most CPU time the loop's thread spent in one tick (the rest of a
        # stall's wall time it waited: for the GIL, held by a worker thread, or for a CPU on a loaded host)
        self.stalls = 0                 # ticks over STALL_THRESHOLD_S
        self.ticks = 0
        self._tick_start_s: float | None = None
        self._tick_cpu_start_s = 0.0
        self._step_start_s = 0.0
        self._longest_step = (0.0, "")
        self._trace_s = _trace_from_env() if trace_s is None else trace_s
        self._trace: dict[tuple[str, ...], int] = {}      # sampled stack -> samples, this tick
        self._main_ident = threading.get_ident()
        self._closed = threading.Event()
        if self._trace_s > 0:
            threading.Thread(target=self._sample, name="qkdd-loop-trace", daemon=True).start()

    # -- trio's hooks (called on the loop's thread) ---------------------------------------------
    def after_io_wait(self, timeout: float) -> None:
        self._tick_start_s = self._clock()
        self._tick_cpu_start_s = time.thread_time()
        self._longest_step = (0.0, "")

    def before_task_step(self, task) -> None:
        self._step_start_s = self._clock()

    def after_task_step(self, task) -> None:
        step_s = self._clock() - self._step_start_s
        if step_s > self._longest_step[0]:
            self._longest_step = (step_s, task.name)

    def before_io_wait(self, timeout: float) -> None:
        if self._tick_start_s is None:
            return
        tick_s = self._clock() - self._tick_start_s
        self._tick_start_s = None
        self.ticks += 1
        if tick_s <= STALL_THRESHOLD_S:
            return
        self.stalls += 1
        tick_cpu_s = time.thread_time() - self._tick_cpu_start_s
        self.worst_stall_cpu_s = max(self.worst_stall_cpu_s, tick_cpu_s)
        if tick_s > self.worst_stall_s:
            self.worst_stall_s, self.worst_task = tick_s, self._longest_step[1]
        if tick_s > LOG_STALL_S or (self._trace_s > 0 and self._trace):
            trace, self._trace = self._trace, {}
            lines = [f"\n  {samples} samples:" + "".join(f"\n    {line}" for line in stack)
                     for stack, samples in sorted(trace.items(), key=lambda item: -item[1])]
            log.warning("event loop stalled %.3f s, %.3f s of it on a CPU (longest step %.3f s in %s)%s", tick_s,
                        tick_cpu_s, self._longest_step[0], self._longest_step[1] or "-", "".join(lines))

    def snapshot(self) -> dict:
        return {"worst_stall_s": round(self.worst_stall_s, 4), "worst_stall_cpu_s": round(self.worst_stall_cpu_s, 4),
                "worst_stall_task": self.worst_task,
                "stalls_over_50ms": self.stalls, "ticks": self.ticks}

    def close(self) -> None:
        """Stop the sampler thread (if any)."""
        self._closed.set()

    # -- the sampler thread (trace_s > 0 only) --------------------------------------------------
    def _sample(self) -> None:
        # An Event's wait, not time.sleep: it also ends the thread at once on close(), and it works under
        # libfaketime, whose clock_nanosleep refuses the absolute monotonic sleep time.sleep makes (EINVAL)
        while not self._closed.wait(self._trace_s / 4):
            start = self._tick_start_s
            if start is None or self._clock() - start < self._trace_s:
                continue
            frame = sys._current_frames().get(self._main_ident)
            if frame is None:
                continue
            stack = tuple(f"{entry.filename}:{entry.lineno} {entry.name}"
                          for entry in traceback.extract_stack(frame)[-TRACE_FRAMES:])
            self._trace[stack] = self._trace.get(stack, 0) + 1


def _trace_from_env() -> float:
    try:
        return max(0.0, float(os.environ.get(TRACE_ENV, "0")))
    except ValueError:
        return 0.0
