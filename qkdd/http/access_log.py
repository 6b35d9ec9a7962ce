"""The access log of one HTTP listener: a line per exchange (`msg=request` with request_id, method, path,
status, duration_ms, client), written when the event loop has nothing else to run.

Formatting and writing a line costs a busy KME about a tenth of its time per request. Nothing waits for
the line, so the connection only notes the exchange and `run()` writes the lines in the loop's idle
moments (while requests wait on the peer KME, say), MAX_DELAY_S at the latest when it never idles
(trio.testing.wait_all_tasks_blocked is trio's one public way to learn that nothing else can run).
Each line is an ordinary record of the listener's logger (same handlers, format and level), carrying the
time the exchange ended; it may follow a line logged after it by up to MAX_DELAY_S. `flush()` writes
what is left (the listener calls it when it stops). A crash loses at most the last MAX_DELAY_S of lines.
"""
from __future__ import annotations

import logging
import time

import trio

try:
    # trio.testing's own function, imported from where trio keeps it: `import trio.testing` also imports pytest
    # wherever it is installed (trio's RaisesGroup), ~0.2 s of a daemon's restart on a loaded 2-core machine.
    from trio._core import wait_all_tasks_blocked
except ImportError:                     # a trio that moved it: the public name, at that cost
    from trio.testing import wait_all_tasks_blocked

MAX_DELAY_S = 0.1
LINES_PER_PASS = 16          # then the loop runs its other tasks before the next lines


class AccessLog:
    def __init__(self, logger: logging.Logger, listener: str) -> None:
        self.logger = logger
        self.listener = listener
        self._lines: list[tuple[float, dict]] = []
        self._noted = trio.Event()

    def note(self, request_id: str, method: str, path: str, status: int, duration_ms: float,
             client: str) -> None:
        """An exchange ended now; its line is written soon (nothing when the logger skips INFO)."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self._lines.append((time.time(), {"listener": self.listener, "request_id": request_id, "method": method,
                                          "path": path, "status": status, "duration_ms": round(duration_ms, 1),
                                          "client": client}))
        self._noted.set()

    async def run(self) -> None:
        """Write noted lines when the loop idles, or MAX_DELAY_S after the first is noted. Runs beside
        the listener's connections; cancel it, then flush()."""
        while True:
            await self._noted.wait()
            self._noted = trio.Event()
            with trio.move_on_after(MAX_DELAY_S) as late:
                while self._lines:
                    await wait_all_tasks_blocked()    # every other task waits: an idle moment
                    self._write(LINES_PER_PASS)
            if late.cancelled_caught:
                self.flush()

    def flush(self) -> None:
        self._write(len(self._lines))

    def _write(self, count: int) -> None:
        lines, self._lines = self._lines[:count], self._lines[count:]
        for ended, fields in lines:
            record = self.logger.makeRecord(self.logger.name, logging.INFO, "(unknown file)", 0, "request", (),
                                            None, extra=fields)
            record.created, record.msecs = ended, (ended - int(ended)) * 1000.0
            self.logger.handle(record)
