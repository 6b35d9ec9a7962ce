"""Analytic weak-coherent-pulse channel model: the expected gains and error rates that the decoy-state
formulas, `qkdctl sim rate` and the Monte Carlo cross-checks are built on.

Model (Lo, Ma, Chen, PRL 94, 230504 (2005), arXiv:quant-ph/0411004, Eqs. 2, 3, 6-8; the same model is
Section II of Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), "MQZL" below):

    eta      = eta_bob * 10^(-alpha L / 10)                 overall single-photon transmittance
    eta_n    = 1 - (1 - eta)^n                              n-photon transmittance        (LMC Eq. 7)
    Y_n      = 1 - (1 - Y0)(1 - eta)^n                      n-photon yield                (LMC Eq. 6)
    e_n Y_n  = e0 Y0 + e_det eta_n,  e0 = 1/2               n-photon errors               (LMC Eq. 8)
    Q_k      = sum_n P_k(n) Y_n = 1 - (1 - Y0) e^(-eta k)   gain at intensity k           (LMC Eq. 2)
    E_k Q_k  = e0 Y0 + e_det (1 - e^(-eta k))               errors at intensity k         (LMC Eq. 3)

with P_k(n) = e^-k k^n / n! (phase-randomised coherent states). LMC and MQZL drop the Y0*eta cross term
(Y_n ~ Y0 + eta_n, Q_k ~ Y0 + 1 - e^(-eta k)); we keep the exact product form, which changes nothing at
the printed precision (relative difference <= Y0 ~ 1e-6) and keeps every sum over photon numbers exact.

An optional afterpulse probability p_ap follows the detector model of Lim, Curty, Walenta, Xu, Zbinden,
PRA 89, 022307 (2014), Sec. IV: every count is followed by an afterpulse with probability p_ap, which is
a random bit: Q_k -> Q_k (1 + p_ap), E_k Q_k -> E_k Q_k + p_ap Q_k / 2. It is zero by default (the MQZL
and LMC numbers assume none). All quantities are per pulse and before basis sifting.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

DARK_COUNT_ERROR_RATE = 0.5
"""e0: a background count is a random bit (LMC, text after Eq. 8)."""


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{name}: {message}")


def check_finite(name: str, value: object) -> float:
    """The value as float; ValueError naming the parameter unless it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    return float(value)


def check_probability(name: str, value: object, *, open_low: bool = False, open_high: bool = False) -> float:
    """Validate a probability and return it as float; the error names the parameter."""
    number = check_finite(name, value)
    low_ok = number > 0.0 if open_low else number >= 0.0
    high_ok = number < 1.0 if open_high else number <= 1.0
    lo = "(0" if open_low else "[0"
    hi = "1)" if open_high else "1]"
    _require(low_ok and high_ok, name, f"must be a probability in {lo}, {hi}, got {value!r}")
    return number


def check_non_negative(name: str, value: object) -> float:
    number = check_finite(name, value)
    _require(number >= 0.0, name, f"must be >= 0, got {value!r}")
    return number


