"""`qkdctl sim rate`: analytic key rates of decoy-state BB84 (asymptotic or Lim et al. finite-key),
E91 (Shor-Preskill or device-independent) and GG02 CV-QKD, and of the published systems' presets
(--system), as JSON (--json) or text."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from qkdd.hal.sim.systems import SYSTEMS, preset
from qkdd.protocols import bb84, cvqkd, e91, sweep
from qkdd.protocols.bb84_design import expected_finite_rate, optimize_settings
from qkdd.protocols.bb84_finite import DecoySettings
from qkdd.protocols.channel import ChannelParams, gain, qber
from qkdd.protocols.cli_output import one_line_usage_errors, print_report, show_defaults
from qkdd.protocols.entropy import secure_fraction_asymptotic

PROG = "qkdctl sim rate"


def register(sim_commands: argparse._SubParsersAction) -> None:
    """Add `rate` to the `qkdctl sim` command group."""
    rate = sim_commands.add_parser(
        "rate", help="analytic key rate (decoy BB84, E91 or CV-QKD)",
        description="Analytic key rate per pulse from the channel model. BB84: asymptotic GLLP with "
                    "infinite, vacuum+weak or no decoys; --finite uses the three-intensity finite-key bound of "
                    "Lim et al. (PRA 89, 022307, 2014). E91: Shor-Preskill or the device-independent bound.")
    rate.add_argument("--protocol", choices=("bb84", "e91", "cvqkd"), default="bb84")
    rate.add_argument("--decoy", choices=bb84.DECOY_METHODS, default="vacuum-weak")
    rate.add_argument("--distance-km", type=float, default=None, help="fibre length (BB84, required)")
    defaults = ChannelParams()
    rate.add_argument("--mu", type=float, default=None, help=f"signal intensity (default {defaults.mu})")
    rate.add_argument("--nu", type=float, default=None, help=f"weak decoy intensity (default {defaults.nu})")
    rate.add_argument("--alpha", type=float, default=defaults.alpha_db_per_km, help="fibre loss, dB/km")
    rate.add_argument("--eta-bob", type=float, default=defaults.eta_bob, help="receiver efficiency")
    rate.add_argument("--y0", type=float, default=defaults.y0, help="background count probability per gate")
    rate.add_argument("--e-det", type=float, default=defaults.e_det, help="misalignment error probability")
    rate.add_argument("--f-ec", type=float, default=defaults.f_ec, help="error-correction efficiency (>= 1)")
    rate.add_argument("--q", type=float, default=defaults.q, help="basis sifting factor (1/2 for BB84)")
    rate.add_argument("--afterpulse", type=float, default=0.0, help="afterpulse probability")
    rate.add_argument("--optimize-mu", action="store_true",
                      help="optimise mu (asymptotic) or all decoy settings (--finite)")
    rate.add_argument("--finite", action="store_true", help="finite-key bound of Lim et al. (BB84)")
    rate.add_argument("--n-x", type=float, default=None, help="block size: sifted X-basis detections (default 1e8)")
    rate.add_argument("--mu-vacuum", type=float, default=0.0, help="third intensity mu3 (--finite)")
    rate.add_argument("--p-signal", type=float, default=DecoySettings.p_signal)
    rate.add_argument("--p-decoy", type=float, default=DecoySettings.p_decoy)
    rate.add_argument("--q-x", type=float, default=DecoySettings.q_x, help="key-basis probability (--finite)")
    rate.add_argument("--eps-sec", type=float, default=1e-10)
    rate.add_argument("--eps-cor", type=float, default=1e-15)
    rate.add_argument("--visibility", type=float, default=None, help="E91: two-photon visibility V")
    rate.add_argument("--coincidences", type=float, default=None,
                      help="E91: coincidences per setting pair for a finite-key estimate")
    rate.add_argument("--device-independent", action="store_true", help="E91: Acin et al. DI bound")
    cv = cvqkd.CvParams()
    rate.add_argument("--modulation-variance", type=float, default=cv.modulation_variance,
                      help="CV-QKD: Alice's modulation variance V_A (shot-noise units)")
    rate.add_argument("--excess-noise", type=float, default=cv.excess_noise, help="CV-QKD: xi (SNU)")
    rate.add_argument("--eta-det", type=float, default=cv.eta_det, help="CV-QKD: detector efficiency")
    rate.add_argument("--electronic-noise", type=float, default=cv.electronic_noise, help="CV-QKD: v_el (SNU)")
    rate.add_argument("--beta", type=float, default=cv.beta, help="CV-QKD: reconciliation efficiency")
    rate.add_argument("--detection", choices=cvqkd.DETECTIONS, default=cv.detection)
    rate.add_argument("--sweep-distance", metavar="START:STOP:STEP", default=None,
                      help="key rate against distance (km, STOP included) for BB84 without, with vacuum+weak and "
                           "with infinite decoys, and CV-QKD; the other options set the rest")
    rate.add_argument("--plot", metavar="PNG", default=None, help="with --sweep-distance: write the curves to this "
                      "PNG, log scale (needs the plot extra: matplotlib)")
    rate.add_argument("--system", choices=sorted(SYSTEMS), default=None,
                      help="a published system's preset (qkdd.hal.sim.systems): its finite-key rate per pulse and "
                           "per second at its clock, next to the paper's figure; --distance-km (default: the "
                           "paper's) and --n-x (default: the preset's block) apply, the channel options do not")
    rate.add_argument("--json", action="store_true", help="print one JSON object")
    rate.set_defaults(func=run)

    show_defaults(rate)
    one_line_usage_errors(rate, PROG)


def run(args: argparse.Namespace) -> int:
    if args.plot is not None and args.sweep_distance is None:
        print(f"{PROG}: error: --plot draws a sweep: give --sweep-distance START:STOP:STEP", file=sys.stderr)
        return 2
    if args.system is not None and args.sweep_distance is not None:
        print(f"{PROG}: error: --system and --sweep-distance are separate reports: give one", file=sys.stderr)
        return 2
    if args.sweep_distance is not None:
        return _run_sweep(args)
    if args.system is not None:
        return print_report(PROG, lambda: system_report(args), args.json, render_text)
    if args.n_x is None:
        args.n_x = 1e8
    build = {"bb84": bb84_report, "e91": e91_report, "cvqkd": cvqkd_report}[args.protocol]
    return print_report(PROG, lambda: build(args), args.json, render_text)


def _run_sweep(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        distances = sweep.parse_range(args.sweep_distance)
        args.distance_km = distances[0]
        cv = cvqkd.CvParams(modulation_variance=args.modulation_variance, distance_km=distances[0],
                            alpha_db_per_km=args.alpha, excess_noise=args.excess_noise, eta_det=args.eta_det,
                            electronic_noise=args.electronic_noise, beta=args.beta, detection=args.detection)
        result["sweep"] = sweep.sweep(distances, _channel(args), cv)
        return result["sweep"].as_dict()

    status = print_report(PROG, build, args.json, _render_sweep)
    if status != 0 or args.plot is None:
        return status
    from qkdd import plots
    try:
        written = plots.rate_vs_distance(args.plot, result["sweep"].distances_km, result["sweep"].rates)
    except plots.PlotUnavailable as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: error: cannot write {args.plot}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"plot: {written}", file=sys.stderr)
    return 0


def _render_sweep(report: dict[str, Any]) -> str:
    names = list(report["key_rate_per_pulse"])
    lines = ["distance_km  " + "  ".join(f"{name:>24}" for name in names)]
    for i, distance in enumerate(report["distance_km"]):
        rates = report["key_rate_per_pulse"]
        lines.append(f"{distance:11g}  " + "  ".join(f"{rates[name][i]:24.6g}" for name in names))
    return "\n".join(lines)
def system_report(args: argparse.Namespace) -> dict[str, Any]:
    if args.protocol != "bb84":
        raise ValueError("--system: the presets are decoy-state BB84 systems")
    return preset(args.system).analytic_rate(args.distance_km, args.n_x)


def _channel(args: argparse.Namespace) -> ChannelParams:
    if args.distance_km is None:
        raise ValueError("--distance-km is required for BB84")
    fields = dict(distance_km=args.distance_km, alpha_db_per_km=args.alpha, eta_bob=args.eta_bob, y0=args.y0,
                  e_det=args.e_det, f_ec=args.f_ec, q=args.q, p_afterpulse=args.afterpulse)
    if args.mu is not None:
        fields["mu"] = args.mu
    if args.nu is not None:
        fields["nu"] = args.nu
    return ChannelParams(**fields)


def bb84_report(args: argparse.Namespace) -> dict[str, Any]:
    channel = _channel(args)
    common = {"protocol": "bb84", "distance_km": channel.distance_km, "transmittance": channel.transmittance}
    if not args.finite:
        rate = bb84.optimize_mu(channel, args.decoy) if args.optimize_mu else bb84.key_rate(channel, args.decoy)
        return {**common, **rate.as_dict(), "finite": False}
    if args.decoy != "vacuum-weak":
        raise ValueError("--finite uses the three-intensity bound of Lim et al.; use --decoy vacuum-weak")
    if args.optimize_mu:
        finite = optimize_settings(channel, args.n_x, mu_vacuum=args.mu_vacuum, eps_sec=args.eps_sec,
                                   eps_cor=args.eps_cor)
    else:
        settings = DecoySettings(mu_signal=channel.mu, mu_decoy=channel.nu, mu_vacuum=args.mu_vacuum,
                                 p_signal=args.p_signal, p_decoy=args.p_decoy, q_x=args.q_x)
        finite = expected_finite_rate(channel, settings, args.n_x, eps_sec=args.eps_sec, eps_cor=args.eps_cor)
    s, result = finite.settings, finite.result
    return {
        **common, "decoy": "vacuum-weak", "finite": True, "mu": s.mu_signal, "nu": s.mu_decoy,
        "mu_vacuum": s.mu_vacuum, "p_signal": s.p_signal, "p_decoy": s.p_decoy, "p_vacuum": s.p_vacuum,
        "q_x": s.q_x, "gain_signal": gain(channel, s.mu_signal), "qber_signal": qber(channel, s.mu_signal),
        "y1": result.y1_lower, "e1": result.e1_upper, "phase_error_upper": result.phase_error_upper,
        "key_rate_per_pulse": result.key_rate_per_pulse, "key_length_bits": result.key_length_bits,
        "n_x": args.n_x, "pulses_sent": finite.pulses_sent, "abort": result.abort,
        "abort_reason": result.abort_reason, "eps_sec": result.eps_sec, "eps_cor": result.eps_cor,
        "secure_fraction_asymptotic": secure_fraction_asymptotic(qber(channel, s.mu_signal)),
    }


def e91_report(args: argparse.Namespace) -> dict[str, Any]:
    if args.visibility is None:
        raise ValueError("--visibility is required for E91")
    if args.f_ec < 1.0:
        raise ValueError(f"f_ec: error-correction efficiency must be >= 1, got {args.f_ec!r}")
    s, q = e91.werner_statistics(args.visibility)
    report: dict[str, Any] = {
        "protocol": "e91", "visibility": args.visibility, "chsh_s": s, "qber": q,
        "device_independent": args.device_independent,
        "key_rate_per_sifted_bit": (e91.device_independent_rate(s, q, args.f_ec) if args.device_independent
                              else e91.shor_preskill_rate(q, args.f_ec)),
        "secure_fraction_asymptotic": secure_fraction_asymptotic(q),
    }
    if args.coincidences is not None:
        counts = e91.expected_counts(args.visibility, args.coincidences)
        result = e91.e91_key_length(counts, eps_sec=args.eps_sec, eps_cor=args.eps_cor, f_ec=args.f_ec,
                                    device_independent=args.device_independent)
        report.update(finite=True, coincidences_per_pair=args.coincidences,
                      key_length_bits=result.key_length_bits, chsh_s_lower=result.chsh_s_lower,
                      abort=result.abort, abort_reason=result.abort_reason,
                      key_rate_per_sifted_bit=result.key_length_bits / args.coincidences)
    return report


def cvqkd_report(args: argparse.Namespace) -> dict[str, Any]:
    if args.distance_km is None:
        raise ValueError("--distance-km is required for CV-QKD")
    params = cvqkd.CvParams(modulation_variance=args.modulation_variance, distance_km=args.distance_km,
                            alpha_db_per_km=args.alpha, excess_noise=args.excess_noise, eta_det=args.eta_det,
                            electronic_noise=args.electronic_noise, beta=args.beta, detection=args.detection)
    return {"protocol": "cvqkd", "distance_km": params.distance_km, "detection": params.detection,
            **cvqkd.gg02_key_rate(params).as_dict()}


def render_text(report: dict[str, Any]) -> str:
    width = max(len(k) for k in report)
    lines = []
    for key, value in report.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        lines.append(f"{key.replace('_', ' '):<{width}}  {value}")
    return "\n".join(lines)
