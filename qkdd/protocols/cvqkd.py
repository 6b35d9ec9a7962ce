"""GG02 continuous-variable QKD: asymptotic key rate with reverse reconciliation against collective
attacks (Holevo bound), Gaussian-modulated coherent states, homodyne or heterodyne detection.

Grosshans & Grangier, PRL 88, 057902 (2002) (protocol); Grosshans et al., Nature 421, 238 (2003) (reverse
reconciliation); key rate and Eve's information with trusted detector noise as in Lodewyck et al.,
PRA 76, 042305 (2007), Sec. IV, and Fossier, Diamanti, Debuisschert, Tualle-Brouri, Grangier, J. Phys. B
42, 114014 (2009) (heterodyne). All variances in shot-noise units (SNU); the excess noise xi is referred
to the channel input.

    V = V_A + 1,  chi_line = 1/T - 1 + xi,
    chi_hom = (1 - eta)/eta + v_el/eta,  chi_het = (2 - eta + 2 v_el)/eta,  chi_tot = chi_line + chi_det/T
    I_AB = (mu/2) log2((V + chi_tot)/(1 + chi_tot)),   mu = 1 (homodyne), 2 (heterodyne)
    chi_BE = G((l1-1)/2) + G((l2-1)/2) - G((l3-1)/2) - G((l4-1)/2)   with G(x) = (x+1)log2(x+1) - x log2 x
    K = beta I_AB - chi_BE  (bits per symbol)
l1, l2 are the symplectic eigenvalues of Alice and Bob's state, l3, l4 those of Alice's state conditioned
on Bob's measurement (closed forms below). `holevo_bound_untrusted_detector` recomputes chi_BE directly
from the covariance matrix (numerically), which the tests use to check the closed forms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qkdd.protocols.channel import check_non_negative, check_probability

DETECTIONS = ("homodyne", "heterodyne")


@dataclass(frozen=True)
class CvParams:
    """One CV-QKD link: modulation variance V_A (SNU), channel transmittance via loss, excess noise xi
    (SNU, channel input), Bob's detector efficiency and electronic noise (SNU), reconciliation efficiency."""

    modulation_variance: float = 4.0
    distance_km: float = 0.0
    alpha_db_per_km: float = 0.2
    excess_noise: float = 0.01
    eta_det: float = 0.6
    electronic_noise: float = 0.01
    beta: float = 0.95
    detection: str = "homodyne"

    def __post_init__(self) -> None:
        if not self.modulation_variance > 0 or not math.isfinite(self.modulation_variance):
            raise ValueError(f"modulation_variance: must be > 0 (SNU), got {self.modulation_variance!r}")
        check_non_negative("distance_km", self.distance_km)
        check_non_negative("alpha_db_per_km", self.alpha_db_per_km)
        check_non_negative("excess_noise", self.excess_noise)
        check_probability("eta_det", self.eta_det, open_low=True)
        check_non_negative("electronic_noise", self.electronic_noise)
        check_probability("beta", self.beta, open_low=True)
        if self.detection not in DETECTIONS:
            raise ValueError(f"detection: must be one of {', '.join(DETECTIONS)}, got {self.detection!r}")

    @property
    def transmittance(self) -> float:
        return 10.0 ** (-self.alpha_db_per_km * self.distance_km / 10.0)


def _g(nu: float) -> float:
    """Von Neumann entropy of a thermal mode with symplectic eigenvalue nu >= 1: G((nu - 1)/2)."""
    x = max((nu - 1.0) / 2.0, 0.0)
    if x == 0.0:
        return 0.0
    # (x+1) log2(x+1) - x log2 x written without the difference of two large terms (x ~ V_A / 2).
    return math.log2(x + 1.0) + x * math.log1p(1.0 / x) / math.log(2.0)


def _pair(a: float, b: float) -> tuple[float, float]:
    """sqrt((a +- sqrt(a^2 - 4b)) / 2), the symplectic eigenvalues from the invariants a and b. The smaller one
    is taken as b / (larger one)^2 (their squares multiply to b): (a - root) / 2 cancels when a^2 >> b, which
    at V_A ~ 1e7 SNU cost 6e-3 bit in chi_BE."""
    root = math.sqrt(max(a * a - 4.0 * b, 0.0))
    large_sq = max((a + root) / 2.0, 0.0)
    small_sq = b / large_sq if large_sq > 0.0 else 0.0
    return math.sqrt(large_sq), math.sqrt(max(small_sq, 0.0))


