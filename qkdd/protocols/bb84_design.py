"""Choosing three-intensity decoy settings for a link: the expected finite-key rate of Lim et al. (2014)
as a function of the settings, its numerical optimum, and the reach for a given block size.

As in Lim Sec. IV the rate is R = l / N (key bits per pulse sent) for a fixed post-processing block of
n_X sifted X detections, optimised over {q_x, p_mu1, p_mu2, mu1, mu2} with mu3 fixed. The secrecy
parameter is either fixed (eps_sec) or proportional to the key length, eps_sec = kappa * l (Lim's choice,
kappa = 1e-15), solved by a short fixed-point iteration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from qkdd.protocols.bb84_finite import (
    DecoySettings,
    FiniteKeyResult,
    expected_counts,
    finite_key_length,
    pulses_for_block,
)
from qkdd.protocols.channel import ChannelParams, check_non_negative, check_probability
from qkdd.protocols.optimize import nelder_mead_maximize


@dataclass(frozen=True)
class FiniteRate:
    settings: DecoySettings
    pulses_sent: float
    result: FiniteKeyResult

    @property
    def key_rate_per_pulse(self) -> float:
        return self.result.key_rate_per_pulse


def expected_finite_rate(channel: ChannelParams, settings: DecoySettings, n_x: float, *,
                         eps_sec: float | None = 1e-10, kappa: float | None = None,
                         eps_cor: float = 1e-15) -> FiniteRate:
    """Lim's key length on the expected counts of a block of n_x sifted X detections.

    Give either eps_sec (fixed) or kappa (eps_sec = kappa * l, iterated from l = n_x downwards; l is
    non-decreasing in eps_sec so the iteration converges from above).
    """
    if (eps_sec is None) == (kappa is None):
        raise ValueError("eps_sec: give exactly one of eps_sec and kappa")
    if n_x <= 0:
        raise ValueError(f"n_x: block size must be > 0, got {n_x!r}")
    pulses = pulses_for_block(channel, settings, n_x)
    counts = expected_counts(channel, settings, pulses)
    if eps_sec is not None:
        result = finite_key_length(counts, settings, eps_sec=eps_sec, eps_cor=eps_cor, f_ec=channel.f_ec)
        return FiniteRate(settings=settings, pulses_sent=pulses, result=result)
    check_probability("kappa", kappa, open_low=True, open_high=True)
    length = n_x
    for _ in range(4):
        eps = min(kappa * max(length, 1.0), 0.5)
        result = finite_key_length(counts, settings, eps_sec=eps, eps_cor=eps_cor, f_ec=channel.f_ec)
        if result.key_length_bits == length:
            break
        length = result.key_length_bits
    return FiniteRate(settings=settings, pulses_sent=pulses, result=result)


def _settings_from(point: Sequence[float], mu_vacuum: float) -> DecoySettings | None:
    """Unconstrained coordinates -> valid settings (logistic q_x, softmax probabilities, ordered intensities)."""
    z_q, z_s, z_d, z_mu2, z_gap = point
    try:
        q_x = 1.0 / (1.0 + math.exp(-z_q))
        weights = [math.exp(z_s), math.exp(z_d), 1.0]
        total = sum(weights)
        mu2 = mu_vacuum + max(math.exp(z_mu2), 1e-6)
        mu1 = mu2 + mu_vacuum + max(math.exp(z_gap), 1e-6)
        return DecoySettings(mu_signal=mu1, mu_decoy=mu2, mu_vacuum=mu_vacuum, p_signal=weights[0] / total,
                             p_decoy=weights[1] / total, q_x=q_x)
    except (ValueError, OverflowError):
        return None


def _coordinates(settings: DecoySettings) -> list[float]:
    p_v = settings.p_vacuum
    return [math.log(settings.q_x / (1.0 - settings.q_x)), math.log(settings.p_signal / p_v),
            math.log(settings.p_decoy / p_v), math.log(settings.mu_decoy - settings.mu_vacuum),
            math.log(settings.mu_signal - settings.mu_decoy - settings.mu_vacuum)]


_STARTS = (
    DecoySettings(mu_signal=0.5, mu_decoy=0.2, mu_vacuum=0.0, p_signal=0.3, p_decoy=0.35, q_x=0.5),
    DecoySettings(mu_signal=0.5, mu_decoy=0.15, mu_vacuum=0.0, p_signal=0.6, p_decoy=0.3, q_x=0.7),
    DecoySettings(mu_signal=0.45, mu_decoy=0.2, mu_vacuum=0.0, p_signal=0.4, p_decoy=0.35, q_x=0.4),
    DecoySettings(mu_signal=0.6, mu_decoy=0.1, mu_vacuum=0.0, p_signal=0.8, p_decoy=0.15, q_x=0.9),
)


def optimize_settings(channel: ChannelParams, n_x: float, *, mu_vacuum: float = 0.0,
                      eps_sec: float | None = 1e-10, kappa: float | None = None,
                      eps_cor: float = 1e-15, max_evaluations: int = 500) -> FiniteRate:
    """Settings maximising Lim's expected key rate per pulse for a block of n_x X detections.

    Where no key exists the objective is -1 plus the (negative) unfloored key length per block bit, so the
    simplex still climbs towards the region where a key exists.
    """
    check_non_negative("mu_vacuum", mu_vacuum)

    def evaluate(point: Sequence[float]) -> float:
        settings = _settings_from(point, mu_vacuum)
        if settings is None or settings.mu_signal > 2.0:
            return -math.inf
        rate = expected_finite_rate(channel, settings, n_x, eps_sec=eps_sec, kappa=kappa, eps_cor=eps_cor)
        if rate.result.key_length_bits > 0:
            return rate.key_rate_per_pulse
        return min(rate.result.terms.get("raw_length_bits", -n_x), 0.0) / n_x - 1.0

    best_point, best_value = None, -math.inf
    for start in _STARTS:
        start = DecoySettings(mu_signal=start.mu_signal + mu_vacuum, mu_decoy=start.mu_decoy + mu_vacuum,
                              mu_vacuum=mu_vacuum, p_signal=start.p_signal, p_decoy=start.p_decoy,
                              q_x=start.q_x)
        point, value = nelder_mead_maximize(evaluate, _coordinates(start), max_evaluations=max_evaluations)
        if value > best_value:
            best_point, best_value = point, value
    point, _ = nelder_mead_maximize(evaluate, best_point, step=0.2, max_evaluations=max_evaluations)
    settings = _settings_from(point, mu_vacuum)
    assert settings is not None
    return expected_finite_rate(channel, settings, n_x, eps_sec=eps_sec, kappa=kappa, eps_cor=eps_cor)


def max_distance_km_finite(channel: ChannelParams, n_x: float, *, mu_vacuum: float = 0.0,
                           eps_sec: float | None = 1e-10, kappa: float | None = None, lower_km: float = 0.0,
                           upper_km: float = 300.0, tolerance_km: float = 0.5) -> float:
    """Largest fibre length in [lower_km, upper_km] at which optimised settings still give a positive
    finite key (bisection; returns lower_km when even that length gives none)."""

    def positive(distance_km: float) -> bool:
        rate = optimize_settings(channel.replace(distance_km=distance_km), n_x, mu_vacuum=mu_vacuum,
                                 eps_sec=eps_sec, kappa=kappa)
        return rate.result.key_length_bits > 0

    if not positive(lower_km):
        return lower_km
    low, high = lower_km, upper_km
    while high - low > tolerance_km:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if positive(mid) else (low, mid)
    return low
