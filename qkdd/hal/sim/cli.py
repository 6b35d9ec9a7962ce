"""`qkdctl sim run`: Monte Carlo of a decoy-BB84, E91 or GG02 (cvqkd) link with optional attack, printed as JSON
(--json) or text. Exit status 0 with a key, 1 when the protocol aborts the run (the reason on stderr), 2 for bad
parameters (one error line)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any

from qkdd.hal.sim import cv_run, montecarlo
from qkdd.hal.sim.cv_channel import CvChannelSettings, parse_cloner
from qkdd.hal.sim.params import Attack, Drift, SimParams
from qkdd.protocols.cvqkd import DETECTIONS, CvParams
from qkdd.protocols.cli_output import finite_or_null, one_line_usage_errors, print_report, show_defaults

PROG = "qkdctl sim run"
EXIT_ABORTED = 1            # the run ran, but the protocol aborted it (the reason goes to stderr)
MAX_PULSES = 10 ** 15


def pulses_count(text: str) -> int:
    """A pulse count written as an integer or in float notation (1e10); must be a whole number >= 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 1 or value != math.floor(value) or value > MAX_PULSES:
        raise argparse.ArgumentTypeError(f"need a whole number in [1, {MAX_PULSES:.0e}], got {text!r}")
    return int(text) if text.strip().isdigit() else int(value)


def seed_value(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"need an integer, got {text!r}") from None
    if not 0 <= value < 2 ** 256:
        raise argparse.ArgumentTypeError(f"need an integer in [0, 2^256), got {text!r}")
    return value


def register(sim_commands: argparse._SubParsersAction) -> None:
    """Add `run` to the `qkdctl sim` command group."""
    d = SimParams()
    run = sim_commands.add_parser(
        "run", help="Monte Carlo run of the photon-level simulator",
        description="Simulate N pulse slots of a decoy-state BB84 or E91 link (statistically exact per slot, "
                    "cost proportional to detections) and estimate gains, error rates, single-photon bounds or "
                    "CHSH S, and the finite-key length with the protocol engines.")
    run.add_argument("--protocol", choices=("bb84", "e91", "cvqkd"), default="bb84")
    run.add_argument("--pulses", type=pulses_count, default=None,
                     help="pulse slots to simulate (1e10 accepted); cvqkd: symbols of the frame "
                          f"(default {cv_run.DEFAULT_SYMBOLS:.0e}); required for bb84 and e91")
    run.add_argument("--distance-km", type=float, required=True, help="fiber length, km")
    run.add_argument("--attack", type=str, default="none",
                     help="none | intercept-resend[:P] | pns | blinding; cvqkd: none | entangling-cloner[:XI]")
    run.add_argument("--monitor", action="store_true", help="enable Bob's photocurrent monitor (aborts on blinding)")
    run.add_argument("--monitor-threshold-w", type=float, default=montecarlo.MONITOR_THRESHOLD_W)
    run.add_argument("--blinding-power-w", type=float, default=Attack().blinding_power_w)
    run.add_argument("--seed", type=seed_value, default=None, help="integer seed for a reproducible run")
    run.add_argument("--decoy", choices=("vacuum-weak", "none"), default=d.decoy,
                     help="three intensities signal/decoy/vacuum (Lim et al. bound) or signal only (GLLP)")
    run.add_argument("--mu", type=float, default=d.mu_signal, help="signal mean photon number")
    run.add_argument("--nu", type=float, default=d.mu_decoy, help="decoy mean photon number")
    run.add_argument("--mu-vacuum", type=float, default=d.mu_vacuum, help="third (vacuum) intensity")
    run.add_argument("--p-signal", type=float, default=d.p_signal)
    run.add_argument("--p-decoy", type=float, default=d.p_decoy)
    run.add_argument("--q-x", type=float, default=d.q_x, help="probability of the key basis X")
    run.add_argument("--alpha", type=float, default=d.fiber_loss_db_per_km, help="fiber loss, dB/km")
    run.add_argument("--eta-bob", type=float, default=d.detector_efficiency, help="detection efficiency")
    run.add_argument("--dark-count", type=float, default=d.dark_count_prob, help="dark count probability per gate "
                     "and detector")
    run.add_argument("--e-det", type=float, default=d.misalignment, help="misalignment error probability")
    run.add_argument("--afterpulse", type=float, default=d.afterpulse_prob, help="afterpulse probability per click")
    run.add_argument("--clock-hz", type=float, default=d.clock_hz)
    run.add_argument("--extra-loss-db", type=float, default=0.0, help="loss drift, dB")
    run.add_argument("--misalignment-drift", type=float, default=0.0, help="added to --e-det")
    run.add_argument("--pair-mean", type=float, default=d.pair_mean, help="E91: mean pairs per slot")
    run.add_argument("--pair-statistics", choices=("thermal", "poisson"), default=d.pair_statistics,
                     help="E91: thermal (single-mode SPDC) or Poisson (many modes) pair numbers")
    run.add_argument("--source-km", type=float, default=None, help="E91: source distance from Alice (midpoint)")
    run.add_argument("--device-independent", action="store_true", help="E91: Acin et al. DI key length")
    run.add_argument("--f-ec", type=float, default=1.16)
    run.add_argument("--eps-sec", type=float, default=1e-10)
    run.add_argument("--eps-cor", type=float, default=1e-15)
    cv = CvParams()
    run.add_argument("--modulation-variance", type=str, default="auto",
                     help="cvqkd: V_A in SNU, or auto (the SNR at the point of the code giving the most key)")
    run.add_argument("--excess-noise", type=float, default=cv.excess_noise, help="cvqkd: xi, SNU at the input")
    run.add_argument("--electronic-noise", type=float, default=cv.electronic_noise, help="cvqkd: v_el, SNU")
    run.add_argument("--eta-det", type=float, default=cv.eta_det, help="cvqkd: detector efficiency")
    run.add_argument("--detection", choices=DETECTIONS, default=cv.detection, help="cvqkd: Bob's detection")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(func=main)

    show_defaults(run)
    one_line_usage_errors(run, PROG)


