"""Asymptotic decoy-state BB84 key rates (reference figures, infinitely long keys).

Three ways to bound the single-photon contribution, all fed into the GLLP key rate:
  * "infinite": infinitely many decoys pin Y1 and e1 to their true values (Lo, Ma, Chen 2005),
  * "vacuum-weak": the practical vacuum + weak decoy estimator of Ma, Qi, Zhao, Lo (MQZL),
    PRA 72, 012326 (2005), Sec. III (arXiv:quant-ph/0503005v5 numbering, Eqs. 34, 35, 37),
  * "none": GLLP without decoys, every multi-photon pulse assumed attacked (Gottesman, Lo,
    Luetkenhaus, Preskill, QIC 4, 325 (2004)).
The key length actually used by the link comes from the finite-key bound in `bb84_finite`; these
functions feed `qkdctl sim rate` and the published-curve tests. All functions are pure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from qkdd.protocols.channel import (
    DARK_COUNT_ERROR_RATE,
    ChannelParams,
    check_non_negative,
    check_probability,
    error_rate_n,
    gain,
    qber,
    yield_n,
)
from qkdd.protocols.entropy import binary_entropy, capped_entropy, secure_fraction_asymptotic
from qkdd.protocols.optimize import maximize_scalar

DECOY_METHODS = ("none", "vacuum-weak", "infinite")


@dataclass(frozen=True)
class SinglePhotonBounds:
    """Lower bound on the single-photon yield Y1 and gain Q1 = Y1 mu e^-mu, upper bound on their error e1."""

    y1_lower: float
    q1_lower: float
    e1_upper: float


@dataclass(frozen=True)
class AsymptoticRate:
    """Asymptotic key rate per pulse sent and the quantities it was computed from."""

    decoy: str
    mu: float
    nu: float | None
    gain_signal: float
    qber_signal: float
    y1: float
    e1: float
    q1: float
    key_rate_per_pulse: float
    secure_fraction_asymptotic: float

    def as_dict(self) -> dict[str, float | str | None]:
        return dict(self.__dict__)


def gllp_key_rate(*, q: float, f_ec: float, gain_signal: float, qber_signal: float,
                  q1: float, e1: float) -> float:
    """R = q { -Q_mu f h(E_mu) + Q1 [1 - h(e1)] }, per pulse; negative means no key.

    GLLP with decoy states: LMC Eq. 11 (arXiv:quant-ph/0411004v4), MQZL Eq. 1. q1 must be a lower and e1
    an upper bound for R to be a lower bound on the key rate.
    """
    check_probability("q", q, open_low=True)
    check_probability("gain_signal", gain_signal)
    check_probability("qber_signal", qber_signal)
    check_non_negative("q1", q1)
    return q * (-gain_signal * f_ec * binary_entropy(qber_signal) + q1 * (1.0 - capped_entropy(e1)))


def vacuum_weak_bounds(*, mu: float, nu: float, gain_signal: float, gain_decoy: float,
                       qber_decoy: float, y0: float) -> SinglePhotonBounds:
    """Vacuum + weak decoy estimator (MQZL Sec. III "Vacuum + weak decoy state").

    Inputs are measured (or expected) gains: Q_mu of the signal, Q_nu and E_nu of the weak decoy, and the
    vacuum gain Y0. Requires 0 < nu < mu.
      Y1 >= Y1^{L,nu,0} = mu / (mu nu - nu^2) [Q_nu e^nu - Q_mu e^mu nu^2/mu^2 - (mu^2 - nu^2)/mu^2 Y0]
                                                                                    (MQZL Eq. 34)
      Q1 >= Q1^{L,nu,0} = Y1^{L,nu,0} mu e^-mu                                      (MQZL Eq. 35)
      e1 <= e1^{U,nu,0} = (E_nu Q_nu e^nu - e0 Y0) / (Y1^{L,nu,0} nu)               (MQZL Eq. 37)
    A non-positive Y1 bound means the data certify no single photons: Q1 = 0 and e1 = 1/2.
    """
    if not (nu > 0.0 and mu > nu):
        raise ValueError(f"nu: vacuum+weak estimator needs 0 < nu < mu, got mu={mu!r}, nu={nu!r}")
    for name, value in (("gain_signal", gain_signal), ("gain_decoy", gain_decoy),
                        ("qber_decoy", qber_decoy), ("y0", y0)):
        check_probability(name, value)
    y1 = mu / (mu * nu - nu * nu) * (
        gain_decoy * math.exp(nu)
        - gain_signal * math.exp(mu) * nu * nu / (mu * mu)
        - (mu * mu - nu * nu) / (mu * mu) * y0)
    if y1 <= 0.0:
        return SinglePhotonBounds(y1_lower=0.0, q1_lower=0.0, e1_upper=0.5)
    e1 = (qber_decoy * gain_decoy * math.exp(nu) - DARK_COUNT_ERROR_RATE * y0) / (y1 * nu)
    return SinglePhotonBounds(y1_lower=min(y1, 1.0), q1_lower=y1 * mu * math.exp(-mu),
                              e1_upper=min(max(e1, 0.0), 0.5))


def no_decoy_bounds(*, mu: float, gain_signal: float, qber_signal: float) -> SinglePhotonBounds:
    """GLLP without decoys: all multi-photon pulses may be detected and fully known to Eve.

    The multi-photon probability is P_multi = 1 - (1 + mu) e^-mu, so the untagged gain is at least
    Q1 >= Q_mu - P_multi (GLLP Sec. 5: Delta = P_multi / Q_mu, untagged fraction Omega = 1 - Delta), and all
    observed errors may sit in the untagged part: e1 <= E_mu Q_mu / Q1 (GLLP's e/Omega; LMC Eqs. 12-13).
    """
    check_non_negative("mu", mu)
    check_probability("gain_signal", gain_signal)
    check_probability("qber_signal", qber_signal)
    p_multi = 1.0 - (1.0 + mu) * math.exp(-mu)
    q1 = gain_signal - p_multi
    if q1 <= 0.0:
        return SinglePhotonBounds(y1_lower=0.0, q1_lower=0.0, e1_upper=0.5)
    y1 = q1 / (mu * math.exp(-mu)) if mu > 0.0 else 0.0
    return SinglePhotonBounds(y1_lower=min(y1, 1.0), q1_lower=q1,
                              e1_upper=min(qber_signal * gain_signal / q1, 0.5))


def single_photon_bounds(channel: ChannelParams, decoy: str) -> SinglePhotonBounds:
    """Y1, Q1, e1 for the expected channel statistics under the chosen decoy method."""
    mu = channel.mu
    if decoy == "infinite":
        # Infinitely many decoys determine Y1 and e1 exactly (LMC Eqs. 6, 8, 10).
        y1 = yield_n(channel, 1)
        return SinglePhotonBounds(y1_lower=y1, q1_lower=y1 * mu * math.exp(-mu),
                                  e1_upper=error_rate_n(channel, 1))
    if decoy == "vacuum-weak":
        return vacuum_weak_bounds(mu=mu, nu=channel.nu, gain_signal=gain(channel, mu),
                                  gain_decoy=gain(channel, channel.nu), qber_decoy=qber(channel, channel.nu),
                                  y0=gain(channel, 0.0))
    if decoy == "none":
        return no_decoy_bounds(mu=mu, gain_signal=gain(channel, mu), qber_signal=qber(channel, mu))
    raise ValueError(f"decoy: must be one of {', '.join(DECOY_METHODS)}, got {decoy!r}")


def key_rate(channel: ChannelParams, decoy: str) -> AsymptoticRate:
    """Asymptotic key rate per pulse (floored at zero) at the channel's mu and nu."""
    bounds = single_photon_bounds(channel, decoy)
    q_mu, e_mu = gain(channel, channel.mu), qber(channel, channel.mu)
    rate = gllp_key_rate(q=channel.q, f_ec=channel.f_ec, gain_signal=q_mu, qber_signal=e_mu,
                         q1=bounds.q1_lower, e1=bounds.e1_upper)
    nu = channel.nu if decoy == "vacuum-weak" else None
    return AsymptoticRate(decoy=decoy, mu=channel.mu, nu=nu, gain_signal=q_mu, qber_signal=e_mu,
                          y1=bounds.y1_lower, e1=bounds.e1_upper, q1=bounds.q1_lower,
                          key_rate_per_pulse=max(rate, 0.0),
                          secure_fraction_asymptotic=secure_fraction_asymptotic(e_mu))


def _raw_rate(channel: ChannelParams, decoy: str) -> float:
    bounds = single_photon_bounds(channel, decoy)
    return gllp_key_rate(q=channel.q, f_ec=channel.f_ec, gain_signal=gain(channel, channel.mu),
                         qber_signal=qber(channel, channel.mu), q1=bounds.q1_lower, e1=bounds.e1_upper)


def optimize_mu(channel: ChannelParams, decoy: str, *, mu_max: float = 1.0) -> AsymptoticRate:
    """The signal intensity mu in (nu, mu_max] that maximises the asymptotic key rate (nu held fixed)."""
    if decoy not in DECOY_METHODS:
        raise ValueError(f"decoy: must be one of {', '.join(DECOY_METHODS)}, got {decoy!r}")
    # Only the vacuum+weak estimator uses nu; the others must not let it constrain mu.
    base = channel if decoy == "vacuum-weak" else channel.replace(nu=0.0)
    mu_min = max(base.nu * 1.001, 1e-4)

    def objective(mu: float) -> float:
        return _raw_rate(base.replace(mu=mu), decoy)

    best_mu = maximize_scalar(objective, mu_min, mu_max)
    return key_rate(base.replace(mu=best_mu), decoy)


def max_distance_km(channel: ChannelParams, decoy: str, *, optimize: bool = True,
                    upper_km: float = 500.0, tolerance_km: float = 0.01) -> float:
    """Largest fibre length with a positive asymptotic key rate (bisection; mu optimised at each length)."""

    def positive(distance_km: float) -> bool:
        at = channel.replace(distance_km=distance_km)
        if optimize:
            return optimize_mu(at, decoy).key_rate_per_pulse > 0.0
        return _raw_rate(at, decoy) > 0.0

    if not positive(0.0):
        return 0.0
    low, high = 0.0, upper_km
    if positive(high):
        return high
    while high - low > tolerance_km:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if positive(mid) else (low, mid)
    return low