@dataclass(frozen=True)
class CvRate:
    transmittance: float
    mutual_information: float
    holevo_bound: float
    key_rate_per_symbol: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def gg02_key_rate(params: CvParams) -> CvRate:
    """K = beta I_AB - chi_BE per symbol with trusted detector noise (Lodewyck 2007 Sec. IV; Fossier 2009)."""
    return gg02_terms(params, params.transmittance, params.excess_noise)


def gg02_terms(params: CvParams, transmittance: float, excess_noise: float) -> CvRate:
    """`gg02_key_rate` at a given channel (T, xi) instead of the one `params` implies: the finite-size
    analysis (qkdd.protocols.cvqkd_finite) evaluates chi_BE at the worst-case estimates T_min, xi_max."""
    if not 0.0 < transmittance <= 1.0 or not math.isfinite(excess_noise) or excess_noise < 0.0:
        raise ValueError(f"channel: need 0 < T <= 1 and xi >= 0, got T={transmittance!r}, xi={excess_noise!r}")
    t = transmittance
    v = params.modulation_variance + 1.0
    eta, v_el = params.eta_det, params.electronic_noise
    chi_line = 1.0 / t - 1.0 + excess_noise
    homodyne = params.detection == "homodyne"
    chi_det = ((1.0 - eta) + v_el) / eta if homodyne else (2.0 - eta + 2.0 * v_el) / eta
    chi_tot = chi_line + chi_det / t
    mutual = (1.0 if homodyne else 2.0) / 2.0 * math.log2((v + chi_tot) / (1.0 + chi_tot))
    # Symplectic invariants of Alice and Bob's state before detection (EPR picture, Eve purifies it).
    a = v * v * (1.0 - 2.0 * t) + 2.0 * t + t * t * (v + chi_line) ** 2
    b = t * t * (v * chi_line + 1.0) ** 2
    l1, l2 = _pair(a, b)
    # Alice (with the detector-noise modes) conditioned on Bob's measurement.
    denominator = t * (v + chi_tot)
    if homodyne:
        c = (v * math.sqrt(b) + t * (v + chi_line) + a * chi_det) / denominator
        d = math.sqrt(b) * (v + math.sqrt(b) * chi_det) / denominator
    else:
        c = (a * chi_det ** 2 + b + 1.0 + 2.0 * chi_det * (v * math.sqrt(b) + t * (v + chi_line))
             + 2.0 * t * (v * v - 1.0)) / denominator ** 2
        d = ((v + math.sqrt(b) * chi_det) / denominator) ** 2
    l3, l4 = _pair(c, d)
    holevo = _g(l1) + _g(l2) - _g(l3) - _g(l4)
    return CvRate(transmittance=t, mutual_information=mutual, holevo_bound=holevo,
                  key_rate_per_symbol=max(params.beta * mutual - holevo, 0.0))


def _symplectic_eigenvalues(gamma: np.ndarray) -> np.ndarray:
    modes = gamma.shape[0] // 2
    omega = np.kron(np.eye(modes), np.array([[0.0, 1.0], [-1.0, 0.0]]))
    values = np.abs(np.linalg.eigvals(1j * omega @ gamma))
    return np.sort(values)[::2]


def holevo_bound_untrusted_detector(modulation_variance: float, transmittance: float, excess_noise: float,
                                    detection: str = "homodyne") -> float:
    """chi_BE = S(AB) - S(A | Bob's outcome) computed from the covariance matrix directly, with an ideal
    detector (all noise attributed to Eve). Independent check of the closed forms in `gg02_key_rate`."""
    v, t = modulation_variance + 1.0, transmittance
    z = np.diag([1.0, -1.0])
    c = math.sqrt(t * (v * v - 1.0))
    v_b = t * (v + 1.0 / t - 1.0 + excess_noise)
    gamma = np.block([[v * np.eye(2), c * z], [c * z, v_b * np.eye(2)]])
    s_ab = sum(_g(nu) for nu in _symplectic_eigenvalues(gamma))
    gamma_a, sigma = gamma[:2, :2], gamma[:2, 2:]
    if detection == "homodyne":
        conditional = gamma_a - sigma @ np.diag([1.0 / v_b, 0.0]) @ sigma.T
    else:
        conditional = gamma_a - sigma @ sigma.T / (v_b + 1.0)
    s_a_given_b = sum(_g(nu) for nu in _symplectic_eigenvalues(conditional))
    return s_ab - s_a_given_b
