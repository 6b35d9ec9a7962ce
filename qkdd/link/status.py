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

from qkdd.hal.base import Device, DeviceError
from qkdd.keystore import StoredKey
from qkdd.link.pipeline import FrameOutcome
from qkdd.link.qber_gate import Band, LinkState, QberGate, band_of

log = logging.getLogger("qkdd.link")

RATE_WINDOW_S = 10.0
HEALTH_POLL_S = 2.0
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
                 health=None) -> None:
        self.link_id = link_id
        self.key_bits = key_bits
        self.metrics = metrics
        self.health = health
        self.gate = LockedGate(QberGate(threshold=qber_threshold))
        self.qber_history: deque[QberSample] = deque(maxlen=QBER_HISTORY_SAMPLES)
        self.frames_done = 0
        self.frames_aborted = 0
        self.frames_unpaired = 0                                     # device frames never paired
        self.totals = {"secret_bits": 0, "sifted_bits": 0, "keys": 0}
        self.last_outcome: FrameOutcome | None = None
        self._rate_window: deque[tuple[float, int, int]] = deque()
        self.connected = False                                       # a prepared peer session is live
        self.device_problem: str | None = None                       # the last failed health check's cause
        self.state = ""
        self.set_state("starting", "device and peer channel coming up")

    # -- frames ---------------------------------------------------------------------------------
    def record(self, outcome: FrameOutcome) -> None:
        now = time.monotonic()
        self.last_outcome = outcome
        self.frames_done += 1
        if outcome.aborted:
            self.frames_aborted += 1
            log.info("link %s: frame %d dropped: %s", self.link_id, outcome.frame_id, outcome.aborted)
        self.totals["secret_bits"] += outcome.secret_bits
        self.totals["sifted_bits"] += outcome.sifted_key_bits
        self.totals["keys"] += outcome.keys
        qber = outcome.qber if outcome.qber is not None else outcome.qber_estimate
        if qber is not None:
            self.qber_history.append(QberSample(time.time(), qber, outcome.qber_estimate, outcome.secret_bits,
                                                outcome.frame_id))
        self._rate_window.append((now, outcome.secret_bits, outcome.sifted_bits))
        while self._rate_window and now - self._rate_window[0][0] > RATE_WINDOW_S:
            self._rate_window.popleft()
        if self.metrics is None:
            return
        for _ in range(outcome.keys):
            self.metrics.key_stored(self.key_bits)
        span = max(now - self._rate_window[0][0], 1.0) if len(self._rate_window) > 1 else RATE_WINDOW_S
        self.metrics.rates(raw_bps=sum(r for _, _, r in self._rate_window) / span,
                           secure_bps=sum(s for _, s, _ in self._rate_window) / span)
        if qber is not None:
            self.metrics.channel(qber=qber, visibility=max(0.0, 1.0 - 2.0 * qber))

    def rates(self) -> tuple[float, float]:
        """(secret, sifted) bits per second over the last RATE_WINDOW_S."""
        now = time.monotonic()
        window = [r for r in self._rate_window if now - r[0] <= RATE_WINDOW_S]
        if not window:
            return 0.0, 0.0
        span = max(now - window[0][0], 1.0)
        return sum(s for _, s, _ in window) / span, sum(r for _, _, r in window) / span

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

    def set_state_from_gate(self) -> None:
        if not self.connected:
            return
        state = self.gate.gate.state
        last = self.last_qber
        if state is LinkState.ACTIVE:
            nominal = last is None or band_of(min(last, 1.0)) is Band.NOMINAL
            self.set_state("running" if nominal else "degraded",
                           "generating keys" + (f", QBER {last:.4f}" if last is not None else ""))
        elif state is LinkState.SUSPENDED:
            self.set_state("suspended", f"QBER {last:.4f} at or above the threshold; key generation suspended")
        elif state is LinkState.HALTED:
            self.set_state("halted", f"QBER {last:.4f} at or above 11 %: key generation halted")
        elif self.device_problem is not None:
            self.set_state("halted", f"link degraded: device unhealthy: {self.device_problem}"[:300])
        else:
            self.set_state("halted", "link degraded: QBER above the threshold for too long or device unhealthy")

    def set_state(self, state: str, detail: str) -> None:
        self.state = state
        if self.health is not None:
            self.health.set_link_state(self.link_id, state, detail)

    # -- device ---------------------------------------------------------------------------------
    async def watch_device(self, device: Device) -> None:
        """Poll the device's health every HEALTH_POLL_S into the gate and the metrics, until cancelled."""
        while True:
            try:
                health = await device.health()
                channel = await device.channel_status()
            except DeviceError as exc:
                self.device_problem = str(exc)
                self.gate.observe_health(False)
                log.warning("link %s: device health check failed: %s", self.link_id, exc)
            else:
                if not health.ok and health.detail != self.device_problem:
                    log.warning("link %s: device unhealthy: %s", self.link_id, health.detail)
                self.device_problem = None if health.ok else health.detail
                self.gate.observe_health(health.ok)
                if self.metrics is not None:
                    self.metrics.device(temperature_celsius=health.temperature_c, uptime_s=health.uptime_s)
                    self.metrics.channel(loss_db=channel.link_loss_db, photon_rate_hz=channel.photon_rate_hz)
            self.drain_gate()
            await trio.sleep(HEALTH_POLL_S)
