"""Cascade pass schedules: how many passes, how each pass orders the key, and its block size.

A schedule maps the QBER estimate from parameter estimation to a list of (pass kind, block bits). Bob
chooses it and announces the result, so Alice needs no schedule logic of her own.
"""
from __future__ import annotations

import math

from qkdd.bindings.cascade import MAX_PASSES, PASS_CONTIGUOUS, PASS_HALVES, PASS_SHUFFLED

# Below this the block-size formulas blow up; a frame with almost no errors still gets sane blocks.
MIN_QBER = 1e-4


def _clamp_qber(qber: float) -> float:
    if not (0.0 <= qber < 0.5) or math.isnan(qber):
        raise ValueError(f"QBER estimate {qber!r} outside [0, 0.5)")
    return max(qber, MIN_QBER)


def _block(bits: float, n_bits: int) -> int:
    return int(max(1, min(n_bits, bits)))


def original(qber: float, n_bits: int) -> list[tuple[int, int]]:
    """Brassard & Salvail (EUROCRYPT '93, sec. 4): k1 = 0.73/Q, k_i = 2 k_{i-1}, four passes.

    The first pass takes the key in order; later passes shuffle it.
    """
    q = _clamp_qber(qber)
    k1 = math.ceil(0.73 / q)
    return [(PASS_CONTIGUOUS if i == 0 else PASS_SHUFFLED, _block(k1 << i, n_bits)) for i in range(4)]


def yan(qber: float, n_bits: int, passes: int = 14) -> list[tuple[int, int]]:
    """Yan et al.'s first two block sizes as discussed by Martinez-Mateo, Pacher et al.
    (arXiv:1407.3257): k1 = ceil(0.8/Q), k2 = 5 k1; then blocks of n/2 (random halves) for the
    remaining passes."""
    q = _clamp_qber(qber)
    k1 = math.ceil(0.8 / q)
    return ([(PASS_CONTIGUOUS, _block(k1, n_bits)), (PASS_SHUFFLED, _block(5 * k1, n_bits))]
            + [(PASS_HALVES, 0)] * (passes - 2))


def efficient(qber: float, n_bits: int, passes: int = 14) -> list[tuple[int, int]]:
    """High-efficiency schedule following the findings of Martinez-Mateo, Pacher et al.
    (arXiv:1407.3257, secs. 4-5): block sizes are powers of two (every binary search splits evenly,
    no parity wasted on an uneven split), the first two passes do almost all the work, and every
    later pass takes blocks of n/2 (random halves) to catch the rare leftovers, 14 passes in all.
    The two first block sizes, k1 = 2^ceil(a) and k2 = 2^ceil((a + 12) / 2) with a = log2(1/Q) - 1/2,
    were tuned by measurement (bench.reconcile) together with the kernel's reuse of every revealed
    sub-block parity."""
    q = _clamp_qber(qber)
    a = math.log2(1.0 / q) - 0.5
    k1 = 2 ** math.ceil(a)
    k2 = 2 ** math.ceil((a + 12) / 2)
    return ([(PASS_CONTIGUOUS, _block(k1, n_bits)), (PASS_SHUFFLED, _block(k2, n_bits))]
            + [(PASS_HALVES, 0)] * (passes - 2))


SCHEDULES = {"original": original, "yan": yan, "efficient": efficient}


def with_biconf(passes: list[tuple[int, int]], biconf_rounds: int) -> list[tuple[int, int]]:
    """`passes` followed by `biconf_rounds` BICONF rounds (random half and its complement each)."""
    if not isinstance(biconf_rounds, int) or isinstance(biconf_rounds, bool) or biconf_rounds < 0:
        raise ValueError(f"biconf_rounds must be a non-negative integer, not {biconf_rounds!r}")
    if len(passes) + biconf_rounds > MAX_PASSES:
        raise ValueError(f"{len(passes)} passes + {biconf_rounds} BICONF rounds exceed the "
                         f"{MAX_PASSES} passes a frame may have")
    return passes + [(PASS_HALVES, 0)] * biconf_rounds


def schedule(name: str, qber: float, n_bits: int, biconf_rounds: int = 0) -> list[tuple[int, int]]:
    """The passes of schedule `name` for a frame of n_bits with estimated error rate qber, then
    `biconf_rounds` BICONF rounds (none by default)."""
    try:
        make = SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown Cascade schedule {name!r}; known: {', '.join(SCHEDULES)}") from None
    return with_biconf(make(qber, n_bits), biconf_rounds)
