"""bench.link --protocol e91: two qkdd daemons on loopback running an E91 link over the simulated pair
source (qkdd.hal.sim.pair_source), next to the analytic finite-size rate of the same configuration.

The configuration (E91_SIM below): the daemon's default modern detectors (efficiency 10 %, dark counts
6e-7, e_d 0.5 %; qkdd.hal.sim.settings), a thermal SPDC source of 0.01 pairs per slot at 1 GHz halfway
along the fiber, 20 ns detector dead time, biased settings (Alice's key setting 0.8, Bob's 0.7), frames of
FRAME_SLOTS slots (about 10^6 coincidences at 10 km). The source is not paced: the wall-clock rate
(secret_bits_per_s) is what the two daemons' post-processing sustains on this machine. The analytic rate
(analytic_secret_bits_per_s; qkdd.hal.sim.pair_model.analytic_frame_key_bits, Acin et al.'s bound with the
CHSH value at its Hoeffding confidence bound, leakage 1.16 h(Q), on the expected counts of one frame) is per
second of source time at the clock rate, and so is source_secret_bits_per_s: the key bits the daemons
stored per frame over the frame's source time. `ratio` = source / analytic (target >= 0.8).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from qkdd.hal.sim.pair_model import analytic_frame_key_bits
from qkdd.hal.sim.settings import SimConfig
from qkdd.link.pair import LinkPair

FRAME_SLOTS = 1 << 34
E91_SIM = dict(pair_mean=0.01, dead_time_ns=20.0, e91_alice_key_prob=0.8, e91_bob_key_prob=0.7)


def measure(distance_km: float, seconds: float, frames_in_flight: int) -> dict:
    config = SimConfig(distance_km=distance_km, **E91_SIM)
    params = config.params("e91")
    with tempfile.TemporaryDirectory(prefix="qkdd-bench-link-e91-") as workdir:
        with LinkPair(Path(workdir), distance_km=distance_km, frame_detections=1 << 24, frame_slots=FRAME_SLOTS,
                      frames_in_flight=frames_in_flight, extra_link={"protocol": "e91"}, extra_sim=E91_SIM) as pair:
            start, end, span = pair.measure_window(seconds, first_key_timeout_s=120)
            chsh = [line for line in pair.http.get(f"http://{pair.ends['alice'].health}/metrics").text.splitlines()
                    if line.startswith("qkd_chsh_value{")]
    frames = end["frames"] - start["frames"]
    key_bits = end["key_bits_generated"] - start["key_bits_generated"]
    frame_s = FRAME_SLOTS / params.clock_hz
    analytic = analytic_frame_key_bits(params, FRAME_SLOTS, dead_time_ns=E91_SIM["dead_time_ns"])
    analytic_bps = analytic.key_length_bits / frame_s
    source_bps = key_bits / (frames * frame_s) if frames else 0.0
    return {"protocol": "e91", "distance_km": distance_km, "seconds": round(span, 2),
            "secret_bits_per_s": round(key_bits / span), "source_secret_bits_per_s": round(source_bps),
            "analytic_secret_bits_per_s": round(analytic_bps),
            "ratio": round(source_bps / analytic_bps, 3) if analytic_bps else None,
            "analytic_chsh_s": round(analytic.chsh_s, 4), "chsh_s": float(chsh[0].split()[-1]) if chsh else None,
            "sifted_bits_per_s": round((end["sifted_bits_total"] - start["sifted_bits_total"]) / span),
            "qber": end["qber"], "frames": frames, "frames_aborted": end["frames_aborted"] - start["frames_aborted"],
            "frames_unpaired": end["frames_unpaired"] - start["frames_unpaired"], "frame_slots": FRAME_SLOTS,
            "frames_in_flight": frames_in_flight}
