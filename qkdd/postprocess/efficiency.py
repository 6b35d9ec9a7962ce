"""What each reconciliation method discloses, as measured, for the estimate made before a frame is reconciled.

The early-abort check (qkdd.link.pipeline, qkdd.link.e91_pipeline) asks the finite-key bound whether a frame can
yield any key before spending reconciliation on it; it must guess the leakage, f h(Q) per key bit. A fixed guess
either drops frames that would have yielded key (too high: with f 1.16 where Cascade `yan` discloses 1.06, small
frames at long range were refused) or reconciles hopeless ones (too low). This module gives f as measured for each
method, frame length and QBER, interpolated between the measured points; the key length itself is always computed
afterwards from the bits actually disclosed.
"""
from __future__ import annotations

import bisect
import math

# The measured points: frame lengths (key bits) and QBERs of the grid below.
FRAME_BITS = (10_000, 100_000, 1_000_000)
QBERS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.11)
# f = disclosed / (n h(Q)) per method (a Cascade schedule, or "ldpc": its default decoder and plan,
# qkdd.postprocess.ldpc), one row per frame length, one entry per QBER: `python -m bench.reconcile --algo A --n N
# --qber Q --noise bernoulli` with 300 frames at 10^4 bits, 200 at 10^5, 20 at 10^6 (2026-12-07, README; "ldpc" at
# 10^5 and 10^6 bits, 8 and 11 %: the default decoder's sum-product pair, measured again when it became the default
# there, 300 and 200 frames at 10^5 bits; 10^6 bits at 5 % again when it became the default above 4 %, 20 frames: at
# 10^5 bits it fits no code there and min-sum's figure stands).
MEASURED = {
    "original": ((1.1395, 1.1458, 1.1595, 1.1732, 1.1835, 1.2156, 1.2392),
                 (1.1255, 1.1391, 1.1567, 1.1711, 1.1807, 1.2147, 1.2384),
                 (1.1249, 1.1389, 1.1567, 1.1709, 1.1806, 1.2147, 1.2382)),
    "yan": ((1.1502, 1.1108, 1.0880, 1.0829, 1.0801, 1.0965, 1.0922),
            (1.0581, 1.0578, 1.0610, 1.0594, 1.0634, 1.0860, 1.0835),
            (1.0487, 1.0527, 1.0579, 1.0568, 1.0619, 1.0846, 1.0827)),
    "efficient": ((1.1770, 1.1315, 1.0930, 1.0884, 1.0738, 1.0822, 1.0832),
                  (1.0516, 1.0440, 1.0412, 1.0389, 1.0443, 1.0553, 1.0597),
                  (1.0363, 1.0318, 1.0349, 1.0334, 1.0413, 1.0518, 1.0575)),
    "ldpc": ((1.5772, 1.3852, 1.2791, 1.2516, 1.2553, 1.2327, 1.2561),
             (1.4721, 1.3299, 1.2523, 1.2294, 1.1922, 1.1371, 1.1714),
             (1.4542, 1.2633, 1.2055, 1.1893, 1.1070, 1.0988, 1.1288)),
}
METHODS = tuple(MEASURED)
_LOG_FRAME_BITS = tuple(math.log10(n) for n in FRAME_BITS)


def measured_efficiency(method: str, n_bits: int, qber: float) -> float:
    """f of `method` on a frame of `n_bits` key bits at this QBER: bilinear in log10(n) and Q between the measured
    points, held at the grid's edges (frames shorter than 10^4 bits, which disclose more, are given the 10^4 figure;
    QBERs below 0.5 % the 0.5 % one)."""
    if method not in MEASURED:
        raise ValueError(f"no measured efficiency for reconciliation method {method!r}: one of {', '.join(METHODS)}")
    if isinstance(n_bits, bool) or not isinstance(n_bits, int) or n_bits < 1:
        raise ValueError(f"frame length must be a positive number of bits, got {n_bits!r}")
    if not 0.0 <= qber < 0.5:
        raise ValueError(f"QBER must lie in [0, 0.5), got {qber!r}")
    rows = MEASURED[method]
    i, u = _bracket(_LOG_FRAME_BITS, math.log10(n_bits))
    j, v = _bracket(QBERS, qber)
    return ((1 - u) * ((1 - v) * rows[i][j] + v * rows[i][j + 1])
            + u * ((1 - v) * rows[i + 1][j] + v * rows[i + 1][j + 1]))


def _bracket(points: tuple, value: float) -> tuple[int, float]:
    """The index of the interval of `points` (ascending) holding `value`, and the fraction into it (clamped)."""
    k = min(max(bisect.bisect_right(points, value) - 1, 0), len(points) - 2)
    fraction = (value - points[k]) / (points[k + 1] - points[k])
    return k, min(max(fraction, 0.0), 1.0)