def _check_eps(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name}: must lie in (0, 1), got {value!r}")


def _cvqkd_report(args: argparse.Namespace) -> dict[str, Any]:
    cloner = parse_cloner(args.attack)
    params = CvParams(distance_km=args.distance_km, alpha_db_per_km=args.alpha, excess_noise=args.excess_noise,
                      eta_det=args.eta_det, electronic_noise=args.electronic_noise, detection=args.detection)
    if args.modulation_variance == "auto":
        variance = cv_run.operating_modulation_variance(params, symbols=args.pulses or cv_run.DEFAULT_SYMBOLS)
    else:
        try:
            variance = float(args.modulation_variance)
        except ValueError:
            raise ValueError(f"modulation_variance: a number or auto, got {args.modulation_variance!r}") from None
    params = dataclasses.replace(params, modulation_variance=variance)
    _check_eps("eps_sec", args.eps_sec)
    _check_eps("eps_cor", args.eps_cor)
    settings = CvChannelSettings(params=params, cloner_excess_noise=cloner)
    return cv_run.run(settings, args.pulses or cv_run.DEFAULT_SYMBOLS, seed=args.seed, eps_pe=args.eps_sec,
                      eps_smooth=args.eps_sec, eps_pa=args.eps_sec, eps_cor=args.eps_cor)


def report(args: argparse.Namespace) -> dict[str, Any]:
    if args.protocol == "cvqkd":
        return _cvqkd_report(args)
    if args.pulses is None:
        raise ValueError("--pulses: required for bb84 and e91")
    params = SimParams(
        protocol=args.protocol, distance_km=args.distance_km, fiber_loss_db_per_km=args.alpha,
        detector_efficiency=args.eta_bob, dark_count_prob=args.dark_count, misalignment=args.e_det,
        afterpulse_prob=args.afterpulse, clock_hz=args.clock_hz, decoy=args.decoy, mu_signal=args.mu,
        mu_decoy=args.nu, mu_vacuum=args.mu_vacuum, p_signal=args.p_signal, p_decoy=args.p_decoy, q_x=args.q_x,
        pair_mean=args.pair_mean, pair_statistics=args.pair_statistics, source_position_km=args.source_km)
    attack = Attack.parse(args.attack)
    if attack.kind == "blinding":
        attack = Attack("blinding", blinding_power_w=args.blinding_power_w)
    if args.protocol == "e91" and attack.kind != "none":
        raise ValueError("attack: attacks are simulated for BB84 only")
    if args.f_ec < 1:
        raise ValueError(f"f_ec: error-correction efficiency must be >= 1, got {args.f_ec!r}")
    _check_eps("eps_sec", args.eps_sec)
    _check_eps("eps_cor", args.eps_cor)
    drift = Drift(extra_loss_db=args.extra_loss_db, misalignment=args.misalignment_drift)
    return montecarlo.run(params, args.pulses, attack=attack, drift=drift, seed=args.seed, monitor=args.monitor,
                          monitor_threshold_w=args.monitor_threshold_w, f_ec=args.f_ec, eps_sec=args.eps_sec,
                          eps_cor=args.eps_cor, device_independent=args.device_independent)


def main(args: argparse.Namespace) -> int:
    """Exit status 0 when the run leaves a key, EXIT_ABORTED (with the reason on stderr) when the protocol
    aborts it (attack detected, QBER too high, no key under the bound), 2 for bad parameters."""
    result: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        result.update(report(args))
        return result

    status = print_report(PROG, build, args.json, render_text)
    if status == 0 and result.get("abort"):
        print(f"{PROG}: aborted: {result.get('abort_reason') or 'no key'}", file=sys.stderr)
        return EXIT_ABORTED
    return status


def render_text(result: dict[str, Any]) -> str:
    lines = []
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(finite_or_null(value), sort_keys=True)
        lines.append(f"{key.replace('_', ' ')}: {value}")
    return "\n".join(lines)
