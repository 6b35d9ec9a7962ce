"""Redial delays: exponential backoff with jitter (sans-IO, the caller sleeps).

Delay n is drawn uniformly from [b/2, b] with b = min(max, initial * 2**n): the "equal jitter" variant of
M. Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog (2015). Jitter keeps the two ends
of many links from redialling in lockstep; the lower half-bound keeps a floor under the delay.
"""
from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError("backoff needs 0 < initial_s <= max_s")
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay_s(self) -> float:
        ceiling_s = min(self.max_s, self.initial_s * 2.0 ** min(self.failures, 62))
        self.failures += 1
        return self._rng.uniform(ceiling_s / 2, ceiling_s)

    def first_delay_s(self) -> float:
        """The first delay, [initial/2, initial], without counting a failure: for an attempt the peer's
        host answered with a refusal (its daemon is restarting), where waiting longer only delays the session."""
        return self._rng.uniform(self.initial_s / 2, self.initial_s)

    def reset(self) -> None:
        self.failures = 0
