"""Generator of the shipped QC-LDPC codes: writes native/src/ldpc_codes.c (base matrices and circulant shifts).

    python native/tools/ldpc_codes.py [--search]      # from the project root; deterministic (fixed seeds)

Method, per base-matrix size (nb columns, mb rows, rate 1 - mb/nb):
 1. Degree distribution: column degrees {2, 3, dh} with node counts chosen by density evolution of the
    quantised normalised offset min-sum decoder the library runs (qkd_ldpc.h: int8, 4 units per nat) on the binary
    symmetric channel (Richardson & Urbanke, "The capacity of LDPC codes under message-passing decoding",
    IEEE Trans. IT 47(2), 2001, sec. III; the min-sum check rule's density as in Chen & Fossorier 2002),
    maximising the BSC threshold p*, as Elkouss, Leverrier, Alleaume & Boutros, "Efficient reconciliation
    protocol for discrete-variable QKD", ISIT 2009 (arXiv:0901.2140) do for belief propagation. Row degrees
    are concentrated (two consecutive values). `--search` reruns the grid search (slow: tens of minutes);
    the chosen counts are kept in CHOSEN below. Min-sum at these check degrees (20-60) stays well short
    of BP: the thresholds reach f* = (1-R)/h(p*) of about 1.17-1.4 (printed by this script).
 2. Base graph: progressive edge growth (Hu, Eleftheriou & Arnold, "Regular and irregular progressive
    edge-growth Tanner graphs", IEEE Trans. IT 51(1), 2005), columns in order of increasing degree, each
    edge to a check at maximal distance, ties to the lowest current degree.
 3. Lifting: a circulant shift per base entry, chosen greedily (QC-PEG style, as in Li & Kumar /
    Tasdighi et al.) so that no 4-cycle exists in the lifted graph and as few 6-cycles as possible
    (Fossorier, "Quasi-cyclic LDPC codes from circulant permutation matrices", IEEE Trans. IT 50(8), 2004,
    Thm 2: a base cycle lifts to a cycle of the same length iff its alternating shift sum is 0 mod Z).
    Every entry takes a shift closing the fewest 4-cycles, then 6-cycles, with the entries placed so far (all
    forbidden shifts enumerated, not sampled); LIFT_TRIES seeds, the best lift kept. The Z = 512 lifts have no
    4-cycle and, from rate 0.6 down, no 6-cycle; the counts are in the generated file's comments.
Each base matrix is lifted twice, Z = 512 (n = 49 152, for long frames) and Z = 64 (n = 6 144).

A second set, for the fixed-point sum-product decoder (qkd_ldpc_decoder_set_sum_product), follows the first in the
table (ensemble QKD_LDPC_ENSEMBLE_SUM_PRODUCT, Z = 512, then Z = 128): column degrees {2, 3, dh} chosen by density
evolution of belief propagation on the BSC (sampled, "population dynamics": Richardson & Urbanke, Modern Coding
Theory, 2008, sec. 4.4 / Monte-Carlo DE; the BP thresholds of the min-sum set lie at f* 1.15 and above), BP_CHOSEN
below, then the same PEG base graph and girth-maximising lift. `--search-bp MB` runs its grid (a few minutes per
point pair). Lifts of Z = 2048 (n = 196 608) were tried: no lower f at n = 10^6 (fewer codewords leave coarser rate
adaptation) and a third slower decoding (the messages outgrow the L2 cache), so only the rate-0.8125 and 0.729 ones
are shipped, to fill gaps among the n = 196 608 codes of the nb = 192 sets (XL_BP_ROWS, below). Lifts of
Z = 128 (n = 12 288) follow the Z = 512 set, for frames of a few 10^5 bits that a few long codewords fit only
coarsely (per codeword at 6-9 % QBER: median f about 1.09, nine in ten within 1.12-1.15).

A third set (LP_CHOSEN, sum-product, nb = 192 base columns, Z = 256) takes its column degrees 2..mb from iterative
linear programming (Richardson, Shokrollahi & Urbanke, "Design of capacity-approaching irregular LDPC codes", IEEE
Trans. IT 47(2), 2001; Chung's thesis, MIT 2000): for a fixed check degree and crossover p, the bit-node error after
one iteration is linear in the edge fractions lambda_d, so the rate sum(lambda_d / d) is maximised subject to that
error staying below the current density-evolution trajectory's at each iteration, repeated, and p bisected to the
target rate (density evolution of the int8 decoder itself: 4 units per nat, its correction table, check messages
capped at 47, the decoder's cap then; it is 31 since). nb = 192 lets a column reach degree mb = 30-44 (96 columns cap it
at 15-22, where the programme gains 0.01 or less): thresholds f* 1.059 (rate 0.844) and 1.043 (0.771) against 1.106
and 1.080 for BP_CHOSEN's. The measured gain is half the threshold gain, about 0.02 in per-codeword median f: density
evolution run to 95 iterations predicts the measured median within 0.01 for both sets. At rate 0.8125 (mb 36) the
gain measured 0.017 (1.090 vs 1.107) with a heavier tail (p90 1.163 vs 1.148), so that rate is not in the set.

A fourth set (HIGH_RATE_CHOSEN, sum-product, nb = 192, Z = 256) holds rates 0.917 and 0.885 for 1-2 % QBER, where the
min-sum set's codes of 96 columns (column degree at most mb = 8-12, check degree about 50) need f 1.25-1.30 with either
decoder. Its profiles come from a hill climb on the threshold of sampled BP density evolution (--search-hr MB; why not
the linear programme, at HIGH_RATE_CHOSEN).

The third and fourth sets are lifted once more, to Z = 1024 (n = XL_CODEWORD_BITS), for long frames: on these 192
columns the longer lift narrows the per-codeword spread of f where the 96-column codes' Z = 2048 lifts did not.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import math
import pathlib

import numpy as np

NB = 96                          # base columns of every code
LIFTS = (512, 64)
LLR_UNITS_PER_NAT = 4            # the bindings' scale (qkd_ldpc.h: int8 LLRs)
LLR_MAX = 127
SCALE_EIGHTHS, OFFSET = 7, 1     # normalised offset min-sum as the bindings run it (bindings/ldpc.py defaults)
LIFT_TRIES = 4                   # lifts per code (seeds); the one with the fewest 4-, then 6-cycles is kept
PEG_TRIES, PEG_SEED_STEP = 16, 100_003   # base graphs per code until the row degrees are concentrated (build)
OUT = pathlib.Path(__file__).resolve().parents[1] / "src" / "ldpc_codes.c"

# mb -> (n2, nh, dh): node counts of degree-2 and degree-dh columns (the rest degree 3). mb 12-20: the best of
# grids like `--search`'s for the normalised rule (7/8, offset 1); mb 5-8: the best for pure offset min-sum
# (offset 2); mb 26-50: extrapolated from those, not searched (the search is slow).
CHOSEN = {
    5: (0, 8, 3), 8: (8, 26, 8), 12: (11, 24, 10), 15: (10, 22, 10), 20: (12, 20, 10),
    26: (4, 14, 14), 32: (8, 14, 14), 38: (10, 14, 14), 44: (12, 14, 14), 50: (14, 14, 14),
}

# mb -> (n2, nh, dh) for the sum-product set. --search-bp's sampled density evolution ranked the profiles at mb 15 (it
# put (10, 24, 12) at f* 1.09, the min-sum set's (10, 22, 10) at 1.15, profiles with fewer degree-dh columns at
# 1.2-1.4); the choice among its neighbours was then made on the lifted codes themselves, 24-32 random codewords per
# profile and f through the int8 sum-product decoder (the per-codeword median f it decodes at: mb 15 about 1.12,
# mb 22 1.10, mb 30 1.07, mb 43 1.065; the README has the comparison with min-sum and floating-point BP).
BP_CHOSEN = {
    15: (12, 24, 14), 18: (15, 23, 14), 22: (18, 22, 14), 26: (22, 20, 14), 30: (26, 18, 14), 36: (30, 16, 16),
    43: (34, 14, 18), 46: (34, 14, 16), 50: (34, 14, 16),
}
BP_LIFTS = (512, 128)

# (nb, mb, z, {column degree: columns}) for the sum-product decoder, appended after the BP_CHOSEN lifts (ensemble
# SUM_PRODUCT, Z = 256: the sum-product decoder's plans take them instead of codes 20 and 22, qkdd.postprocess.ldpc_plan
# SPA_SUPERSEDED). The profiles: iterative linear
# programming on density evolution of the int8 decoder (module docstring), then among the integer counts next to the
# programme's the one whose evolution converges at the lowest f within 95 iterations. Measured against the BP_CHOSEN
# code of the same rate (576 random codewords, per-codeword f through Decoder(sum_product_units=4), 80 iterations):
# rate 0.844 median f 1.100 vs 1.121 (p10 1.080 vs 1.102, p90 1.165 vs 1.177), rate 0.771 1.079 vs 1.101 (p10 1.066
# vs 1.087, p90 1.115 vs 1.126); decoding takes 1.2-1.4x as long (more edges: 306 and 322 thousand vs 276 and 262).
LP_CHOSEN: list[tuple[int, int, int, dict[int, int]]] = [
    (192, 30, 256, {2: 29, 3: 104, 9: 43, 10: 2, 30: 14}),
    (192, 44, 256, {2: 43, 3: 94, 9: 33, 10: 11, 44: 11}),
]
# (nb, mb, z, {column degree: columns}) of the high-rate codes for the sum-product decoder (1-2 % QBER), appended after
# LP_CHOSEN's. The linear programme above cannot design them: at check degrees 45-60 its model of the int8 decoder
# loses the box-plus's small corrections (the rounded log(1 + e^-x) terms vanish once the inputs differ by 9 units), so
# every profile's check messages stay overconfident and no density evolution converges; the decoder itself does
# better (it decodes these codes within 0.02 in f of the floating-point sum-product decoder). Their profiles instead:
# a hill climb over integer column counts (--search-hr MB: moves of 4 and 8 columns between degree classes), each
# ranked by the threshold of sampled belief-propagation density evolution (bp_converges), from a start found by hand
# on lifted codes; among the climb's best, the lifted codes' measured per-codeword f chose (192 random codewords for
# the shipped ones, Decoder(sum_product_units=4), 80 iterations: rate 0.917 median f 1.160, p10 1.136, p90 1.195,
# where the min-sum set's code of that rate needs 1.25-1.30 with either decoder; rate 0.885 median 1.118, p10 1.100,
# p90 1.153). At rate 0.917 the climb's best thresholds (f* 1.070-1.075 against 1.090 for the shipped profile)
# measured no better on lifted codes (median 1.166-1.186, 24 codewords each: their degree-16 columns close more short
# cycles). The floating-point decoder (ldpc_bp.c) gains 0.016 in median on the rate-0.917 code, at 30 times the time;
# its Z = 1024 lift (XL_CODEWORD_BITS) 0.02 with a narrower spread.
HIGH_RATE_CHOSEN: list[tuple[int, int, int, dict[int, int]]] = [
    (192, 16, 256, {2: 15, 3: 112, 10: 55, 16: 10}),
    (192, 22, 256, {2: 21, 3: 110, 10: 45, 22: 16}),
]
# Lifts of the nb = 192 sets (LP_CHOSEN, then HIGH_RATE_CHOSEN) to Z = 1024, n = 196 608, appended after them (same
# base graphs): the sum-product decoder's plans for frames of many such codewords (qkdd.postprocess.ldpc_plan XL_*).
# The longer lift narrows the spread of the per-codeword f, the tail most (192 random codewords for each of the four,
# Decoder(sum_product_units=4), 100 iterations; at Z = 256 the rate-0.917 and 0.885 figures above, and 48 codewords
# at 0.844 and 0.771 measured alongside; median / p90, Z = 1024 against Z = 256): rate 0.917 1.144 / 1.160 against
# 1.160 / 1.195, 0.885 1.105 / 1.121 against 1.118 / 1.153, 0.844 1.078 / 1.087 against 1.097 / 1.122, 0.771 1.068 /
# 1.074 against 1.078 / 1.118; per bit decoding takes about a third longer. The BP_CHOSEN codes of 96 columns gain
# 0.003 or less at Z = 2048 (rates 0.729 and 0.552), but the rate-0.8125 and 0.729 ones (XL_BP_ROWS) are lifted there
# too, n = 196 608: without them no code of that length fits 2.3-2.7 % QBER (between the rates 0.844 and 0.771, less
# shortened than 15 % and punctured than 4.5 % + 0.05 h(Q)) or 3.7-4 %.
XL_CODEWORD_BITS = 196608       # lifted with Z = XL_CODEWORD_BITS / nb: 1024 of 192 columns, 2048 of 96
XL_BP_ROWS = (18, 26)
ENSEMBLE_MIN_SUM, ENSEMBLE_SUM_PRODUCT = 0, 1   # qkd_ldpc.h


# ---------- 1. density evolution of the quantised offset min-sum decoder on the BSC ----------

def _check_pmf_min_sum(v: np.ndarray, degree: int, offset: int, scale_eighths: int = 8) -> np.ndarray:
    """pmf (index k <-> value k - LLR_MAX) of a normalised offset min-sum check's output from degree-1 iid
    inputs: magnitude max(0, floor(min * scale / 8) - offset), as ldpc.c computes it."""
    m = LLR_MAX
    pos = v[m:]                                  # P(v = t), t = 0..M (0 counted as positive)
    neg = np.concatenate(([0.0], v[:m][::-1]))   # P(v = -t), t = 0..M
    a = np.cumsum(pos[::-1])[::-1]               # P(v >= t)
    b = np.cumsum(neg[::-1])[::-1]               # P(v <= -t)
    k = degree - 1
    plus = ((a + b) ** k + (a - b) ** k) / 2     # P(min |.| >= t and sign product +)
    minus = ((a + b) ** k - (a - b) ** k) / 2
    p_plus = plus - np.append(plus[1:], 0.0)
    p_minus = minus - np.append(minus[1:], 0.0)
    out = np.zeros(2 * m + 1)
    t = np.maximum((np.arange(m + 1) * scale_eighths >> 3) - offset, 0)
    np.add.at(out, m + t, p_plus)
    np.add.at(out, m - t, p_minus)
    return out


def _clip(full: np.ndarray, centre: int) -> np.ndarray:
    m = LLR_MAX
    out = full[centre - m:centre + m + 1].copy()
    out[0] += full[:centre - m].sum()
    out[-1] += full[centre + m + 1:].sum()
    return np.maximum(out, 0.0)


def de_converges(p: float, var_edges: dict[int, float], chk_edges: dict[int, float], iterations: int = 200,
                 offset: int = OFFSET, scale_eighths: int = SCALE_EIGHTHS) -> bool:
    """Density evolution (edge-perspective lambda, rho) of the int8 offset min-sum decoder on BSC(p), flooding
    schedule (the layered decoder converges at least as well)."""
    m = LLR_MAX
    l0 = min(m, round(LLR_UNITS_PER_NAT * math.log((1 - p) / p)))
    channel = np.zeros(2 * m + 1)
    channel[m + l0] += 1 - p
    channel[m - l0] += p
    v = channel.copy()
    dv_max = max(var_edges)
    size = 1 << math.ceil(math.log2((2 * m) * (dv_max + 1) + 1))
    ch_f = np.fft.rfft(channel, size)
    for _ in range(iterations):
        c = sum(w * _check_pmf_min_sum(v, d, offset, scale_eighths) for d, w in chk_edges.items())
        c_f = np.fft.rfft(c, size)
        acc = np.zeros(2 * m + 1)
        for d, w in var_edges.items():
            full = np.fft.irfft(ch_f * c_f ** (d - 1), size)
            acc += w * _clip(full, m * d)   # centre: channel offset m + (d-1) offsets of m
        v = acc / acc.sum()
        err = v[:m].sum() + v[m] / 2
        if err < 1e-6:
            return True
    return False


def column_profile(nb: int, counts: tuple[int, int, int] | dict[int, int]) -> dict[int, int]:
    """{column degree: columns}: of (n2, nh, dh), n2 columns of degree 2, nh of dh and the rest of 3; of a profile,
    the profile less its empty classes."""
    if isinstance(counts, dict):
        return {d: c for d, c in counts.items() if c}
    n2, nh, dh = counts
    profile = collections.Counter({2: n2, 3: nb - n2 - nh})
    profile[dh] += nh
    return {d: c for d, c in profile.items() if c}


def edge_distributions(mb: int, profile: dict[int, int]) -> tuple[dict, dict]:
    """Edge-perspective degree distributions (lambda, rho) of a column profile over mb rows of concentrated degrees
    (two consecutive values)."""
    edges = sum(d * c for d, c in profile.items())
    lam = {d: d * c / edges for d, c in profile.items() if c}
    lo = edges // mb
    hi_rows = edges - lo * mb
    rho = {d: d * c / edges for d, c in ((lo, mb - hi_rows), (lo + 1, hi_rows)) if c}
    return lam, rho


def threshold(nb: int, mb: int, n2: int, nh: int, dh: int) -> float:
    """BSC threshold p* of the ensemble, by bisection (geometric) on density evolution."""
    lam, rho = edge_distributions(mb, column_profile(nb, (n2, nh, dh)))
    lo, hi = 1e-4, 0.2
    for _ in range(12):
        mid = math.sqrt(lo * hi)
        if de_converges(mid, lam, rho):
            lo = mid
        else:
            hi = mid
    return lo


def search(nb: int, mb: int) -> tuple[int, int, int]:
    """The grid the shipped choices came from: few degree-2 columns, a block of high-degree ones."""
    best = None
    for n2, nh, dh in itertools.product((0, 6, mb * 3 // 4), (14, 20, 24), sorted({min(mb, 10), min(mb, 14)})):
        if nb - n2 - nh < 0:
            continue
        p = threshold(nb, mb, n2, nh, dh)
        if best is None or p > best[0]:
            best = (p, (n2, nh, dh))
    return best[1]


def bp_converges(p: float, var_edges: dict[int, float], chk_edges: dict[int, float], samples: int = 20000,
                 iterations: int = 200, seed: int = 1) -> bool:
    """Sampled density evolution of (floating-point) belief propagation on BSC(p), all-zero codeword: a population of
    `samples` bit-to-check LLRs, each check output the tanh rule over degree-1 draws from it, each bit the channel LLR
    plus degree-1 check outputs (edge-perspective lambda, rho). Converged when under 1e-5 of the messages are wrong
    and their mean exceeds 40 nats."""
    rng = np.random.default_rng(seed)
    l0 = math.log((1 - p) / p)
    v = np.where(rng.random(samples) < p, -l0, l0)
    vd, vw = np.array(list(var_edges)), np.array(list(var_edges.values()))
    cd, cw = np.array(list(chk_edges)), np.array(list(chk_edges.values()))
    for _ in range(iterations):
        dc = rng.choice(cd, samples, p=cw)
        t = np.tanh(np.clip(v, -30, 30) / 2)
        prod = np.ones(samples)
        for k in range(int(cd.max()) - 1):
            prod = np.where(k < dc - 1, prod * t[rng.integers(0, samples, samples)], prod)
        c = 2 * np.arctanh(np.clip(prod, -1 + 1e-15, 1 - 1e-15))
        dv = rng.choice(vd, samples, p=vw)
        s = np.where(rng.random(samples) < p, -l0, l0)
        for k in range(int(vd.max()) - 1):
            s = s + np.where(k < dv - 1, c[rng.integers(0, samples, samples)], 0.0)
        v = s
        if np.mean(v < 0) + 0.5 * np.mean(v == 0) < 1e-5 and np.mean(v) > 40:
            return True
    return False


def bp_threshold(nb: int, mb: int, n2: int, nh: int, dh: int) -> float:
    """BP threshold of the ensemble as efficiency f* = (1 - R) / h(p*), by bisection on f in [1, 1.4]."""
    return _bp_f_threshold(nb, mb, column_profile(nb, (n2, nh, dh)), f_max=1.4, steps=7)


def bp_threshold_of_profile(nb: int, mb: int, profile: dict[int, int]) -> float:
    """bp_threshold of a profile {column degree: columns} (rows concentrated), f in [1, 1.32] to 0.005."""
    return _bp_f_threshold(nb, mb, profile, f_max=1.32, steps=6, iterations=300)


def _bp_f_threshold(nb: int, mb: int, profile: dict[int, int], f_max: float, steps: int,
                    iterations: int = 200) -> float:
    """The lowest f in [1, f_max] (bisection, `steps` halvings) at which bp_converges."""
    lam, rho = edge_distributions(mb, profile)
    lo, hi = 1.0, f_max
    for _ in range(steps):
        mid = (lo + hi) / 2
        if bp_converges(_p_of_f(mb / nb, mid), lam, rho, iterations=iterations):
            hi = mid
        else:
            lo = mid
    return hi


def climb(nb: int, mb: int, start: dict[int, int], budget: int = 90) -> tuple[float, dict[int, int]]:
    """Hill climb on bp_threshold_of_profile: move 4 or 8 columns from one degree class to another (an existing class,
    2, 3, 4, or a class's degree +-2), first improvement taken, at most mb - 1 columns of degree 2; `budget` profiles
    evaluated at most (about 10 s each)."""
    rng = np.random.default_rng(mb)
    scores: dict[tuple, float] = {}

    def score(profile: dict[int, int]) -> float:
        key = tuple(sorted((d, c) for d, c in profile.items() if c))
        if key not in scores:
            scores[key] = bp_threshold_of_profile(nb, mb, dict(key))
            print(f"  f* {scores[key]:.4f} {dict(key)}", flush=True)
        return scores[key]

    best = dict(start)
    best_f = score(best)
    improved = True
    while improved and len(scores) < budget:
        improved = False
        targets = sorted(set(best) | {d + e for d in best if d > 3 for e in (-2, 2) if 3 < d + e <= mb} | {2, 3, 4})
        moves = [(a, b, s) for a in sorted(best) for b in targets if a != b for s in (4, 8)]
        for k in rng.permutation(len(moves)):
            a, b, s = moves[k]
            trial = dict(best)
            trial[a] -= s
            trial[b] = trial.get(b, 0) + s
            if trial[a] < 0 or trial.get(2, 0) > mb - 1:
                continue
            trial_f = score(trial)
            if trial_f < best_f - 1e-9:
                best, best_f, improved = {d: c for d, c in trial.items() if c}, trial_f, True
                break
            if len(scores) >= budget:
                break
    return best_f, best


def _p_of_f(syndrome_fraction: float, f: float) -> float:
    """The crossover probability p with h(p) = syndrome_fraction / f."""
    target, lo, hi = syndrome_fraction / f, 1e-6, 0.5
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if -mid * math.log2(mid) - (1 - mid) * math.log2(1 - mid) < target else (lo, mid)
    return lo


# ---------- 2. base graph by progressive edge growth ----------

def peg_base(nb: int, mb: int, col_degrees: list[int], rng: np.random.Generator) -> list[list[int]]:
    """Base matrix as per-column lists of rows, by PEG (single edges, no parallel edges)."""
    col_rows: list[list[int]] = [[] for _ in range(nb)]
    row_cols: list[list[int]] = [[] for _ in range(mb)]
    for col in sorted(range(nb), key=lambda c: (col_degrees[c], c)):
        for k in range(col_degrees[col]):
            candidates = _farthest_rows(col, col_rows, row_cols, mb) if k else list(range(mb))
            candidates = [r for r in candidates if r not in col_rows[col]]
            least = min(len(row_cols[r]) for r in candidates)
            pick = [r for r in candidates if len(row_cols[r]) == least]
            row = int(pick[rng.integers(len(pick))])
            col_rows[col].append(row)
            row_cols[row].append(col)
    return col_rows


def _farthest_rows(col: int, col_rows, row_cols, mb: int) -> list[int]:
    """Rows not reachable from `col` in the current graph, else those reached last (breadth-first)."""
    reached = set(col_rows[col])
    frontier = set(reached)
    seen_cols = {col}
    while True:
        cols = {c for r in frontier for c in row_cols[r]} - seen_cols
        seen_cols |= cols
        new = {r for c in cols for r in col_rows[c]} - reached
        if not new:
            return [r for r in range(mb) if r not in reached]
        if len(reached | new) == mb:
            return sorted(new)
        reached |= new
        frontier = new


# ---------- 3. lifting: girth-maximising greedy shifts (no 4-cycles, 6-cycles avoided where Z allows) ----------

def lift(col_rows: list[list[int]], mb: int, z: int, rng: np.random.Generator) -> dict[tuple[int, int], int]:
    """A shift per base entry, placed in PEG order (columns by increasing degree): each new entry takes, among the
    shifts closing the fewest 4-cycles and then the fewest 6-cycles with the entries placed so far, one at random
    (QC-PEG style greedy girth maximisation, Li & Kumar, "A class of quasi-cyclic LDPC codes", 2004; Tasdighi,
    Banihashemi & Sadeghi, IEEE Trans. Commun. 64(6), 2016). The forbidden shifts come from Fossorier's condition
    (IEEE Trans. IT 50(8), 2004, Thm 2): a base cycle lifts to cycles of its own length iff its alternating shift
    sum is 0 mod Z, so every 2- and 3-edge-pair path between the new entry's row and column forbids one shift."""
    shifts: dict[tuple[int, int], int] = {}
    row_cols: dict[int, list[int]] = {r: [] for r in range(mb)}
    col_placed: dict[int, list[int]] = {c: [] for c in range(len(col_rows))}
    order = sorted(range(len(col_rows)), key=lambda c: (len(col_rows[c]), c))
    for col in order:
        for row in col_rows[col]:
            bad4, bad6 = forbidden_shifts(shifts, row_cols, col_placed, row, col)
            score = np.bincount(np.mod(bad4, z), minlength=z) * (1 << 20) + np.bincount(np.mod(bad6, z), minlength=z)
            best = np.flatnonzero(score == score.min())
            s = int(best[rng.integers(len(best))])
            shifts[(row, col)] = s
            row_cols[row].append(col)
            col_placed[col].append(row)
    return shifts


def forbidden_shifts(shifts, row_cols, col_placed, row, col) -> tuple[np.ndarray, np.ndarray]:
    """Shift values (not yet reduced mod Z) of a new entry (row, col) that would close a 4-cycle, or a 6-cycle,
    with the placed entries. Cycle (row,col)-(r2,col)-(r2,c2)-[(r3,c2)-(r3,c3)]-(row,c3): the alternating sum
    s(row,col) - s(r2,col) + s(r2,c2) - ... - s(row,c3) must not vanish mod Z."""
    # paths col -> r2 -> c2 (r2 placed in col, c2 another placed column of r2): value s(r2,col) - s(r2,c2)
    from_col: dict[int, list[tuple[int, int]]] = {}
    for r2 in col_placed[col]:
        base = shifts[(r2, col)]
        for c2 in row_cols[r2]:
            if c2 != col:
                from_col.setdefault(c2, []).append((r2, base - shifts[(r2, c2)]))
    # paths row -> c3 -> r3: value s(r3,c3)... taken as + s(row,c3) - s(r3,c3)
    from_row: dict[int, list[tuple[int, int]]] = {}
    for c3 in row_cols[row]:
        base = shifts[(row, c3)]
        for r3 in col_placed[c3]:
            if r3 != row:
                from_row.setdefault(r3, []).append((c3, base - shifts[(r3, c3)]))
    bad4, bad6 = [], []
    for c2, paths in from_col.items():
        if (row, c2) in shifts:
            bad4.extend(v + shifts[(row, c2)] for _, v in paths)
        for r3 in col_placed[c2]:
            if r3 == row or r3 not in from_row:
                continue
            mid = shifts[(r3, c2)]
            for r2, v in paths:
                if r2 == r3:
                    continue
                bad6.extend(v + mid + w for c3, w in from_row[r3] if c3 != c2)
    return np.array(bad4, dtype=np.int64), np.array(bad6, dtype=np.int64)


def count_cycles(entries: list[tuple[int, int, int]], z: int) -> tuple[int, int]:
    """Lifted 4- and 6-cycles (each counted once per base cycle and lift offset class) of a lifted base matrix."""
    row_cols: dict[int, list[int]] = collections.defaultdict(list)
    col_placed: dict[int, list[int]] = collections.defaultdict(list)
    placed: dict[tuple[int, int], int] = {}
    four = six = 0
    for r, c, s in entries:
        bad4, bad6 = forbidden_shifts(placed, row_cols, col_placed, r, c)
        four += int(np.count_nonzero(np.mod(bad4 - s, z) == 0))
        six += int(np.count_nonzero(np.mod(bad6 - s, z) == 0))
        placed[(r, c)] = s
        row_cols[r].append(c)
        col_placed[c].append(r)
    return four, six


# ---------- output ----------

def build(mb: int, counts: tuple[int, int, int] | dict[int, int], z: int, seed: int,
          ensemble: int = ENSEMBLE_MIN_SUM, nb: int = NB) -> tuple[list[tuple[int, int, int]], dict]:
    """counts: (n2, nh, dh), columns of degree 2, dh and (the rest) 3; or {column degree: columns}."""
    profile = column_profile(nb, counts)
    if sum(profile.values()) != nb or max(profile) > mb:
        raise SystemExit(f"mb={mb}: column degrees {profile} do not fit {nb} columns of at most {mb} rows")
    degrees = [d for d in sorted(profile) for _ in range(profile[d])]
    # PEG's farthest-row rule can leave the row degrees spread over three values; density evolution assumed two
    # consecutive ones, so a base graph that misses them is drawn again from the next seed (the first seed kept
    # every code up to BP_CHOSEN's mb 46)
    for attempt in range(PEG_TRIES):
        col_rows = peg_base(nb, mb, degrees, np.random.default_rng(seed + PEG_SEED_STEP * attempt))
        row_degrees = np.bincount([r for rows in col_rows for r in rows], minlength=mb)
        if row_degrees.max() - row_degrees.min() <= 1:
            break
    else:
        raise SystemExit(f"mb={mb}: no base graph with concentrated row degrees in {PEG_TRIES} seeds")
    best = None
    for attempt in range(LIFT_TRIES):
        shifts = lift(col_rows, mb, z, np.random.default_rng((seed * 1000 + z) * 16 + attempt))
        entries = sorted((r, c, s) for (r, c), s in shifts.items())
        cycles = count_cycles(entries, z)
        if best is None or cycles < best[0]:
            best = (cycles, entries)
    cycles, entries = best
    return entries, {"nb": nb, "profile": profile, "counts": None if isinstance(counts, dict) else counts,
                     "cycles4": cycles[0], "cycles6": cycles[1], "ensemble": ensemble}


def _columns_comment(info: dict) -> str:
    if info["counts"]:
        n2, nh, dh = info["counts"]
        return f"{n2} of degree 2, {info['nb'] - n2 - nh} of 3, {nh} of {dh}"
    return ", ".join(f"{c} of degree {d}" for d, c in sorted(info["profile"].items()))


def write_c(codes: list[tuple[int, int, list[tuple[int, int, int]], dict]]) -> str:
    lines = ["/* ldpc_codes.c - GENERATED by native/tools/ldpc_codes.py; do not edit. QC-LDPC base matrices",
             " * (PEG base graphs, degree distributions by density evolution) and circulant shifts. */",
             '#include "ldpc_internal.h"', ""]
    tables = []
    for i, (z, mb, entries, info) in enumerate(codes):
        row_start = [0] * (mb + 1)
        for r, _, _ in entries:
            row_start[r + 1] += 1
        for r in range(mb):
            row_start[r + 1] += row_start[r]
        nb = info["nb"]
        lines.append(f"/* code {i}: z={z} mb={mb} nb={nb} rate={1 - mb / nb:.4f} columns: {_columns_comment(info)}; "
                     f"lifted 4-cycles {info['cycles4']}, 6-cycles {info['cycles6']} "
                     "(base cycles whose shift sum vanishes mod z)"
                     + ("; degrees for belief propagation" if info["ensemble"] == ENSEMBLE_SUM_PRODUCT else "") + " */")
        for name, values in (("row_start", row_start), ("cols", [c for _, c, _ in entries]),
                             ("shifts", [s for _, _, s in entries])):
            lines.append(f"static const uint16_t c{i}_{name}[] = {{")
            for k in range(0, len(values), 16):
                lines.append("    " + ", ".join(str(v) for v in values[k:k + 16]) + ",")
            lines.append("};")
        tables.append(f"    {{{z}, {mb}, {nb}, {len(entries)}, c{i}_row_start, c{i}_cols, c{i}_shifts, "
                      f"{info['ensemble']}}},")
    lines += ["", "const qkd_ldpc_table qkd_ldpc_tables[] = {", *tables, "};",
              "const size_t qkd_ldpc_table_count = sizeof qkd_ldpc_tables / sizeof qkd_ldpc_tables[0];", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", action="store_true", help="rerun the density-evolution search")
    parser.add_argument("--only", type=int, action="append", help="mb values to search/report (default: all)")
    parser.add_argument("--no-de", action="store_true", help="skip the threshold report")
    parser.add_argument("--search-bp", type=int, metavar="MB", help="print BP thresholds of a grid at MB rows, exit")
    parser.add_argument("--search-hr", type=int, metavar="MB", help="hill-climb a HIGH_RATE_CHOSEN profile, exit")
    args = parser.parse_args()
    if args.search_hr:
        nb, mb, _, start = next(c for c in HIGH_RATE_CHOSEN if c[1] == args.search_hr)
        f_star, profile = climb(nb, mb, start)
        print(f"mb={mb} best BP f*={f_star:.4f} {profile}")
        return
    if args.search_bp:
        for n2, nh, dh in itertools.product((6, 10, 14), (20, 24, 28), (10, 12, 14)):
            if dh <= args.search_bp:
                f_star = bp_threshold(NB, args.search_bp, n2, nh, dh)
                print(f"mb={args.search_bp} counts={(n2, nh, dh)} BP f*={f_star:.4f}", flush=True)
        return
    chosen = dict(CHOSEN)
    for mb in args.only or sorted(chosen):
        if args.search:
            chosen[mb] = search(NB, mb)
        if chosen[mb][2] > mb:
            raise SystemExit(f"mb={mb}: column degree {chosen[mb][2]} exceeds the {mb} base rows")
        if args.no_de:
            print(f"mb={mb} rate={1 - mb / NB:.4f} counts={chosen[mb]}", flush=True)
            continue
        p = threshold(NB, mb, *chosen[mb])
        h = -p * math.log2(p) - (1 - p) * math.log2(1 - p)
        print(f"mb={mb} rate={1 - mb / NB:.4f} counts={chosen[mb]} DE threshold p*={p:.5f} f*={mb / NB / h:.4f}",
              flush=True)
    codes = []
    for z in LIFTS:
        for mb in sorted(chosen):
            entries, info = build(mb, chosen[mb], z, seed=mb)
            codes.append((z, mb, entries, info))
    for z in BP_LIFTS:
        for mb in sorted(BP_CHOSEN):
            if not args.no_de:
                print(f"sum-product set: mb={mb} rate={1 - mb / NB:.4f} counts={BP_CHOSEN[mb]} "
                      f"BP f*={bp_threshold(NB, mb, *BP_CHOSEN[mb]):.4f}", flush=True)
            entries, info = build(mb, BP_CHOSEN[mb], z, seed=1000 + mb, ensemble=ENSEMBLE_SUM_PRODUCT)
            codes.append((z, mb, entries, info))
    by_profile = LP_CHOSEN + HIGH_RATE_CHOSEN
    xl = [(nb, mb, XL_CODEWORD_BITS // nb, profile) for nb, mb, _, profile in by_profile]
    for nb, mb, z, profile in by_profile + xl:
        entries, info = build(mb, profile, z, seed=2000 + mb, ensemble=ENSEMBLE_SUM_PRODUCT, nb=nb)
        codes.append((z, mb, entries, info))
    for mb in XL_BP_ROWS:
        z = XL_CODEWORD_BITS // NB
        entries, info = build(mb, BP_CHOSEN[mb], z, seed=1000 + mb, ensemble=ENSEMBLE_SUM_PRODUCT)
        codes.append((z, mb, entries, info))
    OUT.write_text(write_c(codes))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
