"""Two real daemons whose frames are large (8 M detections: tens of MB per frame, records of ~17 MB) keep
their listeners answering while frames go through: the frame's numpy work, the simulated quantum channel's
parsing and the peer records' MACs run in worker threads, not on the event loop (issue 22: "no listener may
stall"; a daemon stalled > 10 s on 32 M-detection frames before). Measured from outside (a /healthz probe)
and inside (each daemon's loop watch on /metrics, qkdd.loop_watch)."""
from __future__ import annotations

import time

import httpx

from qkdd.link.pair import LinkPair

FRAME_DETECTIONS = 1 << 23
FRAMES = 2                     # frames both ends took through sifting and estimation (aborted ones count)
DEADLINE_S = 240.0             # a loaded 2-core CI host; about 30 s here
PROBE_INTERVAL_S = 0.1
# A loaded host deschedules any process for a while, so the bounds are generous next to what they catch.
# Measured here at load 12 on 2 cores: before the fix the loops' worst tick was 0.34 s of CPU (2.35 s of wall
# time; 3.2 s at 32 M detections); with it 0.05 s of CPU (daemon start-up), 0.3 s of wall time.
SLOWEST_HEALTHZ_S = 5.0        # the 10 s, halved
WORST_TICK_CPU_S = 0.25        # CPU time of the loop's thread in one tick (waits for a CPU do not count)


def test_healthz_answers_while_large_frames_go_through(tmp_path):
    slowest_s, answers = 0.0, 0
    with LinkPair(tmp_path, distance_km=10.0, frame_detections=FRAME_DETECTIONS, frames_in_flight=2,
                  extra_sim={"system": "yuan2018"}) as pair, httpx.Client(timeout=30.0) as client:
        deadline = time.monotonic() + DEADLINE_S
        while pair.metrics("alice")["frames"] < FRAMES:
            assert time.monotonic() < deadline, f"fewer than {FRAMES} frames within {DEADLINE_S:g} s"
            for end in pair.ends.values():
                started = time.monotonic()
                assert client.get(f"http://{end.health}/healthz").status_code == 200
                slowest_s, answers = max(slowest_s, time.monotonic() - started), answers + 1
            time.sleep(PROBE_INTERVAL_S)
        figures = {role: pair.process_figures(role) for role in ("alice", "bob")}
    assert answers > 20
    assert slowest_s < SLOWEST_HEALTHZ_S, f"/healthz took {slowest_s:.2f} s"
    for role, measured in figures.items():
        assert measured["worst_stall_cpu_s"] < WORST_TICK_CPU_S, (role, measured)
