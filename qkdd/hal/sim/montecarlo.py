"""`qkdctl sim run` without the command line: simulate N slots in frames, tally, and hand the counts to
the protocol engines (qkdd.protocols) for single-photon bounds or CHSH, key length and abort.

BB84 with decoys: Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014) finite-key length (the key
length), plus the asymptotic vacuum+weak bounds of Ma, Qi, Zhao, Lo (2005) from the measured gains for
reference. BB84 without decoys: GLLP (Gottesman, Lo, Lutkenhaus, Preskill, QIC 4, 325 (2004)) asymptotic
rate with the no-decoy single-photon bounds, times the pulses sent. E91: CHSH test and key length of
qkdd.protocols.e91. The receiver's photocurrent monitor, when enabled, aborts on excess optical power.
"""
from __future__ import annotations

import math
import time
from typing import Any

from qkdd.hal.sim.params import Attack, Drift, SimParams
from qkdd.hal.sim.records import INTENSITY_CLASSES
from qkdd.hal.sim.simulator import Simulator
from qkdd.hal.sim.tally import Bb84Tally, E91Tally
from qkdd.protocols import bb84, e91
from qkdd.protocols.bb84_finite import DecoySettings, finite_key_length, observed_statistics
from qkdd.protocols.entropy import secure_fraction_asymptotic

MONITOR_THRESHOLD_W = 1e-9
"""Default alarm level of the photocurrent monitor: mean optical power at Bob's detectors. A 1 GHz source
with mu = 0.5 delivers < 0.1 nW even at zero distance; blinding uses CW light of order 1 mW."""
MAX_RECORDS_PER_FRAME = 1 << 20


def run(params: SimParams, pulses: int, *, attack: Attack | None = None, drift: Drift | None = None,
        seed: int | bytes | None = None, monitor: bool = False, monitor_threshold_w: float = MONITOR_THRESHOLD_W,
        f_ec: float = 1.16, eps_sec: float = 1e-10, eps_cor: float = 1e-15,
        device_independent: bool = False) -> dict[str, Any]:
    """Simulate `pulses` slots and return the report `qkdctl sim run --json` prints."""
    if isinstance(pulses, bool) or not isinstance(pulses, int) or pulses < 1:
        raise ValueError(f"pulses: must be a positive integer, got {pulses!r}")
    if not monitor_threshold_w > 0:
        raise ValueError(f"monitor threshold: must be > 0 W, got {monitor_threshold_w!r}")
    attack = attack or Attack()
    sim = Simulator(params, seed=seed, attack=attack, drift=drift)
    tally: Bb84Tally | E91Tally = E91Tally() if params.protocol == "e91" else Bb84Tally()
    started = time.perf_counter()
    monitor_power_w = 0.0
    for frame in sim.frames(pulses, MAX_RECORDS_PER_FRAME):
        tally.add(frame)
        monitor_power_w = max(monitor_power_w, frame.monitor_power_w)
    seconds = time.perf_counter() - started
    # what the untouched channel (with its drifts) would show: the reference an operator compares against
    expected = Simulator(params, seed=bytes(32), drift=drift).expected()
    report: dict[str, Any] = {
        "protocol": params.protocol, "pulses": pulses, "distance_km": params.distance_km,
        "attack": attack.kind if attack.kind != "intercept-resend" else f"intercept-resend:{attack.fraction:g}",
        "seed": seed if isinstance(seed, int) else None, "wall_seconds": seconds,
        "simulated_seconds": pulses / params.clock_hz, "transmittance": expected["transmittance"],
        "monitor": {"enabled": monitor, "power_w": monitor_power_w if monitor else None,
                    "threshold_w": monitor_threshold_w},
    }
    if isinstance(tally, E91Tally):
        report.update(_e91_report(params, tally, f_ec, eps_sec, eps_cor, device_independent))
    else:
        report.update(_bb84_report(params, tally, expected, f_ec, eps_sec, eps_cor))
    if monitor and monitor_power_w > monitor_threshold_w:
        report.update(abort=True, key_length_bits=0,
                      abort_reason=(f"receiver photocurrent monitor: {monitor_power_w:.3g} W at the detectors "
                                    f"exceeds {monitor_threshold_w:.3g} W (bright-light detector blinding)"))
    return report


