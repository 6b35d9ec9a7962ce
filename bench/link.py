"""End-to-end secret key rate: two qkdd daemons on loopback over a simulated link (GYS parameters, 1 GHz
source, unpaced: the rate is what the post-processing sustains on this machine).

    python -m bench.link --distance-km 10 --seconds 30 [--system yuan2018|li2023] [--protocol cvqkd]
    python -m bench.link --distance-km 50 --reconciliation ldpc --fiber-rtt    (BB84: LDPC instead of Cascade,
        the peer connection through a delaying proxy with the fiber's round trip, 2 L n_g / c)
    (cvqkd: [--cv-detection heterodyne] [--cv-symbols N], Bob's detection and the symbols per frame)
    -> {"distance_km","seconds","secret_bits_per_s","sifted_bits_per_s","qber","frames", ...}
    python -m bench.link --protocol e91 --distance-km 10 --seconds 20     (bench.link_e91: E91 over the
    simulated pair source, with the analytic finite-size rate of the same configuration)

With --system the simulated link is that published system's preset (qkdd.hal.sim.systems), and the line
also holds the preset's analytic finite-key rate at this distance (analytic_secret_bits_per_s: a 10^8-bit
block, as the paper; analytic_frame_secret_bits_per_s: a block of this run's sifted X bits per frame),
both for a source paced at the preset's clock; this run is not paced, so the measured rate is what the
post-processing of the two daemons sustains on this machine.

The window starts once the first keys are stored (start-up and the first frames excluded); secret bits
are the key bits both ends committed (Alice's count), sifted bits the X-basis bits reconciled.
BB84 lines also hold the CPU seconds per secret Mbit of each frame stage (both daemons' worker threads;
"other": the rest of both processes: event loop, TLS and MACs, the simulated devices), the event loops'
worst stall since start and stalls over 50 ms (qkdd.loop_watch, from each daemon's /metrics), the slowest
/healthz answer of a probe polling both daemons every 0.1 s during the window, and the 1-minute load
average at the end (the machine may be shared: compare ratios).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from qkdd.hal.sim.systems import SYSTEMS, preset
from qkdd.link.pair import LinkPair, free_port

# Round trip of light in standard single-mode fiber (group index ~1.468, ITU-T G.652): 2 * 1.468 / c per km.
FIBER_RTT_MS_PER_KM = 2 * 1.468 / 299_792.458 * 1000


@dataclasses.dataclass
class DelayedLinkPair(LinkPair):
    """A LinkPair whose peer connection (Bob dials Alice) runs through bench.chaos_proxy with a fixed delay of
    half the round trip each way: the classical channel's latency, which interactive reconciliation pays per
    round trip."""
    rtt_ms: float = 0.0
    proxy: subprocess.Popen | None = None

    def write(self) -> None:
        super().write()
        bob = self.ends["bob"].config_path
        text = bob.read_text()
        match = re.search(r'peer_addr = "127\.0\.0\.1:(\d+)"', text)
        if match is None:
            raise RuntimeError("bob's configuration names no peer_addr")
        listen = free_port()
        settings = self.workdir / "proxy.json"
        settings.write_text(json.dumps({"delay_ms": self.rtt_ms / 2}))
        bob.write_text(text.replace(match.group(0), f'peer_addr = "127.0.0.1:{listen}"'))
        with open(self.workdir / "proxy.log", "ab") as log:
            self.proxy = subprocess.Popen([sys.executable, "-m", "bench.chaos_proxy", "--listen",
                                           f"127.0.0.1:{listen}", "--connect", f"127.0.0.1:{match.group(1)}",
                                           "--settings", str(settings)],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def stop(self) -> None:
        super().stop()
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.terminate()
            self.proxy.wait(10)


KEEP_WORKDIR_ENV = "QKDD_BENCH_WORKDIR"       # keep the daemons' configs and logs there (profiling)
PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 30.0


class HealthProbe:
    """GET /healthz of both daemons every PROBE_INTERVAL_S from a thread: the slowest answer (a stalled
    event loop answers late)."""

    def __init__(self, pair: LinkPair):
        self._pair = pair
        self._stop = threading.Event()
        self.worst_s = 0.0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
            while not self._stop.wait(PROBE_INTERVAL_S):
                for end in self._pair.ends.values():
                    started = time.monotonic()
                    try:
                        client.get(f"http://{end.health}/healthz")
                    except httpx.HTTPError:
                        self.failures += 1
                    self.worst_s = max(self.worst_s, time.monotonic() - started)


def _snapshot(pair: LinkPair) -> dict:
    """Both ends' link metrics and process figures (CPU, event-loop stalls)."""
    return {role: {**pair.metrics(role), **pair.process_figures(role)} for role in ("alice", "bob")}


