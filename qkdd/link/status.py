"""What one link end has done and how it is: frame counts, key rates, the QBER history, the QBER gate's
state and the device's health, reported to /healthz (qkdd.health), Prometheus (qkdd.metrics) and the
`/v1/links` routes. The link engine records each frame's outcome here; nothing here does I/O but the
device health poll.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import trio

from qkdd.fault_episodes import FaultEpisodes
from qkdd.hal.base import Device, DeviceError
from qkdd.keystore import StoredKey
from qkdd.link.pipeline import FrameOutcome
from qkdd.link.qber_gate import Band, LinkState, QberGate, band_of

log = logging.getLogger("qkdd.link")

# Key rates: the bits of the frames recorded in the last RATE_WINDOW_S, over that window, or over the time since
# the peer session came up while that is shorter (at least 1 s). Both ends record the same frames within a
# moment of each other and their sessions start together, so both report the same rate; measuring from the
# first frame in the window instead (as before) counted a whole frame's bits over the fraction of a second
# between the first frames of a burst, and the two ends, recording that burst a moment apart, differed by 2x.
RATE_WINDOW_S = 10.0
HEALTH_POLL_S = 2.0
DEVICE_START_GRACE_S = 30.0     # a device not healthy this long after the link started is failing, not starting
QBER_HISTORY_SAMPLES = 20_000   # frames in the QBER time series of /v1/links/{id}/qber (about 4 MB; hours)


@dataclass(slots=True)
class QberSample:
    time_s: float
    qber: float
    qber_estimate: float | None
    secret_bits: int
    frame_id: int


class LockedGate:
    """The QBER gate shared by frames in worker threads; decisions are queued for the trio side."""

    def __init__(self, gate: QberGate):
        self.gate = gate
        self._lock = threading.Lock()
        self.decisions: deque = deque()

    def __call__(self, qber: float) -> str | None:
        with self._lock:
            decision = self.gate.observe_frame(qber, time.monotonic())
            self.decisions.append((qber, decision))
        if decision.keep_key:
            return None
        return f"QBER gate: link {decision.state.value} (frame QBER {qber:.4f}, threshold {self.gate.threshold})"

    def observe_health(self, healthy: bool):
        with self._lock:
            decision = self.gate.observe_health(healthy)
            if decision is not None:
                self.decisions.append((None, decision))


class LinkStatus:
    def __init__(self, link_id: str, *, key_bits: int, qber_threshold: float = 0.08, metrics=None,
                 health=None, clock=time.monotonic) -> None:
        self.link_id = link_id
        self._clock = clock                                          # monotonic seconds (tests pass their own)
        self.key_bits = key_bits
        self.metrics = metrics
        self.health = health
        self.gate = LockedGate(QberGate(threshold=qber_threshold))
        self.qber_history: deque[QberSample] = deque(maxlen=QBER_HISTORY_SAMPLES)
        self.frames_done = 0
        self.frames_aborted = 0
        self.frames_unpaired = 0                                     # device frames never paired
        self.totals = {"secret_bits": 0, "sifted_bits": 0, "keys": 0}
        self.cpu_s: dict[str, float] = {}                            # frame steps' thread CPU time by stage
        self.last_outcome: FrameOutcome | None = None
        self._rate_window: deque[tuple[float, int, int]] = deque()
        self._rates_since = clock()                                  # the session's start (rates' denominator)
        self.connected = False                                       # a prepared peer session is live
        self.device_up = False                                       # the device has answered healthy once
        self._started_s = clock()
        self.device_problem: str | None = None                       # the last failed health check's cause
        self.auth_halted = ""                                        # why the auth pool halted the link
        self.gate_qber: float | None = None                          # the QBER of the gate's last frame decision
        self.state = ""
        self.set_state("starting", "device and peer channel coming up")

    # -- frames ---------------------------------------------------------------------------------
    def add_cpu(self, stage: str, seconds: float) -> None:
        """CPU time a frame step spent in its worker thread (sifting, estimation, ..., store)."""
        self.cpu_s[stage] = self.cpu_s.get(stage, 0.0) + seconds

    def record(self, outcome: FrameOutcome) -> None:
        now = self._clock()
        self.last_outcome = outcome
        self.frames_done += 1
        if outcome.aborted:
            self.frames_aborted += 1
            log.info("link %s: frame %d dropped: %s", self.link_id, outcome.frame_id, outcome.aborted)
        elif outcome.codewords_given_up:
            log.info("link %s: frame %d: %d LDPC codewords given up (their key bits zeroed at both ends and counted "
                     "as disclosed), the rest reconciled", self.link_id, outcome.frame_id, outcome.codewords_given_up)
        self.totals["secret_bits"] += outcome.secret_bits
        self.totals["sifted_bits"] += outcome.sifted_key_bits
        self.totals["keys"] += outcome.keys
        qber = outcome.qber if outcome.qber is not None else outcome.qber_estimate
        if qber is not None:
            self.qber_history.append(QberSample(time.time(), qber, outcome.qber_estimate, outcome.secret_bits,
                                                outcome.frame_id))
        self._rate_window.append((now, outcome.secret_bits, outcome.sifted_bits))
        if self.metrics is None:
            return
        if outcome.keys:
            self.metrics.keys_stored(outcome.keys, self.key_bits)
        secure_bps, raw_bps = self._rates_at(now)
        self.metrics.rates(raw_bps=raw_bps, secure_bps=secure_bps)
        if qber is not None:
            self.metrics.channel(qber=qber, visibility=max(0.0, 1.0 - 2.0 * qber))
        if outcome.chsh_s is not None:
            self.metrics.chsh(outcome.chsh_s)

    def rates(self) -> tuple[float, float]:
        """(secret, sifted) bits per second over the last RATE_WINDOW_S (see RATE_WINDOW_S)."""
        return self._rates_at(self._clock())

    def _rates_at(self, now: float) -> tuple[float, float]:
        while self._rate_window and now - self._rate_window[0][0] > RATE_WINDOW_S:
            self._rate_window.popleft()
        span = min(RATE_WINDOW_S, max(now - self._rates_since, 1.0))
        return (sum(s for _, s, _ in self._rate_window) / span, sum(r for _, _, r in self._rate_window) / span)

    @staticmethod
    def qber_of(key: StoredKey) -> float | None:
        """The QBER of the frame `key` came from: its X-basis error rate after Cascade, which both ends count
        alike and store with the frame's keys, so both report the same value; None for keys an older
        version stored."""
        return key.qber

    @property
    def last_qber(self) -> float | None:
        return self.qber_history[-1].qber if self.qber_history else None

    # -- state ----------------------------------------------------------------------------------
    def session_up(self) -> None:
        if not self.connected:                      # a new session: its rates start now
            self._rates_since = self._clock()
            self._rate_window.clear()
        self.connected = True
        self.set_state_from_gate()

    def session_down(self) -> None:
        self.connected = False
        self.set_state("failed", "peer session lost; reconnecting")

    def drain_gate(self) -> None:
        """Apply the QBER gate's queued decisions: alarms, metrics and the link's state."""
        changed = False
        while self.gate.decisions:
            qber, decision = self.gate.decisions.popleft()
            changed = changed or decision.state_changed
            if qber is not None:
                self.gate_qber = qber
            if self.metrics is not None:
                if decision.threshold_exceeded:
                    self.metrics.qber_alarm(decision.threshold_exceeded)
                if decision.halted:
                    self.metrics.halted()
            if decision.halted:
                log.warning("link %s: key generation halted", self.link_id,
                            extra={"qber": qber, "state": decision.state.value})
        if changed or self.health is not None:
            self.set_state_from_gate()

    def auth_pool_dry(self, detail: str) -> None:
        """The authentication pool cannot pay for another frame's tags: key generation halts for good (until
        a restart with a new secret), reported DEGRADED."""
        if not self.auth_halted:
            log.error("link %s: key generation halted: %s", self.link_id, detail)
            if self.metrics is not None:
                self.metrics.halted()
        self.auth_halted = detail
        self.set_state("degraded", f"key generation halted: {detail}")

    def set_state_from_gate(self) -> None:
        if not self.connected:
            return
        if self.auth_halted:
            self.set_state("degraded", f"key generation halted: {self.auth_halted}")
            return
        if not self.device_up:
            self.set_state("starting", "peer session up; waiting for the device")
            return
        state = self.gate.gate.state
        last = self.last_qber
        # A gate decision can be drained before any frame's QBER is in the history (the first frames of a
        # restarted end, aborted by the gate, or still finishing in worker threads): the gate's own QBER.
        qber = last if last is not None else self.gate_qber
        qber_text = f"QBER {qber:.4f}" if qber is not None else "QBER"
        if state is LinkState.ACTIVE:
            nominal = last is None or band_of(min(last, 1.0)) is Band.NOMINAL
            self.set_state("running" if nominal else "degraded",
                           "generating keys" + (f", QBER {last:.4f}" if last is not None else ""))
        elif state is LinkState.SUSPENDED:
            self.set_state("suspended", f"{qber_text} at or above the threshold; key generation suspended")
        elif state is LinkState.HALTED:
            self.set_state("halted", f"{qber_text} at or above 11 %: key generation halted")
        elif self.device_problem is not None:
            self.set_state("fallback", f"gate DEGRADED: device unhealthy: {self.device_problem}"[:300])
        else:
            self.set_state("fallback", "gate DEGRADED: QBER above the threshold for too long, or the device "
                                       "unhealthy; key generation stopped until good frames return")

    def _report_device_without_session(self, ok: bool) -> None:
        """With no peer session (yet) the link's state still names a failing device, and leaves that state
        once the device answers again."""
        if not ok:
            self.set_state("fallback", f"device unhealthy: {self.device_problem}; no peer session"[:300])
        elif self.state == "fallback":
            self.set_state("starting", "device up; waiting for the peer session")

    def set_state(self, state: str, detail: str) -> None:
        self.state = state
        if self.health is not None:
            self.health.set_link_state(self.link_id, state, detail)

    # -- device ---------------------------------------------------------------------------------
    async def watch_device(self, device: Device) -> None:
        """Poll the device's health every HEALTH_POLL_S into the gate and the metrics, until cancelled. A device
        that does not log its own faults has them logged here, once per episode."""
        faults = None if device.reports_own_faults else FaultEpisodes(log, f"link {self.link_id}: device")
        while True:
            health = None
            try:
                health = await device.health()
                channel = await device.channel_status()
            except DeviceError as exc:
                ok, failure = False, str(exc)
                self.device_problem = failure
            else:
                ok, failure = health.ok, health.detail
                self.device_problem = None if health.ok else health.detail
                if self.metrics is not None:
                    self.metrics.device(temperature_celsius=health.temperature_c, uptime_s=health.uptime_s)
                    self.metrics.channel(loss_db=channel.link_loss_db, photon_rate_hz=channel.photon_rate_hz)
            # A device that has not come up yet (its other half not connected) is starting, not failing: only
            # a device that was healthy once, or is still not after DEVICE_START_GRACE_S, degrades the link.
            if not self.device_up and (ok or self._clock() - self._started_s > DEVICE_START_GRACE_S):
                self.device_up = True
                self.set_state_from_gate()
            if self.device_up and not self.connected:
                self._report_device_without_session(ok)
            if self.device_up:
                self.gate.observe_health(ok)
                if faults is not None and not ok:
                    faults.fault("unhealthy" if health is not None else "health check failed",
                                 f"unhealthy: {failure}" if health is not None else f"health check failed: {failure}")
                elif faults is not None:
                    faults.recovered("healthy again")
            if faults is not None:
                faults.flush()
            self.drain_gate()
            await trio.sleep(HEALTH_POLL_S)
