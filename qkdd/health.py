"""Health of the daemon and of each link: what /healthz reports and what systemd STATUS= says.

Theory of operation: the daemon moves through DAEMON_STATES; each configured link registers at start
with state "configured" and the link engine reports every change with `set_link_state(link_id, state,
detail)`. Each state is healthy or not (tables below). The daemon is *healthy* when it is serving (both
listeners bound, not stopping) and no link is in an unhealthy state. A link that is configured but not
running yet ("configured", "starting") is healthy: the daemon does what it was told and says so in the
link's state; only a link that cannot deliver keys for a reason that needs attention (QBER alarm that
suspended or halted it, device or peer failure) makes /healthz answer 503.

Calls come from trio tasks (not from worker threads). Watchers wait for the next change with
`await health.wait_changed(seen_version)`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import trio

# state -> (healthy, meaning)
DAEMON_STATES: dict[str, tuple[bool, str]] = {
    "starting": (False, "binding listeners"),
    "serving": (True, "listeners bound, serving requests"),
    "stopping": (False, "shutting down: no new connections, finishing requests in flight"),
}

LINK_STATES: dict[str, tuple[bool, str]] = {
    "configured": (True, "in the configuration; no link engine runs it yet"),
    "starting": (True, "device and peer channel coming up"),
    "running": (True, "generating keys, QBER in the nominal band (< 3 %)"),
    "degraded": (True, "generating keys, QBER in the degraded or warning band (3 % .. 8 %)"),
    "suspended": (False, "key generation suspended: QBER in the critical band (8 % .. 11 %)"),
    "halted": (False, "key generation halted: QBER >= 11 % (compromised) or an operator stop"),
    "failed": (False, "device or peer channel failed; retrying"),
    "stopped": (True, "stopped with the daemon"),
}

RETRY_AFTER_S = 5


@dataclass(frozen=True)
class StateRecord:
    state: str
    detail: str
    since_s: float           # wall-clock time of the last change (Unix seconds)


class Health:
    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._started_s = clock()
        self._daemon = StateRecord("starting", DAEMON_STATES["starting"][1], self._started_s)
        self._links: dict[str, StateRecord] = {}
        self._version = 0
        self._changed = trio.Event()

    # ---- writers -------------------------------------------------------------------------------------

    def set_daemon_state(self, state: str, detail: str = "") -> None:
        if state not in DAEMON_STATES:
            raise ValueError(f"unknown daemon state {state!r}")
        self._daemon = StateRecord(state, detail or DAEMON_STATES[state][1], self._clock())
        self._bump()

    def register_link(self, link_id: str, detail: str = "") -> None:
        """Add a configured link (state "configured"); registering twice is an error."""
        if link_id in self._links:
            raise ValueError(f"link {link_id!r} is already registered")
        self._links[link_id] = StateRecord("configured", detail or LINK_STATES["configured"][1], self._clock())
        self._bump()

    def set_link_state(self, link_id: str, state: str, detail: str = "") -> None:
        """Report a link's new state; `detail` is a short human sentence (never key material)."""
        if link_id not in self._links:
            raise KeyError(f"link {link_id!r} is not registered")
        if state not in LINK_STATES:
            raise ValueError(f"unknown link state {state!r}")
        current = self._links[link_id]
        detail = detail or LINK_STATES[state][1]
        if (current.state, current.detail) == (state, detail):
            return
        self._links[link_id] = StateRecord(state, detail, self._clock())
        self._bump()

    # ---- readers -------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    def link_state(self, link_id: str) -> StateRecord:
        return self._links[link_id]

    def healthy(self) -> bool:
        return DAEMON_STATES[self._daemon.state][0] and all(
            LINK_STATES[record.state][0] for record in self._links.values())

    def report(self) -> dict[str, Any]:
        """The /healthz document."""
        now = self._clock()
        return {
            "status": "ok" if self.healthy() else "unhealthy",
            "daemon": {"state": self._daemon.state, "detail": self._daemon.detail,
                       "since": _iso(self._daemon.since_s), "uptime_s": round(now - self._started_s, 3)},
            "links": [{"link_id": link_id, "state": record.state, "healthy": LINK_STATES[record.state][0],
                       "detail": record.detail, "since": _iso(record.since_s)}
                      for link_id, record in self._links.items()],
        }

    def status_line(self) -> str:
        """One line for systemd STATUS=: daemon state and link counts by state."""
        counts: dict[str, int] = {}
        for record in self._links.values():
            counts[record.state] = counts.get(record.state, 0) + 1
        links = ", ".join(f"{count} {state}" for state, count in sorted(counts.items())) or "none"
        return f"{self._daemon.state}; links: {links}"

    async def wait_changed(self, seen_version: int) -> int:
        """Return the current version once it differs from `seen_version`."""
        while self._version == seen_version:
            await self._changed.wait()
        return self._version

    def _bump(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()


def _iso(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))