def _cpu_per_secret_mbit(start: dict, end: dict, secret_mbit: float) -> dict:
    """CPU seconds per secret Mbit: each frame stage (both ends' worker threads summed), the simulated devices'
    worker threads ("device"), everything else in the two daemons (event loop, TLS and MACs, the devices'
    sockets), the total, and the total less the devices ("post_processing")."""
    if secret_mbit <= 0:
        return {}
    stages: dict[str, float] = {}
    for role in ("alice", "bob"):
        for stage, seconds in end[role].get("cpu_s", {}).items():
            stages[stage] = stages.get(stage, 0.0) + seconds - start[role].get("cpu_s", {}).get(stage, 0.0)
    total = sum(end[role]["cpu_s_process"] - start[role]["cpu_s_process"] for role in ("alice", "bob"))
    per = {stage: round(seconds / secret_mbit, 3) for stage, seconds in sorted(stages.items())}
    per["other"] = round((total - sum(stages.values())) / secret_mbit, 3)
    per["total"] = round(total / secret_mbit, 3)
    # What a link on real devices would spend: the simulated devices' physics and checks ("device") left out.
    per["post_processing"] = round((total - stages.get("device", 0.0)) / secret_mbit, 3)
    return per


def measure(distance_km: float, seconds: float, frame_detections: int, frames_in_flight: int,
            system: str | None = None, reconciliation: str = "cascade", rtt_ms: float | None = None) -> dict:
    """`rtt_ms` None: the peers talk directly (loopback); a number: through a proxy with that round trip."""
    options = {"distance_km": distance_km, "frame_detections": frame_detections, "frames_in_flight": frames_in_flight,
               "extra_sim": {"system": system} if system else {},
               "extra_link": {"reconciliation": reconciliation} if reconciliation != "cascade" else {}}
    with tempfile.TemporaryDirectory(prefix="qkdd-bench-link-") as workdir:
        workdir = os.environ.get(KEEP_WORKDIR_ENV) or workdir
        pair_type = LinkPair if rtt_ms is None else functools.partial(DelayedLinkPair, rtt_ms=rtt_ms)
        with pair_type(Path(workdir), **options) as pair:
            with HealthProbe(pair) as probe:
                both_start, both_end, span = pair.measure_window(seconds, first_key_timeout_s=240,
                                                                 snapshot=lambda: _snapshot(pair))
    start, end = both_start["alice"], both_end["alice"]
    secret_mbit = (end["key_bits_generated"] - start["key_bits_generated"]) / 1e6
    loop = {"event_loop_worst_stall_s": max(both_end[role]["worst_stall_s"] for role in ("alice", "bob")),
            "event_loop_worst_stall_cpu_s": max(both_end[role]["worst_stall_cpu_s"] for role in ("alice", "bob")),
            "event_loop_stalls_over_50ms": int(sum(both_end[role]["stalls_over_50ms"] for role in ("alice", "bob"))),
            "healthz_slowest_s": round(probe.worst_s, 3), "healthz_failures": probe.failures,
            "cpu_s_per_secret_mbit": _cpu_per_secret_mbit(both_start, both_end, secret_mbit),
            "load_average_1m": round(os.getloadavg()[0], 2)}
    analytic = {}
    if system:
        rate = preset(system)
        frames = max(end["frames"] - start["frames"], 1)
        frame_n_x = (end["sifted_bits_total"] - start["sifted_bits_total"]) / frames
        analytic = {"system": system,
                    "analytic_secret_bits_per_s": round(rate.analytic_rate(distance_km)["analytic_secret_bits_per_s"]),
                    "analytic_frame_secret_bits_per_s": round(
                        rate.analytic_rate(distance_km, frame_n_x)["analytic_secret_bits_per_s"]) if frame_n_x else 0}
    return {**analytic, "distance_km": distance_km, "seconds": round(span, 2),
            "secret_bits_per_s": round((end["key_bits_generated"] - start["key_bits_generated"]) / span),
            "sifted_bits_per_s": round((end["sifted_bits_total"] - start["sifted_bits_total"]) / span),
            "qber": end["qber"], "frames": end["frames"] - start["frames"],
            "frames_aborted": end["frames_aborted"] - start["frames_aborted"],
            "frames_unpaired": end["frames_unpaired"] - start["frames_unpaired"],
            "frame_detections": frame_detections, "frames_in_flight": frames_in_flight,
            "reconciliation": reconciliation, "rtt_ms": rtt_ms, **loop}


