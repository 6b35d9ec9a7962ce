"""The QBER gate: each frame's QBER in, the link's state and alarms out (no I/O, time passed in).

Theory of operation
-------------------
The seed's bands (HIP-0071, "QBER Thresholds and Alarms") classify every frame's estimated QBER:

    nominal < 3 %  ·  degraded < 5 %  ·  warning < 8 %  ·  critical < 11 %  ·  compromised ≥ 11 %

The operator's threshold (QKD_QBER_THRESHOLD, in (0, 0.11], default 0.08) suspends key generation:
a frame at or above it yields no key. At or above 11 % the link halts at once — no secure key can be
extracted above that QBER for BB84 (Shor–Preskill: 1 − 2h(Q) reaches zero at Q ≈ 11.0 %).
A link that stays above the threshold for `degrade_after_s` (60 s, the seed's "Fallback Policy"),
or whose device health check fails, turns DEGRADED and counts one halt. It resumes by itself once
`recover_frames` consecutive frames fall below `threshold − hysteresis` (and the device is healthy),
so a link hovering at the threshold does not flap.

State transitions (frame = a frame's QBER observed; health = device health reported):

    state       event                              next        effect
    ACTIVE      frame ≥ 11 %                       HALTED      halt counted
    ACTIVE      frame ≥ threshold                  SUSPENDED   above-threshold clock starts
    ACTIVE      health failed                      DEGRADED    halt counted
    SUSPENDED   frame ≥ 11 %                       HALTED      halt counted
    SUSPENDED   above threshold ≥ degrade_after_s  DEGRADED    halt counted
    SUSPENDED   recover_frames good frames         ACTIVE
    HALTED      recover_frames good frames         ACTIVE
    HALTED      above threshold ≥ degrade_after_s  DEGRADED    (already counted)
    DEGRADED    recover_frames good frames, healthy ACTIVE
    any         health failed                      DEGRADED    halt counted unless HALTED/DEGRADED

Only frames observed in ACTIVE, below the threshold, produce key.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

COMPROMISED_QBER = 0.11


class Band(enum.Enum):
    NOMINAL = "nominal"
    DEGRADED = "degraded"
    WARNING = "warning"
    CRITICAL = "critical"
    COMPROMISED = "compromised"


# Upper band edges from HIP-0071 "QBER Thresholds and Alarms" (each band is [previous edge, edge)).
_BAND_EDGES = ((0.03, Band.NOMINAL), (0.05, Band.DEGRADED), (0.08, Band.WARNING), (COMPROMISED_QBER, Band.CRITICAL))


def band_of(qber: float) -> Band:
    """The seed's band for a QBER value."""
    if not 0.0 <= qber <= 1.0:
        raise ValueError(f"QBER {qber!r} outside [0, 1]")
    for edge, band in _BAND_EDGES:
        if qber < edge:
            return band
    return Band.COMPROMISED


class LinkState(enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    HALTED = "halted"
    DEGRADED = "degraded"


@dataclass(frozen=True)
class GateDecision:
    """What the link does with one frame, and which alarms to raise."""

    state: LinkState
    band: Band | None                          # None for a decision not caused by a frame
    keep_key: bool
    halted: bool = False                       # count qkd_key_generation_halted_total once
    threshold_exceeded: str | None = None      # "warning" or "critical": count the alarm metric
    state_changed: bool = False


@dataclass
class QberGate:
    threshold: float = 0.08
    degrade_after_s: float = 60.0
    recover_frames: int = 3
    hysteresis: float = 0.005
    state: LinkState = LinkState.ACTIVE
    _above_since: float | None = field(default=None, repr=False)
    _good_frames: int = field(default=0, repr=False)
    _healthy: bool = field(default=True, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= COMPROMISED_QBER:
            raise ValueError(f"QBER threshold {self.threshold!r} must lie in (0, {COMPROMISED_QBER}]")
        if self.degrade_after_s <= 0 or self.recover_frames < 1 or not 0 <= self.hysteresis < self.threshold:
            raise ValueError("degrade_after_s > 0, recover_frames ≥ 1 and 0 ≤ hysteresis < threshold are required")

    def observe_frame(self, qber: float, now_s: float) -> GateDecision:
        """Classify one frame's QBER and move the state machine."""
        band = band_of(qber)
        before = self.state
        halted = False
        alarm = "critical" if qber >= self.threshold else ("warning" if band is Band.WARNING else None)

        if qber >= self.threshold:
            self._good_frames = 0
            if self._above_since is None:
                self._above_since = now_s
            if qber >= COMPROMISED_QBER and self.state in (LinkState.ACTIVE, LinkState.SUSPENDED):
                self.state, halted = LinkState.HALTED, True
            elif self.state is LinkState.ACTIVE:
                self.state = LinkState.SUSPENDED
            if now_s - self._above_since >= self.degrade_after_s and self.state is not LinkState.DEGRADED:
                halted = halted or self.state is LinkState.SUSPENDED
                self.state = LinkState.DEGRADED
        else:
            self._above_since = None
            if qber < self.threshold - self.hysteresis:
                self._good_frames += 1
            else:
                self._good_frames = 0
            if (self.state is not LinkState.ACTIVE and self._good_frames >= self.recover_frames
                    and self._healthy):
                self.state = LinkState.ACTIVE

        keep = self.state is LinkState.ACTIVE and before is LinkState.ACTIVE and qber < self.threshold
        return GateDecision(self.state, band, keep, halted, alarm, self.state is not before)

    def observe_health(self, healthy: bool) -> GateDecision | None:
        """Record the device health check; a failure degrades the link at once."""
        self._healthy = healthy
        if healthy or self.state is LinkState.DEGRADED:
            return None
        halted = self.state is not LinkState.HALTED
        self.state = LinkState.DEGRADED
        self._good_frames = 0
        return GateDecision(self.state, None, False, halted, None, True)
