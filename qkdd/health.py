"""Health of the daemon and of each link: what /healthz reports and what systemd STATUS= says.

Theory of operation: the daemon moves through DAEMON_STATES; each configured link registers at start
with state "configured" and the link engine reports its state with `set_link_state(link_id, state,
detail)`. Watchers beside the engine raise and clear alarms on a link (`set_link_alarm`,
`clear_link_alarm`): the key store's guard (store_full, store_failed) and the stall watch (stalled).
A link's state as reported is its engine's state, unless that is a healthy one and an alarm is raised:
then the first raised alarm of LINK_ALARMS (in table order) is its state, with its detail; /healthz lists
every raised alarm beside it. Each state and alarm is healthy or not (tables below). The daemon is
*healthy* when it is serving (both listeners bound, not stopping) and no link's reported state is
unhealthy. A link that is configured but not running yet ("configured", "starting") is healthy: the
daemon does what it was told and says so in the link's state; only a link that cannot deliver keys for
a reason that needs attention (QBER alarm that suspended or halted it, device or peer failure, a key
store that cannot write, a key rate stalled below its floor) makes /healthz answer 503. A healthy daemon
with no *working* link (none generating keys: WORKING_STATES) still answers 200, since systemd and a load
balancer should keep it, but its body says "degraded" instead of "ok" so that nobody reads it as delivering.

A change is a change of the daemon's state or of a link's reported state or alarms; a new detail alone
(the engine repeats its state with the last frame's QBER after every frame) is kept for /healthz but is
not a change: `since` stays, and watchers (`await health.wait_changed(seen_version)`, the daemon's
"state changed" line and systemd STATUS=) are not woken. Calls come from trio tasks (not from worker
threads).
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
    "fallback": (False, "the QBER gate's DEGRADED state (fallback policy): QBER above the threshold for "
                        "degrade_after_s, or the device unhealthy; no key until good frames return"),
    "failed": (False, "device or peer channel failed; retrying"),
    "stopped": (True, "stopped with the daemon"),
}

# alarm -> (healthy, meaning); the first raised one, in this order (the unhealthy first), is a healthy
# link's reported state.
LINK_ALARMS: dict[str, tuple[bool, str]] = {
    "store_failed": (False, "the key store cannot write (disk full or failing); key generation paused until "
                            "it writes again"),
    "stalled": (False, "running, but the secret key rate stayed below min_key_rate_bps for stall_after_s"),
    "store_full": (True, "the key store holds its configured capacity; key generation paused until keys are "
                         "handed out or expire"),
}

# A link whose reported state is one of these generates keys (stored or served); any other is not working.
WORKING_STATES = frozenset({"running", "degraded"})

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
        self._alarms: dict[str, dict[str, StateRecord]] = {}     # link -> alarm -> record
        self._version = 0
        self._changed = trio.Event()

    # ---- writers -------------------------------------------------------------------------------------

    def set_daemon_state(self, state: str, detail: str = "") -> None:
        if state not in DAEMON_STATES:
            raise ValueError(f"unknown daemon state {state!r}")
        detail = detail or DAEMON_STATES[state][1]
        if state == self._daemon.state:
            self._daemon = StateRecord(state, detail, self._daemon.since_s)
            return
        self._daemon = StateRecord(state, detail, self._clock())
        self._bump()

    def register_link(self, link_id: str, detail: str = "") -> None:
        """Add a configured link (state "configured"); registering twice is an error."""
        if link_id in self._links:
            raise ValueError(f"link {link_id!r} is already registered")
        self._links[link_id] = StateRecord("configured", detail or LINK_STATES["configured"][1], self._clock())
        self._alarms[link_id] = {}
        self._bump()

    def set_link_state(self, link_id: str, state: str, detail: str = "") -> None:
        """Report a link's new state; `detail` is a short human sentence (never key material)."""
        if link_id not in self._links:
            raise KeyError(f"link {link_id!r} is not registered")
        if state not in LINK_STATES:
            raise ValueError(f"unknown link state {state!r}")
        current = self._links[link_id]
        detail = detail or LINK_STATES[state][1]
        if current.state == state:
            self._links[link_id] = StateRecord(state, detail, current.since_s)     # a new detail: no change
            return
        self._links[link_id] = StateRecord(state, detail, self._clock())
        self._bump()

    def set_link_alarm(self, link_id: str, alarm: str, detail: str = "") -> None:
        """Raise `alarm` (LINK_ALARMS) on a link, or give a raised one a new detail (not a change)."""
        if link_id not in self._links:
            raise KeyError(f"link {link_id!r} is not registered")
        if alarm not in LINK_ALARMS:
            raise ValueError(f"unknown link alarm {alarm!r}")
        alarms = self._alarms[link_id]
        detail = detail or LINK_ALARMS[alarm][1]
        if alarm in alarms:
            alarms[alarm] = StateRecord(alarm, detail, alarms[alarm].since_s)
            return
        alarms[alarm] = StateRecord(alarm, detail, self._clock())
        self._bump()

    def clear_link_alarm(self, link_id: str, alarm: str) -> None:
        """Clear a raised alarm; clearing one that is not raised does nothing."""
        if link_id not in self._links:
            raise KeyError(f"link {link_id!r} is not registered")
        if self._alarms[link_id].pop(alarm, None) is not None:
            self._bump()

    # ---- readers -------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    def link_state(self, link_id: str) -> StateRecord:
        """The link's state as reported: its engine's, or the alarm that stands in for it."""
        return self._reported(link_id)

    def link_alarms(self, link_id: str) -> list[str]:
        """The alarms raised on a link, in LINK_ALARMS order."""
        return [alarm for alarm in LINK_ALARMS if alarm in self._alarms[link_id]]

    def healthy(self) -> bool:
        return DAEMON_STATES[self._daemon.state][0] and all(
            _healthy(self._reported(link_id).state) for link_id in self._links)

    def report(self) -> dict[str, Any]:
        """The /healthz document."""
        now = self._clock()
        working = sum(self._reported(link_id).state in WORKING_STATES for link_id in self._links)
        status = "unhealthy" if not self.healthy() else ("ok" if working else "degraded")
        return {
            "status": status, "working_links": working,
            "daemon": {"state": self._daemon.state, "detail": self._daemon.detail,
                       "since": _iso(self._daemon.since_s), "uptime_s": round(now - self._started_s, 3)},
            "links": [{"link_id": link_id, "state": record.state, "healthy": _healthy(record.state),
                       "detail": record.detail, "since": _iso(record.since_s), "alarms": self.link_alarms(link_id)}
                      for link_id, record in ((link_id, self._reported(link_id)) for link_id in self._links)],
        }

    def status_line(self) -> str:
        """One line for systemd STATUS=: daemon state and link counts by state."""
        counts: dict[str, int] = {}
        for link_id in self._links:
            state = self._reported(link_id).state
            counts[state] = counts.get(state, 0) + 1
        links = ", ".join(f"{count} {state}" for state, count in sorted(counts.items())) or "none"
        return f"{self._daemon.state}; links: {links}"

    async def wait_changed(self, seen_version: int) -> int:
        """Return the current version once it differs from `seen_version`."""
        while self._version == seen_version:
            await self._changed.wait()
        return self._version

    def states(self) -> tuple[str, dict[str, str]]:
        """The daemon's state and each link's reported state (what a change is a change of)."""
        return self._daemon.state, {link_id: self._reported(link_id).state for link_id in self._links}

    def _reported(self, link_id: str) -> StateRecord:
        record = self._links[link_id]
        if not LINK_STATES[record.state][0]:
            return record
        alarms = self._alarms[link_id]
        for alarm in LINK_ALARMS:
            if alarm in alarms:
                return alarms[alarm]
        return record

    def _bump(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()


def _healthy(state: str) -> bool:
    return (LINK_STATES.get(state) or LINK_ALARMS[state])[0]


def _iso(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))