def _bb84_report(params: SimParams, tally: Bb84Tally, expected: dict, f_ec: float, eps_sec: float,
                 eps_cor: float) -> dict[str, Any]:
    counts = tally.decoy_counts()
    used = range(3) if params.decoy == "vacuum-weak" else range(1)
    report: dict[str, Any] = {
        "decoy": params.decoy,
        "pulses_per_class": {INTENSITY_CLASSES[k]: int(tally.pulses[k]) for k in used},
        "detections": int(tally.detections.sum()),
        "gain": {INTENSITY_CLASSES[k]: tally.gain(k) for k in used},
        "gain_expected": {INTENSITY_CLASSES[k]: expected["class_gain"][k] for k in used},
        "error_rate": {basis: {INTENSITY_CLASSES[k]: tally.error_rate(basis, k) for k in used}
                       for basis in ("X", "Z")},
        "counts": counts.as_mapping(),
        "sifted_bits": int(tally.sifted.sum()),
        "sifted_bits_x": int(tally.sifted[1].sum()),
    }
    n_x, m_x = tally.sifted[1].sum(), tally.errors[1].sum()
    n_z, m_z = tally.sifted[0].sum(), tally.errors[0].sum()
    report["qber_x"] = float(m_x / n_x) if n_x else 0.0
    report["qber_z"] = float(m_z / n_z) if n_z else 0.0
    report["secure_fraction_asymptotic"] = secure_fraction_asymptotic(min(report["qber_x"], 0.5))
    if params.decoy == "vacuum-weak":
        settings = DecoySettings(mu_signal=params.mu_signal, mu_decoy=params.mu_decoy, mu_vacuum=params.mu_vacuum,
                                 p_signal=params.p_signal, p_decoy=params.p_decoy, q_x=params.q_x)
        result = finite_key_length(counts, settings, eps_sec=eps_sec, eps_cor=eps_cor, f_ec=f_ec)
        report["per_basis"] = observed_statistics(counts, settings)
        report.update(y1_lower=result.y1_lower, e1_upper=result.e1_upper, s_x1_lower=result.s_x1_lower,
                      phase_error_upper=result.phase_error_upper, key_length_bits=result.key_length_bits,
                      key_rate_per_pulse=result.key_rate_per_pulse, abort=result.abort,
                      abort_reason=result.abort_reason, bound="Lim et al. 2014 finite-key")
        if params.mu_vacuum == 0.0:
            asym = bb84.vacuum_weak_bounds(mu=params.mu_signal, nu=params.mu_decoy, gain_signal=tally.gain(0),
                                           gain_decoy=tally.gain(1), qber_decoy=tally.error_rate("X", 1),
                                           y0=tally.gain(2))
            report["asymptotic_vacuum_weak"] = {"y1_lower": asym.y1_lower, "e1_upper": asym.e1_upper,
                                                "q1_lower": asym.q1_lower}
    else:
        gain_signal, qber_signal = tally.gain(0), tally.error_rate("X", 0)
        bounds = bb84.no_decoy_bounds(mu=params.mu_signal, gain_signal=gain_signal, qber_signal=qber_signal)
        rate = bb84.gllp_key_rate(q=params.q_x ** 2, f_ec=f_ec, gain_signal=gain_signal, qber_signal=qber_signal,
                                  q1=bounds.q1_lower, e1=bounds.e1_upper)
        length = max(math.floor(rate * tally.slots), 0)
        reason = None if length > 0 else "GLLP without decoys: multi-photon pulses leave no secret key"
        report.update(y1_lower=bounds.y1_lower, e1_upper=bounds.e1_upper,
                      key_length_bits=length if reason is None else 0,
                      key_rate_per_pulse=max(rate, 0.0), abort=reason is not None, abort_reason=reason,
                      bound="GLLP asymptotic, no decoys")
    return report


def _e91_report(params: SimParams, tally: E91Tally, f_ec: float, eps_sec: float, eps_cor: float,
                device_independent: bool) -> dict[str, Any]:
    counts = tally.counts(params.pair_mean)
    result = e91.e91_key_length(counts, eps_sec=eps_sec, eps_cor=eps_cor, f_ec=f_ec,
                                device_independent=device_independent)
    return {
        "coincidences": tally.coincidences, "coincidence_rate_per_slot": tally.coincidences / tally.slots,
        "chsh": [{"alice_deg": e91.ALICE_ANGLES_DEG[a], "bob_deg": e91.BOB_ANGLES_DEG[b],
                  "correlator": c.correlator, "pairs": int(c.total)}
                 for (a, b, _), c in zip(e91.CHSH_TERMS, counts.chsh)],
        "sifted_bits": int(counts.key_z.total + counts.key_x.total), "sifted_bits_z": int(counts.key_z.total),
        "chsh_s": result.chsh_s, "chsh_sigma": result.chsh_sigma, "chsh_s_lower": result.chsh_s_lower,
        "qber_z": result.qber_z, "qber_x": result.qber_x, "phase_error_upper": result.phase_error_upper,
        "device_independent": device_independent, "key_length_bits": result.key_length_bits,
        "abort": result.abort, "abort_reason": result.abort_reason,
        "secure_fraction_asymptotic": result.secure_fraction_asymptotic,
    }
