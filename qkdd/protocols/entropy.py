"""Entropy helpers shared by the key-rate formulas: the binary entropy and the seed's asymptotic estimate."""
from __future__ import annotations

import math


def binary_entropy(p: float) -> float:
    """h(p) = -p log2 p - (1-p) log2 (1-p), with h(0) = h(1) = 0. p must lie in [0, 1]."""
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"binary entropy needs a probability in [0, 1], got {p!r}")
    if p == 0.0 or p == 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def capped_entropy(p: float) -> float:
    """h(min(p, 1/2)) for an UPPER bound p on an error rate.

    h is symmetric about 1/2, so feeding it an upper bound above 1/2 would understate the entropy;
    any error-rate bound >= 1/2 means full entropy (one bit per bit).
    """
    if math.isnan(p) or p < 0.0:
        raise ValueError(f"error-rate bound must be non-negative, got {p!r}")
    return 1.0 if p >= 0.5 else binary_entropy(p)


def secure_fraction_asymptotic(qber: float) -> float:
    """The seed's "asymptotic estimate" metric 1 - 2h(Q), floored at zero.

    Shor & Preskill, PRL 85, 441 (2000): one-way BB84 with ideal single photons and perfect error
    correction, in the limit of infinitely long keys. It is only a headline figure for dashboards: it
    ignores multi-photon pulses, error-correction inefficiency and finite statistics, so it is never the
    key length (that is `bb84_finite.finite_key_length`). 3 % -> 0.61, 8 % -> 0.20, 11 % -> 0.
    """
    return max(0.0, 1.0 - 2.0 * binary_entropy(qber))
