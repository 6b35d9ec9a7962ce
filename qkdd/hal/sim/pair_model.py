"""The E91 pair source's channel model in closed form: coincidence and singles probabilities per slot, the
visibility, the detectors' dead time and an intercept-resend attack; expected counts of a frame and the
analytic finite-size key length the daemon's E91 link should reach on them (bench.link, tests).

Source and detectors (thermal SPDC pair statistics, threshold detectors with dark counts): Ma, Fung, Lo,
PRA 76, 012307 (2007), Sec. III -- the same formulas as the simulator's C kernel (native/src/sim_channel.c,
build_e91), so the model and the Monte Carlo describe one system:
    Q = 1 - (1-Y0)/(1+eta_A l)^2 - (1-Y0)/(1+eta_B l)^2 + (1-Y0)^2/(1+eta_A l+eta_B l-eta_A eta_B l)^2,
    visibility V = F (1 - 2 e_d), F = 2 eta_A eta_B l (1+l) / [(1+eta_A l)(1+eta_B l)(...)] / Q,
    singles at one end 1 - (1-Y0)/(1+eta l)^2,  l = pair_mean / 2,  Y0 = 1 - (1 - p_dark)^2.
Dead time n slots (qkdd.hal.sim.pair_source): a registered coincidence blinds both ends for n slots
(non-paralysable), so coincidences c per slot keep the fraction 1 / (1 + c n) (one kept per cycle of
n + 1/c slots, in which c n + 1 arrive); clicks without a partner (singles s - c at each end) blind an end
too, so a coincidence is also lost with probability 1 - ((1 - (s_A - c))(1 - (s_B - c)))^n.
Intercept-resend on Bob's arm (Eve measures a fraction f of Bob's photons at 0 or 45 deg and resends her
result): the intercepted pairs have correlator (1 - 2 e_d)/2 cos 2(a - b), so V -> (1 - f) V + f (1 - 2 e_d)/2;
f = 1 gives S = sqrt 2 (1 - 2 e_d) < 2 (Ekert, PRL 67, 661 (1991): an eavesdropper lowers S).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from qkdd.hal.sim.params import SimParams
from qkdd.protocols import e91


@dataclass(frozen=True)
class PairRates:
    """Per-slot probabilities of the E91 link (before dead time) and its visibility."""

    coincidence: float
    singles_alice: float
    singles_bob: float
    visibility: float


def pair_rates(params: SimParams, *, extra_loss_db: float = 0.0, misalignment_drift: float = 0.0) -> PairRates:
    """The thermal-source model above for `params` (pair_statistics "thermal")."""
    if params.protocol != "e91":
        raise ValueError("pair_rates: params must be for protocol e91")
    lam = params.pair_mean / 2.0
    position_km = params.source_position_km if params.source_position_km is not None else params.distance_km / 2
    eta_a = params.detector_efficiency * 10 ** (-params.fiber_loss_db_per_km * position_km / 10)
    eta_b = params.detector_efficiency * 10 ** (-(params.fiber_loss_db_per_km * (params.distance_km - position_km)
                                                  + extra_loss_db) / 10)
    e_mis = min(params.misalignment + misalignment_drift, 0.5)
    y0 = 1.0 - (1.0 - params.dark_count_prob) ** 2
    da, db = 1 + eta_a * lam, 1 + eta_b * lam
    dab = 1 + eta_a * lam + eta_b * lam - eta_a * eta_b * lam
    gain = 1 - (1 - y0) / da ** 2 - (1 - y0) / db ** 2 + (1 - y0) ** 2 / dab ** 2
    correlated = 2 * eta_a * eta_b * lam * (1 + lam) / (da * db * dab)
    fraction = correlated / gain if gain > 0 else 0.0
    return PairRates(coincidence=gain, singles_alice=1 - (1 - y0) / da ** 2, singles_bob=1 - (1 - y0) / db ** 2,
                     visibility=fraction * (1 - 2 * e_mis))


def dead_slots(dead_time_ns: float, clock_hz: float) -> int:
    """Slots a detector stays blind after a click."""
    if not (math.isfinite(dead_time_ns) and dead_time_ns >= 0):
        raise ValueError(f"dead_time_ns: must be a finite number >= 0, got {dead_time_ns!r}")
    return int(dead_time_ns * 1e-9 * clock_hz)


def singles_live_probability(rates: PairRates, blind_slots: int) -> float:
    """P(no unpartnered click at either end in the `blind_slots` slots before a coincidence)."""
    c = rates.coincidence
    return ((1 - (rates.singles_alice - c)) * (1 - (rates.singles_bob - c))) ** blind_slots


def live_probability(rates: PairRates, blind_slots: int) -> float:
    """The fraction of coincidences the dead time keeps (module docstring)."""
    return singles_live_probability(rates, blind_slots) / (1 + rates.coincidence * blind_slots)


def attacked_visibility(visibility: float, misalignment: float, intercept_fraction: float) -> float:
    """V after intercept-resend of a fraction of Bob's photons (module docstring)."""
    return (1 - intercept_fraction) * visibility + intercept_fraction * (1 - 2 * misalignment) / 2


def expected_frame_counts(params: SimParams, slots: float, *, dead_time_ns: float = 0.0,
                          intercept_fraction: float = 0.0) -> e91.E91Counts:
    """Expected coincidences of a frame of `slots` slots per setting pair, with each pair's correlator
    V cos 2(a - b) (Werner state)."""
    rates = pair_rates(params)
    live = live_probability(rates, dead_slots(dead_time_ns, params.clock_hz))
    v = attacked_visibility(rates.visibility, params.misalignment, intercept_fraction)
    per_slot = rates.coincidence * live

    def pair(a: int, b: int) -> e91.Correlation:
        n = slots * per_slot * params.e91_alice_prob[a] * params.e91_bob_prob[b]
        e = e91.correlator(v, e91.ALICE_ANGLES_DEG[a], e91.BOB_ANGLES_DEG[b])
        return e91.Correlation(n * (1 + e) / 2, n * (1 - e) / 2)

    return e91.E91Counts(chsh=tuple(pair(a, b) for a, b, _ in e91.CHSH_TERMS),  # type: ignore[arg-type]
                         key_z=pair(*e91.KEY_PAIRS["z"]), key_x=pair(*e91.KEY_PAIRS["x"]),
                         pairs_emitted=slots * params.pair_mean)


def analytic_frame_key_bits(params: SimParams, slots: float, *, dead_time_ns: float = 0.0, f_ec: float = 1.16,
                            eps_sec: float = 1e-10, eps_cor: float = 1e-15, eps_pe: float = 1e-10) -> e91.E91Result:
    """The key length of one frame on its expected counts, by the bound the daemon's E91 link applies
    (qkdd.link.e91_pipeline: Acin et al.'s chi(S) at the CHSH lower bound), leakage f_ec h(Q) per key bit."""
    counts = expected_frame_counts(params, slots, dead_time_ns=dead_time_ns)
    return e91.e91_key_length(counts, eps_sec=eps_sec, eps_cor=eps_cor, eps_pe=eps_pe, f_ec=f_ec,
                              device_independent=True)
