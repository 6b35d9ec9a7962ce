"""GG02 finite-size analysis: parameter estimation of T and xi with confidence intervals from a disclosed
sample, and the secret key length against collective attacks with the worst-case Holevo bound.

Leverrier, Grosshans & Grangier, "Finite-size analysis of a continuous-variable quantum key distribution",
PRA 81, 062343 (2010):
 * Sec. III, Eq. (2): K = (n/N) [beta I_AB - S_eps_PE(y:E) - Delta(n)],
   Delta(n) = (2 dim H_X + 3) sqrt(log2(2/eps_bar)/n) + (2/n) log2(1/eps_PA), with dim H_X = 2 (7 in front).
 * Sec. IV (parameter estimation): Alice reveals m of the N symbols; with the normal model y = t x + z,
   t_hat = sum(x y)/sum(x^2), sigma2_hat = (1/m) sum (y - t_hat x)^2, and at confidence eps_PE
   t_min = t_hat - z sqrt(sigma2_hat / (m V_A)),  sigma2_max = sigma2_hat + z sigma2_hat sqrt(2)/sqrt(m),
   z = z_{eps_PE/2} with erfc(z / sqrt 2) = eps_PE (z ~ 6.5 for eps_PE = 1e-10). Eve's information S_eps_PE is
   "the maximal value of the Holevo information compatible with the statistics except with probability eps_PE":
   chi_BE maximised over the confidence region t in [t_min, t_max], sigma^2 <= sigma2_max. Leverrier et al.
   evaluate it at (t_min, sigma2_max); chi_BE grows with sigma^2, but with trusted detector noise it falls with T
   at long range (Bob's data carries less of the channel), so from ~10 km on the maximum over t lies at t_max or
   inside the interval, not at t_min (`worst_case_holevo`).
Conventions in shot-noise units (Laudenbach et al., Adv. Quantum Technol. 1, 1800011 (2018), Sec. 4, 6):
homodyne t = sqrt(eta T), sigma^2 = 1 + v_el + eta T xi; heterodyne (each quadrature) t = sqrt(eta T / 2),
sigma^2 = 1 + v_el + eta T xi / 2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qkdd.protocols.cvqkd import CvParams, gg02_terms

DIM_HX_FACTOR = 7.0          # 2 dim H_X + 3 with dim H_X = 2 (Leverrier 2010, below Eq. (2))


def z_score(eps_pe: float) -> float:
    """z with erfc(z / sqrt 2) = eps_pe: the two-sided normal quantile of Leverrier 2010 Sec. IV."""
    if not 0.0 < eps_pe < 1.0:
        raise ValueError(f"eps_pe: must lie in (0, 1), got {eps_pe!r}")
    low, high = 0.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if math.erfc(mid / math.sqrt(2.0)) > eps_pe:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def _gain_and_noise(params: CvParams, transmittance: float, excess_noise: float) -> tuple[float, float]:
    """(t, sigma^2) of the model y = t x + z for the channel (T, xi) and the detector in `params`."""
    eta, v_el = params.eta_det, params.electronic_noise
    if params.detection == "homodyne":
        return math.sqrt(eta * transmittance), 1.0 + v_el + eta * transmittance * excess_noise
    return math.sqrt(eta * transmittance / 2.0), 1.0 + v_el + eta * transmittance * excess_noise / 2.0


def _channel(params: CvParams, t: float, sigma2: float) -> tuple[float, float]:
    """Inverse of `_gain_and_noise`: (T, xi) from (t, sigma^2); T may come out > 1 or xi < 0 from noise."""
    eta, v_el = params.eta_det, params.electronic_noise
    share = 1.0 if params.detection == "homodyne" else 2.0
    transmittance = share * t * t / eta
    excess_noise = share * (sigma2 - 1.0 - v_el) / (eta * transmittance) if transmittance > 0 else math.inf
    return transmittance, excess_noise


@dataclass(frozen=True)
class Estimate:
    """Parameter estimation on m disclosed quadrature pairs (x Alice's, y Bob's in SNU)."""

    samples: int
    t_hat: float
    sigma2_hat: float
    t_min: float
    sigma2_max: float
    transmittance: float              # from t_hat, sigma2_hat
    excess_noise: float
    transmittance_min: float          # worst case at confidence eps_PE
    excess_noise_max: float
    modulation_variance: float

    @property
    def t_max(self) -> float:
        """Upper end of the confidence interval on t, symmetric about t_hat (t_min is only clipped when it
        reaches 0, and then there is no channel to bound)."""
        return 2.0 * self.t_hat - self.t_min

    @property
    def snr(self) -> float:
        """t^2 V_A / sigma^2 per measured value (the virtual BIAWGN channel's SNR in reconciliation)."""
        return 0.0 if self.sigma2_hat <= 0 else self.t_hat ** 2 * self.modulation_variance / self.sigma2_hat

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def estimate(params: CvParams, x: np.ndarray, y: np.ndarray, eps_pe: float = 1e-10) -> Estimate:
    """Leverrier 2010 Sec. IV estimators and confidence bounds from the disclosed pairs (x_i, y_i)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError("estimate: need two equally long samples of at least 2 values")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("estimate: samples must be finite")
    m = x.size
    sxx = float(x @ x)
    if sxx <= 0.0:
        raise ValueError("estimate: Alice's sample has no modulation")
    t_hat = float(x @ y) / sxx
    sigma2_hat = float(np.mean((y - t_hat * x) ** 2))
    return estimate_from(params, t_hat, sigma2_hat, m, eps_pe)


def estimate_from(params: CvParams, t_hat: float, sigma2_hat: float, m: int, eps_pe: float = 1e-10) -> Estimate:
    """The confidence bounds of `estimate` from announced estimators (the peer that holds both samples
    computes t_hat and sigma2_hat; the other end derives the same bounds from them)."""
    if not (math.isfinite(t_hat) and math.isfinite(sigma2_hat) and t_hat > 0 and sigma2_hat > 0 and m >= 2):
        raise ValueError("estimate: t_hat and sigma2_hat must be finite and > 0, m >= 2")
    z = z_score(eps_pe)
    t_min = max(t_hat - z * math.sqrt(sigma2_hat / (m * params.modulation_variance)), 0.0)
    sigma2_max = sigma2_hat + z * sigma2_hat * math.sqrt(2.0) / math.sqrt(m)
    transmittance, excess_noise = _channel(params, t_hat, sigma2_hat)
    transmittance_min, excess_noise_max = _channel(params, t_min, sigma2_max)
    return Estimate(samples=m, t_hat=t_hat, sigma2_hat=sigma2_hat, t_min=t_min, sigma2_max=sigma2_max,
                    transmittance=transmittance, excess_noise=excess_noise, transmittance_min=transmittance_min,
                    excess_noise_max=excess_noise_max, modulation_variance=params.modulation_variance)


def expected_estimate(params: CvParams, samples: int, eps_pe: float = 1e-10) -> Estimate:
    """The estimate a sample of `samples` pairs gives when the estimators hit their means (the analytic
    finite-size curves of Leverrier 2010 Fig. 2-4 are drawn this way)."""
    t, sigma2 = _gain_and_noise(params, params.transmittance, params.excess_noise)
    z = z_score(eps_pe)
    t_min = max(t - z * math.sqrt(sigma2 / (samples * params.modulation_variance)), 0.0)
    sigma2_max = sigma2 + z * sigma2 * math.sqrt(2.0) / math.sqrt(samples)
    transmittance_min, excess_noise_max = _channel(params, t_min, sigma2_max)
    return Estimate(samples=samples, t_hat=t, sigma2_hat=sigma2, t_min=t_min, sigma2_max=sigma2_max,
                    transmittance=params.transmittance, excess_noise=params.excess_noise,
                    transmittance_min=transmittance_min, excess_noise_max=excess_noise_max,
                    modulation_variance=params.modulation_variance)


def finite_size_delta_bits(n: int, eps_smooth: float = 1e-10, eps_pa: float = 1e-10) -> float:
    """n Delta(n) in bits: 7 sqrt(n log2(2/eps_bar)) + 2 log2(1/eps_PA) (Leverrier 2010 Eq. (2))."""
    if n < 1:
        raise ValueError("finite_size_delta_bits: n must be >= 1")
    return DIM_HX_FACTOR * math.sqrt(n * math.log2(2.0 / eps_smooth)) + 2.0 * math.log2(1.0 / eps_pa)


WORST_CASE_GRID = 17            # points over [t_min, t_max] before the golden-section refinement
WORST_CASE_REFINE = 40          # golden-section steps on the best grid cell (the cell shrinks by 0.618 each)


def _holevo_at(params: CvParams, t: float, sigma2: float) -> float:
    transmittance, excess_noise = _channel(params, t, sigma2)
    return gg02_terms(params, min(transmittance, 1.0), max(excess_noise, 0.0)).holevo_bound


def worst_case_holevo(params: CvParams, est: Estimate) -> float | None:
    """S_eps_PE: chi_BE per symbol maximised over t in [t_min, t_max] at sigma2_max (Leverrier 2010 Eq. (2); see
    the module docstring for why not at t_min alone); None when the estimate leaves no physical channel
    (T_min = 0). A grid over the interval, then golden-section search on the cell around its best point (chi_BE
    is smooth in t; its maximum is at an end of the interval or at one stationary point inside)."""
    if not est.transmittance_min > 0.0:
        return None
    t_low, t_high = est.t_min, est.t_max
    grid = [t_low + (t_high - t_low) * k / (WORST_CASE_GRID - 1) for k in range(WORST_CASE_GRID)]
    values = [_holevo_at(params, t, est.sigma2_max) for t in grid]
    best = max(range(WORST_CASE_GRID), key=values.__getitem__)
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, WORST_CASE_GRID - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _holevo_at(params, c, est.sigma2_max), _holevo_at(params, d, est.sigma2_max)
    for _ in range(WORST_CASE_REFINE):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _holevo_at(params, c, est.sigma2_max)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _holevo_at(params, d, est.sigma2_max)
    return max(values[best], fc, fd)


@dataclass(frozen=True)
class FiniteKey:
    key_length_bits: int
    holevo_bits_per_symbol: float     # chi_BE at the worst case
    delta_bits: float                 # n Delta(n)
    abort: bool
    abort_reason: str | None


def key_length(params: CvParams, est: Estimate, key_symbols: int, reconciled_bits: int, leak_bits: int,
               eps_smooth: float = 1e-10, eps_pa: float = 1e-10) -> FiniteKey:
    """l = H(K) - leak - n S_eps_PE - n Delta(n): Leverrier 2010 Eq. (2) with the beta I_AB term
    measured as the reconciled bits less the bits the reconciliation and verification disclosed."""
    holevo = worst_case_holevo(params, est)
    if holevo is None or key_symbols < 1:
        return FiniteKey(0, math.inf, math.inf, True, "parameter estimation: T_min is 0, no channel to bound")
    delta = finite_size_delta_bits(key_symbols, eps_smooth, eps_pa)
    length = math.floor(reconciled_bits - leak_bits - key_symbols * holevo - delta)
    if length <= 0:
        return FiniteKey(0, holevo, delta, True,
                         f"Holevo bound leaves no key: chi_BE {holevo:.4f} bit/symbol, worst case over T from T_min "
                         f"{est.transmittance_min:.4f} at xi_max {est.excess_noise_max:.4f} SNU")
    return FiniteKey(length, holevo, delta, False, None)


def finite_size_rate(params: CvParams, symbols: int, pe_samples: int, eps_pe: float = 1e-10,
                     eps_smooth: float = 1e-10, eps_pa: float = 1e-10) -> float:
    """Analytic finite-size key rate per symbol sent, K = (n/N)[beta I_AB - S_eps_PE - Delta(n)],
    n = N - m (Leverrier 2010 Eq. (2)); the worst case from `expected_estimate`; 0 when negative."""
    if not 0 < pe_samples < symbols:
        raise ValueError("finite_size_rate: need 0 < pe_samples < symbols")
    n = symbols - pe_samples
    share = 1 if params.detection == "homodyne" else 2        # heterodyne: two quadratures per symbol
    est = expected_estimate(params, pe_samples * share, eps_pe)
    holevo = worst_case_holevo(params, est)
    if holevo is None:
        return 0.0
    mutual = gg02_terms(params, params.transmittance, params.excess_noise).mutual_information
    rate = (n / symbols) * (params.beta * mutual - holevo - finite_size_delta_bits(n, eps_smooth, eps_pa) / n)
    return max(rate, 0.0)