@dataclass(frozen=True)
class ChannelParams:
    """One fibre link with a weak-coherent-pulse source and a threshold-detector receiver.

    Defaults are the GYS column of MQZL Table I (Gobby, Yuan, Shields, APL 84, 3762 (2004)):
    alpha = 0.21 dB/km, eta_bob = 4.5 %, Y0 = 1.7e-6, e_det = 3.3 %, with MQZL's f_EC = 1.22 and q = 1/2.

    mu is the signal intensity and nu the weak-decoy intensity (mean photon numbers per pulse); the
    vacuum decoy of the vacuum+weak method has intensity 0. q is the fraction of detections kept by basis
    sifting (1/2 for standard BB84, close to 1 for efficient BB84 with a biased basis choice).
    """

    distance_km: float = 0.0
    alpha_db_per_km: float = 0.21
    eta_bob: float = 0.045
    y0: float = 1.7e-6
    e_det: float = 0.033
    f_ec: float = 1.22
    q: float = 0.5
    mu: float = 0.48
    nu: float = 0.05
    p_afterpulse: float = 0.0

    def __post_init__(self) -> None:
        check_non_negative("distance_km", self.distance_km)
        check_non_negative("alpha_db_per_km", self.alpha_db_per_km)
        check_probability("eta_bob", self.eta_bob, open_low=True)
        check_probability("y0", self.y0, open_high=True)
        check_probability("e_det", self.e_det)
        _require(self.e_det <= 0.5, "e_det", f"misalignment error must be <= 0.5, got {self.e_det!r}")
        _require(check_finite("f_ec", self.f_ec) >= 1.0, "f_ec",
                 f"error-correction efficiency must be >= 1 (Shannon limit), got {self.f_ec!r}")
        check_probability("q", self.q, open_low=True)
        _require(check_finite("mu", self.mu) > 0.0, "mu", f"signal intensity must be > 0, got {self.mu!r}")
        check_non_negative("nu", self.nu)
        _require(self.mu > self.nu, "mu", f"signal intensity mu={self.mu!r} must exceed decoy intensity "
                 f"nu={self.nu!r}")
        check_probability("p_afterpulse", self.p_afterpulse, open_high=True)

    def replace(self, **changes: float) -> "ChannelParams":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def transmittance(self) -> float:
        """eta = eta_bob * 10^(-alpha L / 10): fibre loss (dB/km times km) and Bob's efficiency."""
        return self.eta_bob * 10.0 ** (-self.alpha_db_per_km * self.distance_km / 10.0)


def poisson(n: int, mean: float) -> float:
    """P(n) = e^-mean mean^n / n!, the photon-number distribution of a phase-randomised coherent state."""
    if mean == 0.0:
        return 1.0 if n == 0 else 0.0
    return math.exp(-mean + n * math.log(mean) - math.lgamma(n + 1))


def yield_n(channel: ChannelParams, n: int) -> float:
    """Y_n: probability of a detection given an n-photon pulse (LMC Eq. 6, exact product form)."""
    eta = channel.transmittance
    return (1.0 - (1.0 - channel.y0) * (1.0 - eta) ** n) * (1.0 + channel.p_afterpulse)


def error_rate_n(channel: ChannelParams, n: int) -> float:
    """e_n: bit error rate of detections from n-photon pulses (LMC Eq. 8, plus afterpulses)."""
    eta_n = 1.0 - (1.0 - channel.transmittance) ** n
    y_n = yield_n(channel, n)
    errors = (DARK_COUNT_ERROR_RATE * channel.y0 + channel.e_det * eta_n
              + 0.5 * channel.p_afterpulse * y_n / (1.0 + channel.p_afterpulse))
    return errors / y_n


def gain(channel: ChannelParams, intensity: float) -> float:
    """Q_k: detection probability per pulse of intensity k (LMC Eq. 2 summed in closed form)."""
    check_non_negative("intensity", intensity)
    detection = 1.0 - (1.0 - channel.y0) * math.exp(-channel.transmittance * intensity)
    return detection * (1.0 + channel.p_afterpulse)


def error_gain(channel: ChannelParams, intensity: float) -> float:
    """E_k Q_k: probability per pulse of an erroneous detection (LMC Eq. 3 in closed form)."""
    check_non_negative("intensity", intensity)
    optical = channel.e_det * (1.0 - math.exp(-channel.transmittance * intensity))
    afterpulse = 0.5 * channel.p_afterpulse * gain(channel, intensity) / (1.0 + channel.p_afterpulse)
    return DARK_COUNT_ERROR_RATE * channel.y0 + optical + afterpulse


def qber(channel: ChannelParams, intensity: float) -> float:
    """E_k: quantum bit error rate of detections at intensity k."""
    return error_gain(channel, intensity) / gain(channel, intensity)
