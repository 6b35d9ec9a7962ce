"""GG02 physics simulator (sans-IO, numpy): Gaussian-modulated coherent states through a lossy, noisy fiber
to a homodyne or heterodyne detector with efficiency and electronic noise, in the detector's volts, and
the shot-noise calibration that turns volts into shot-noise units (SNU).

Model (Laudenbach et al., Adv. Quantum Technol. 1, 1800011 (2018), Secs. 4 and 6.1; Lodewyck et al.,
PRA 76, 042305 (2007), Sec. III): Alice draws x_q, x_p ~ N(0, V_A) per symbol. Bob's balanced detector
measures, in SNU (shot noise 1, electronic noise v_el), for the quadrature it reads
    homodyne:   y = sqrt(eta T) x + z,    Var z = 1 + v_el + eta T xi
    heterodyne: y = sqrt(eta T / 2) x + z per quadrature,  Var z = 1 + v_el + eta T xi / 2
and reports volts = gain * y. Shot-noise calibration (Laudenbach 2018 Sec. 6.1): with the signal blocked
the detector sees LO shot noise plus electronic noise, gain^2 (1 + v_el); with the LO off, electronic noise
alone, gain^2 v_el; the difference is the shot noise N_0 = gain^2 that normalises the data.

An entangling-cloner attack (Grosshans et al., Nature 421, 238 (2003); Laudenbach 2018 Sec. 5) that
replaces the fiber by a lossless line plus Eve's beam splitter injecting a noisier EPR mode shows up to
Alice and Bob as more excess noise: `cloner_excess_noise` adds that (SNU, channel input) to xi.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qkdd.protocols.cvqkd import CvParams


CLONER_EXCESS_NOISE = 0.05   # the entangling cloner's default extra excess noise (SNU), 5x the nominal xi


def parse_cloner(text: str) -> float:
    """"none" -> 0, "entangling-cloner[:XI]" -> XI (default CLONER_EXCESS_NOISE); ValueError otherwise."""
    kind, _, level = text.partition(":")
    if kind not in ("none", "entangling-cloner") or (kind == "none" and level):
        raise ValueError(f"attack: cvqkd simulates none or entangling-cloner[:XI], got {text!r}")
    if kind == "none":
        return 0.0
    try:
        value = float(level) if level else CLONER_EXCESS_NOISE
    except ValueError:
        raise ValueError(f"attack: entangling-cloner:XI needs a number, got {level!r}") from None
    if not 0.0 <= value <= 10.0:
        raise ValueError(f"attack: the cloner's excess noise must lie in [0, 10] SNU, got {value!r}")
    return value


@dataclass(frozen=True)
class CvChannelSettings:
    params: CvParams = CvParams()
    detector_gain_v: float = 0.02          # volts per sqrt(SNU): the shot noise is gain^2 V^2
    cloner_excess_noise: float = 0.0       # Eve's entangling cloner: extra excess noise, SNU at the input

    def __post_init__(self) -> None:
        if not self.detector_gain_v > 0 or not math.isfinite(self.detector_gain_v):
            raise ValueError(f"detector_gain_v: must be > 0, got {self.detector_gain_v!r}")
        if not self.cloner_excess_noise >= 0 or not math.isfinite(self.cloner_excess_noise):
            raise ValueError(f"cloner_excess_noise: must be >= 0 SNU, got {self.cloner_excess_noise!r}")

    @property
    def quadratures(self) -> int:
        """Values Bob measures per symbol: 1 (homodyne), 2 (heterodyne)."""
        return 1 if self.params.detection == "homodyne" else 2


@dataclass(frozen=True)
class Calibration:
    """Shot-noise calibration: variances (V^2) with the signal blocked (LO on) and with the LO off."""

    lo_variance_v2: float
    electronic_variance_v2: float

    @property
    def shot_noise_v2(self) -> float:
        return self.lo_variance_v2 - self.electronic_variance_v2

    @property
    def electronic_noise_snu(self) -> float:
        return self.electronic_variance_v2 / self.shot_noise_v2


@dataclass(frozen=True)
class CvFrame:
    """One block of symbols. alice: (n, 2) quadratures (x_q, x_p) in SNU; quadrature: Bob's homodyne choice
    per symbol (0 q, 1 p), all zero for heterodyne; bob_v: (n, quadratures) detector volts."""

    alice: np.ndarray
    quadrature: np.ndarray
    bob_v: np.ndarray


class CvChannel:
    """Draws frames and calibrations for one link from a seeded generator (reproducible with a seed)."""

    def __init__(self, settings: CvChannelSettings = CvChannelSettings(), seed: int | None = None):
        self.settings = settings
        self._rng = np.random.default_rng(seed)

    def calibrate(self, samples: int) -> Calibration:
        if samples < 2:
            raise ValueError("calibrate: need at least 2 samples")
        gain, v_el = self.settings.detector_gain_v, self.settings.params.electronic_noise
        lo = gain * self._rng.normal(0.0, math.sqrt(1.0 + v_el), samples)
        electronic = gain * self._rng.normal(0.0, math.sqrt(v_el), samples) if v_el > 0 else np.zeros(samples)
        return Calibration(float(np.var(lo)), float(np.var(electronic)))

    def frame(self, symbols: int) -> CvFrame:
        if symbols < 1:
            raise ValueError("frame: need at least 1 symbol")
        s, p = self.settings, self.settings.params
        rng = self._rng
        alice = rng.normal(0.0, math.sqrt(p.modulation_variance), (symbols, 2))
        xi = p.excess_noise + s.cloner_excess_noise
        eta_t = p.eta_det * p.transmittance
        if p.detection == "homodyne":
            quadrature = rng.integers(0, 2, symbols, dtype=np.uint8)
            signal = alice[np.arange(symbols), quadrature][:, None] * math.sqrt(eta_t)
            noise_var = 1.0 + p.electronic_noise + eta_t * xi
        else:
            quadrature = np.zeros(symbols, dtype=np.uint8)
            signal = alice * math.sqrt(eta_t / 2.0)
            noise_var = 1.0 + p.electronic_noise + eta_t * xi / 2.0
        y = signal + rng.normal(0.0, math.sqrt(noise_var), signal.shape)
        return CvFrame(alice=alice, quadrature=quadrature, bob_v=y * s.detector_gain_v)


def alice_values(frame: CvFrame, detection: str) -> np.ndarray:
    """Alice's values matching Bob's measured ones, flattened: the quadrature Bob announced (homodyne)
    or both (heterodyne), in Bob's order."""
    if detection == "homodyne":
        return frame.alice[np.arange(frame.alice.shape[0]), frame.quadrature]
    return frame.alice.reshape(-1)


def bob_values_snu(frame: CvFrame, calibration: Calibration) -> np.ndarray:
    """Bob's measured values in SNU, flattened (homodyne: one per symbol; heterodyne: q, p per symbol)."""
    return frame.bob_v.reshape(-1) / math.sqrt(calibration.shot_noise_v2)
