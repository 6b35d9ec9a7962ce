"""A link's history for `qkdctl links --plot`: its per-frame QBER points (`/v1/links/{id}/qber`) as a QBER
series, and their secret bits summed into time bins as a key-rate series."""
from __future__ import annotations

import math

MAX_BINS = 60
MIN_BIN_S = 1.0


def series(points: list[dict]) -> dict[str, list[float]]:
    """{"time_s", "qber"} per frame and {"rate_time_s", "rate_bps"} per bin (at most MAX_BINS of equal width,
    at least MIN_BIN_S each); the last bin is measured to the last frame, not to its full width."""
    points = sorted((p for p in points if isinstance(p.get("time"), (int, float)) and p.get("qber") is not None),
                    key=lambda p: p["time"])
    times = [float(p["time"]) for p in points]
    result: dict[str, list[float]] = {"time_s": times, "qber": [float(p["qber"]) for p in points],
                                      "rate_time_s": [], "rate_bps": []}
    if len(points) < 2:
        return result
    start, span = times[0], times[-1] - times[0]
    width = max(MIN_BIN_S, span / MAX_BINS)
    count = max(1, math.ceil(span / width))
    bits = [0.0] * count
    for point in points[1:]:                 # the first frame's bits were made before the series starts
        # a frame finished at t holds bits made since the frame before: bin (t - width, t] -> index ceil - 1
        index = min(count - 1, max(0, math.ceil((point["time"] - start) / width) - 1))
        bits[index] += float(point.get("secret_bits") or 0)
    for index, total in enumerate(bits):
        seconds = min(width, span - index * width)
        result["rate_time_s"].append(start + index * width)
        result["rate_bps"].append(total / seconds if seconds > 0 else 0.0)
    return result