def cv_analytic(distance_km: float, symbols_per_s: float, detection: str = "homodyne",
                symbols_per_frame: int | None = None) -> dict:
    """The analytic finite-size GG02 rate of the link's configuration (qkdd.protocols.cvqkd_finite, Leverrier
    et al. 2010 Eq. (2); beta of the LDPC code at the expected SNR, frames of the default size), per symbol
    and at the symbol rate the two daemons sustained."""
    from qkdd.hal.sim.settings import SimConfig
    from qkdd.postprocess import cv_reconciliation
    from qkdd.protocols.cvqkd import gg02_key_rate
    from qkdd.protocols.cvqkd_finite import expected_estimate, finite_size_rate
    sim = SimConfig(distance_km=distance_km, cv_detection=detection,
                    cv_symbols_per_frame=symbols_per_frame or SimConfig().cv_symbols_per_frame)
    params = sim.cv_settings().params
    d = 1 if params.detection == "homodyne" else 2
    code = cv_reconciliation.choose_code(expected_estimate(params, 10 ** 9).snr)
    beta = 0.0 if code is None else min(cv_reconciliation.code_info(code).rate * d
                                        / gg02_key_rate(params).mutual_information, 1.0)
    symbols = sim.cv_symbols_per_frame
    rate = finite_size_rate(dataclasses.replace(params, beta=beta), symbols, symbols // 2) if beta > 0 else 0.0
    return {"beta": round(beta, 4), "symbols_per_frame": symbols, "analytic_secret_bits_per_symbol": rate,
            "analytic_secret_bits_per_s": round(rate * symbols_per_s)}


def measure_cv(distance_km: float, seconds: float, detection: str = "homodyne",
               symbols_per_frame: int | None = None) -> dict:
    """Two daemons running protocol "cvqkd" (GG02, unpaced): secret bits/s next to the analytic finite-size rate
    at the same symbol throughput."""
    from qkdd.hal.sim.settings import SimConfig
    with tempfile.TemporaryDirectory(prefix="qkdd-bench-link-") as workdir:
        symbols = symbols_per_frame or SimConfig().cv_symbols_per_frame
        with LinkPair(Path(workdir), distance_km=distance_km, extra_link={"protocol": "cvqkd"},
                      extra_sim={"cv_detection": detection, "cv_symbols_per_frame": symbols}) as pair:
            start, end, span = pair.measure_window(seconds, first_key_timeout_s=180)
    frames = end["frames"] - start["frames"]
    symbols_per_s = frames * (symbols_per_frame or SimConfig().cv_symbols_per_frame) / span
    analytic = cv_analytic(distance_km, symbols_per_s, detection, symbols_per_frame)
    secret_bits_per_s = (end["key_bits_generated"] - start["key_bits_generated"]) / span
    return {"protocol": "cvqkd", "detection": detection, "distance_km": distance_km, "seconds": round(span, 2),
            "secret_bits_per_s": round(secret_bits_per_s), **analytic,
            "fraction_of_analytic": round(secret_bits_per_s / analytic["analytic_secret_bits_per_s"], 3)
            if analytic["analytic_secret_bits_per_s"] else None,
            "symbols_per_s": round(symbols_per_s), "frames": frames,
            "frames_aborted": end["frames_aborted"] - start["frames_aborted"],
            "frames_unpaired": end["frames_unpaired"] - start["frames_unpaired"]}


def measure_e91(args: argparse.Namespace, distance_km: float) -> dict:
    from bench import link_e91
    return link_e91.measure(distance_km, args.seconds, args.frames_in_flight)


def measure_bb84(args: argparse.Namespace, distance_km: float) -> dict:
    if args.frame_detections is None:
        args.frame_detections = 1 << 25 if args.system else 1 << 21
    rtt_ms = distance_km * FIBER_RTT_MS_PER_KM if args.fiber_rtt else args.rtt_ms
    return measure(distance_km, args.seconds, args.frame_detections, args.frames_in_flight, args.system,
                   args.reconciliation, rtt_ms)


# --protocol -> its measurement (one line of JSON per distance)
PROTOCOLS = {"bb84": measure_bb84, "e91": measure_e91,
             "cvqkd": lambda args, distance_km: measure_cv(distance_km, args.seconds, args.cv_detection,
                                                                    args.cv_symbols)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="bb84")
    parser.add_argument("--distance-km", type=float, action="append")
    parser.add_argument("--seconds", type=float, default=30.0)
    # 2 M: measured 1.15e6 vs 7.9e5 bit/s at 1 M (10 km). With --system 32 M: the presets' biased basis choice
    # (q_x 0.9-0.92) leaves too few Z-basis detections for Lim's bound below about 10^7 sifted X bits a frame
    parser.add_argument("--frame-detections", type=int, default=None)
    parser.add_argument("--frames-in-flight", type=int, default=4)
    parser.add_argument("--system", choices=sorted(SYSTEMS), default=None, help="a published system's preset")
    parser.add_argument("--reconciliation", choices=["cascade", "ldpc"], default="cascade", help="BB84 only")
    parser.add_argument("--rtt-ms", type=float, default=None,
                        help="BB84: run the peer connection through a proxy with this round trip (ms)")
    parser.add_argument("--fiber-rtt", action="store_true",
                        help="BB84: the proxy's round trip is the fiber's at --distance-km (4.9 us/km each way)")
    parser.add_argument("--cv-detection", choices=("homodyne", "heterodyne"), default="homodyne",
                        help="cvqkd: Bob's detection")
    parser.add_argument("--cv-symbols", type=int, default=None, help="cvqkd: symbols per frame (default: the sim's)")
    args = parser.parse_args()
    for distance in args.distance_km or [10.0]:
        print(json.dumps(PROTOCOLS[args.protocol](args, distance)), flush=True)


if __name__ == "__main__":
    main()
