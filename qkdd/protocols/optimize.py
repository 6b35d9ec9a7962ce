"""Small derivative-free maximisers for protocol parameters (signal intensity, decoy settings).

Key rates are cheap, smooth where positive and flat at zero, so a coarse grid followed by golden-section
search (one parameter) or a restarted Nelder-Mead simplex (several) is enough; no SciPy dependency.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence


def maximize_scalar(objective: Callable[[float], float], low: float, high: float, *,
                    log_scale: bool = True, grid_points: int = 48, tolerance: float = 1e-6) -> float:
    """Argmax of `objective` on [low, high]: a grid (which sees past plateaus of zero rate), then
    golden-section search between the best grid point's neighbours."""
    to_x = math.exp if log_scale else (lambda t: t)
    a, b = (math.log(low), math.log(high)) if log_scale else (low, high)
    grid = [a + (b - a) * i / (grid_points - 1) for i in range(grid_points)]
    values = [objective(to_x(t)) for t in grid]
    best = max(range(grid_points), key=values.__getitem__)
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid_points - 1)]
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fc, fd = objective(to_x(c)), objective(to_x(d))
    while hi - lo > tolerance:
        if fc > fd:
            hi, d, fd = d, c, fc
            c = hi - golden * (hi - lo)
            fc = objective(to_x(c))
        else:
            lo, c, fc = c, d, fd
            d = lo + golden * (hi - lo)
            fd = objective(to_x(d))
    return to_x(max([(values[best], grid[best]), (fc, c), (fd, d)])[1])


def nelder_mead_maximize(objective: Callable[[Sequence[float]], float], start: Sequence[float], *,
                         step: float = 0.5, max_evaluations: int = 600,
                         tolerance: float = 1e-10) -> tuple[list[float], float]:
    """Maximise `objective` over R^n from `start` with the Nelder-Mead simplex (Nelder & Mead, Comput. J.
    7, 308 (1965); standard coefficients 1, 2, 1/2, 1/2). Returns (best point, best value)."""
    n = len(start)
    simplex = [list(start)] + [[x + (step if i == j else 0.0) for j, x in enumerate(start)] for i in range(n)]
    values = [objective(p) for p in simplex]
    evaluations = n + 1
    while evaluations < max_evaluations:
        order = sorted(range(n + 1), key=lambda i: -values[i])
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if abs(values[0] - values[-1]) <= tolerance * (abs(values[0]) + tolerance):
            break
        centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]

        def toward(scale: float) -> list[float]:
            return [c + scale * (w - c) for c, w in zip(centroid, worst)]

        reflected = toward(-1.0)
        f_reflected = objective(reflected)
        evaluations += 1
        if f_reflected > values[0]:
            expanded = toward(-2.0)
            f_expanded = objective(expanded)
            evaluations += 1
            simplex[-1], values[-1] = (expanded, f_expanded) if f_expanded > f_reflected else (reflected, f_reflected)
        elif f_reflected > values[-2]:
            simplex[-1], values[-1] = reflected, f_reflected
        else:
            contracted = toward(0.5) if f_reflected <= values[-1] else toward(-0.5)
            f_contracted = objective(contracted)
            evaluations += 1
            if f_contracted > max(values[-1], f_reflected if f_reflected > values[-1] else -math.inf):
                simplex[-1], values[-1] = contracted, f_contracted
            else:
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (x - b) for b, x in zip(best, p)] for p in simplex[1:]]
                values = [values[0]] + [objective(p) for p in simplex[1:]]
                evaluations += n
    best = max(range(n + 1), key=values.__getitem__)
    return simplex[best], values[best]
