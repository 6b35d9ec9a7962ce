"""What both simulated devices report beside the detections: a device temperature with slow drift, the
fiber's loss, and the link's QBER and visibility from one frame's records (the simulator knows both ends).
"""
from __future__ import annotations

import math

import numpy as np

from qkdd.hal.sim.params import Drift, SimParams
from qkdd.hal.sim.records import Frame
from qkdd.hal.sim.tally import E91Tally
from qkdd.protocols import e91

TEMPERATURE_SWING_C = 0.5
TEMPERATURE_PERIOD_S = 3600.0
"""A rack's slow thermal cycle: +-0.5 degC over an hour around the configured temperature (a model, no
measured value behind it; it only has to move slowly)."""


def temperature_c(base_c: float, uptime_s: float) -> float:
    return base_c + TEMPERATURE_SWING_C * math.sin(2.0 * math.pi * uptime_s / TEMPERATURE_PERIOD_S)


def link_loss_db(params: SimParams, drift: Drift) -> float:
    """Fiber attenuation alpha * L plus the extra-loss drift (detector efficiency not included)."""
    return params.fiber_loss_db_per_km * params.distance_km + drift.extra_loss_db


QBER_CHUNK = 1 << 18
"""Detections counted per pass of frame_qber: its masks stay in cache and are reused, where whole-frame masks
and boolean selections cost several frame-sized arrays (fresh pages each frame) at 2^25 detections."""


def frame_qber(frame: Frame) -> float:
    """Error rate over the detections where Alice's and Bob's bases (E91: analyser codes) agree; NaN if none."""
    size = len(frame.alice)
    matched, errors = np.empty(min(size, QBER_CHUNK), bool), np.empty(min(size, QBER_CHUNK), bool)
    n = wrong = 0
    for start in range(0, size, QBER_CHUNK):
        stop = min(start + QBER_CHUNK, size)
        m, e = matched[:stop - start], errors[:stop - start]
        np.equal(frame.alice.basis[start:stop], frame.bob.basis[start:stop], out=m)
        np.not_equal(frame.alice.bit[start:stop], frame.bob.outcome[start:stop], out=e)
        np.logical_and(e, m, out=e)
        n += int(np.count_nonzero(m))
        wrong += int(np.count_nonzero(e))
    if n == 0:
        return math.nan
    return float(wrong / n)


def frame_visibility(frame: Frame, qber: float) -> float:
    """BB84: V = 1 - 2 e (errors of a depolarised channel). E91: V = S / (2 sqrt 2), the Werner-state
    relation of qkdd.protocols.e91 (CHSH S from this frame's non-matching setting pairs)."""
    if frame.protocol == "e91":
        tally = E91Tally()
        tally.add(frame)
        estimate = e91.chsh_estimate(tally.counts(1.0))
        if not math.isfinite(estimate.sigma):
            return math.nan
        return max(-1.0, min(1.0, estimate.s / e91.TSIRELSON_BOUND))
    return math.nan if math.isnan(qber) else 1.0 - 2.0 * qber
