"""Finite-key length of three-intensity decoy-state BB84: the key length the link actually uses.

Lim, Curty, Walenta, Xu, Zbinden, "Concise security bounds for practical decoy-state quantum key
distribution", PRA 89, 022307 (2014) ("Lim" below), valid against general attacks. Alice sends intensities
mu1 > mu2 + mu3, mu2 > mu3 >= 0 (signal, decoy, vacuum) with probabilities p_k; both parties pick basis X
(key) with probability q_x and Z (test) otherwise. From the sifted counts per intensity and basis,
n_{X,k}, m_{X,k} (X detections and errors) and n_{Z,k}, m_{Z,k}, the bound reads

    l = floor( s_X0 + s_X1 (1 - h(phi_X)) - lambda_EC - 6 log2(21/eps_sec) - log2(2/eps_cor) )   (Eq. 1)

with the vacuum and single-photon lower bounds s_X0 (Eq. 2), s_X1 (Eq. 3), the single-photon error upper
bound v_Z1 (Eq. 4) and the phase-error upper bound phi_X from random sampling without replacement (Eq. 5).
Counts enter through Hoeffding intervals n^{+-}_{X,k} = e^k/p_k [n_{X,k} +- sqrt(n_X/2 ln(21/eps_sec))].

`finite_key_length` takes measured counts (the Monte Carlo and the link supply them) and returns the key
length and the abort decision; `expected_counts` gives the counts the analytic channel model predicts, for
`qkdctl sim rate --finite` and for tests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from qkdd.protocols.channel import (
    ChannelParams,
    check_non_negative,
    check_probability,
    error_gain,
    gain,
)
from qkdd.protocols.entropy import binary_entropy, capped_entropy

INTENSITY_CLASSES = ("signal", "decoy", "vacuum")
"""Order of per-intensity tuples everywhere in this module: mu1 (signal), mu2 (decoy), mu3 (vacuum)."""


@dataclass(frozen=True)
class DecoySettings:
    """Alice's and Bob's fixed protocol choices (Lim Sec. II)."""

    mu_signal: float = 0.5
    mu_decoy: float = 0.1
    mu_vacuum: float = 0.0
    p_signal: float = 0.8
    p_decoy: float = 0.1
    q_x: float = 0.9

    def __post_init__(self) -> None:
        for name in ("mu_signal", "mu_decoy", "mu_vacuum"):
            check_non_negative(name, getattr(self, name))
        if not self.mu_decoy > self.mu_vacuum:
            raise ValueError(f"mu_decoy: must exceed mu_vacuum (Lim Sec. II: mu2 > mu3 >= 0), got "
                             f"mu_decoy={self.mu_decoy!r}, mu_vacuum={self.mu_vacuum!r}")
        if not self.mu_signal > self.mu_decoy + self.mu_vacuum:
            raise ValueError(f"mu_signal: must exceed mu_decoy + mu_vacuum (Lim Sec. II: mu1 > mu2 + mu3), "
                             f"got mu_signal={self.mu_signal!r}, mu_decoy={self.mu_decoy!r}, "
                             f"mu_vacuum={self.mu_vacuum!r}")
        check_probability("p_signal", self.p_signal, open_low=True, open_high=True)
        check_probability("p_decoy", self.p_decoy, open_low=True, open_high=True)
        if not self.p_signal + self.p_decoy < 1.0:
            raise ValueError(f"p_decoy: p_signal + p_decoy must be < 1 so the vacuum class is sent, got "
                             f"{self.p_signal!r} + {self.p_decoy!r}")
        check_probability("q_x", self.q_x, open_low=True, open_high=True)

    @property
    def p_vacuum(self) -> float:
        return 1.0 - self.p_signal - self.p_decoy

    @property
    def intensities(self) -> tuple[float, float, float]:
        return (self.mu_signal, self.mu_decoy, self.mu_vacuum)

    @property
    def probabilities(self) -> tuple[float, float, float]:
        return (self.p_signal, self.p_decoy, self.p_vacuum)

    def photon_number_probability(self, n: int) -> float:
        """tau_n = sum_k p_k e^-k k^n / n!: probability that Alice sends n photons (Lim, after Eq. 2)."""
        return sum(p * math.exp(-k) * (k ** n) / math.factorial(n)
                   for k, p in zip(self.intensities, self.probabilities))


@dataclass(frozen=True)
class Tally:
    """Sifted detections and bit errors of one (basis, intensity) class.

    Integers when measured; expected (fractional) values are accepted for analytic use.
    """

    detections: float
    errors: float

    def __post_init__(self) -> None:
        check_non_negative("detections", self.detections)
        check_non_negative("errors", self.errors)
        if self.errors > self.detections:
            raise ValueError(f"errors: cannot exceed detections ({self.errors!r} > {self.detections!r})")


@dataclass(frozen=True)
class DecoyCounts:
    """What one block yielded: sifted tallies per intensity (signal, decoy, vacuum) in X and Z.

    pulses_sent is the number of pulses Alice sent for the block (all bases and intensities); it only
    scales the results to per-pulse rates and the single-photon yield.
    """

    pulses_sent: float
    x: tuple[Tally, Tally, Tally]
    z: tuple[Tally, Tally, Tally]

    def __post_init__(self) -> None:
        check_non_negative("pulses_sent", self.pulses_sent)
        for name in ("x", "z"):
            tallies = getattr(self, name)
            if len(tallies) != 3 or not all(isinstance(t, Tally) for t in tallies):
                raise ValueError(f"{name}: needs three Tally entries (signal, decoy, vacuum)")

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> "DecoyCounts":
        """From {"pulses_sent": N, "X": {"signal": {"detections": .., "errors": ..}, "decoy": .., "vacuum": ..},
        "Z": {...}} (the JSON shape `qkdctl sim run` prints)."""
        try:
            tallies = {
                basis: tuple(Tally(float(data[basis][k]["detections"]), float(data[basis][k]["errors"]))
                             for k in INTENSITY_CLASSES)
                for basis in ("X", "Z")
            }
            return cls(pulses_sent=float(data["pulses_sent"]), x=tallies["X"], z=tallies["Z"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"decoy counts: missing or malformed field {exc}") from None

    def as_mapping(self) -> dict[str, object]:
        def basis(tallies: tuple[Tally, ...]) -> dict[str, dict[str, float]]:
            return {k: {"detections": t.detections, "errors": t.errors}
                    for k, t in zip(INTENSITY_CLASSES, tallies)}
        return {"pulses_sent": self.pulses_sent, "X": basis(self.x), "Z": basis(self.z)}


@dataclass(frozen=True)
class FiniteKeyResult:
    """Outcome of Lim's bound on one block. key_length_bits is 0 whenever abort is true."""

    key_length_bits: int
    abort: bool
    abort_reason: str | None
    key_rate_per_pulse: float
    s_x0_lower: float
    s_x1_lower: float
    s_z0_lower: float
    s_z1_lower: float
    v_z1_upper: float
    phase_error_upper: float
    qber_x: float
    qber_z: float
    ec_leak_bits: float
    y1_lower: float
    e1_upper: float
    eps_sec: float
    eps_cor: float
    terms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def hoeffding_interval(count: float, total: float, intensity: float, probability: float,
                       eps_sec: float) -> tuple[float, float]:
    """n^-_{X,k}, n^+_{X,k} = e^k / p_k [n_{X,k} -+ sqrt(total/2 ln(21/eps_sec))] (Lim, after Eq. 2)."""
    delta = math.sqrt(total / 2.0 * math.log(21.0 / eps_sec))
    scale = math.exp(intensity) / probability
    return scale * (count - delta), scale * (count + delta)


def vacuum_lower(settings: DecoySettings, tallies: tuple[Tally, Tally, Tally], eps_sec: float) -> float:
    """s_{.,0} >= tau_0 (mu2 n^-_{mu3} - mu3 n^+_{mu2}) / (mu2 - mu3)   (Lim Eq. 2), floored at 0."""
    mu1, mu2, mu3 = settings.intensities
    p1, p2, p3 = settings.probabilities
    total = sum(t.detections for t in tallies)
    n2_minus, n2_plus = hoeffding_interval(tallies[1].detections, total, mu2, p2, eps_sec)
    n3_minus, n3_plus = hoeffding_interval(tallies[2].detections, total, mu3, p3, eps_sec)
    tau0 = settings.photon_number_probability(0)
    return max(tau0 * (mu2 * n3_minus - mu3 * n2_plus) / (mu2 - mu3), 0.0)


def single_photon_lower(settings: DecoySettings, tallies: tuple[Tally, Tally, Tally], s0_lower: float,
                        eps_sec: float) -> float:
    """s_{.,1} >= tau_1 mu1 [n^-_{mu2} - n^+_{mu3} - (mu2^2 - mu3^2)/mu1^2 (n^+_{mu1} - s_0/tau_0)]
                    / [mu1 (mu2 - mu3) - mu2^2 + mu3^2]                         (Lim Eq. 3), floored at 0."""
    mu1, mu2, mu3 = settings.intensities
    p1, p2, p3 = settings.probabilities
    total = sum(t.detections for t in tallies)
    _, n1_plus = hoeffding_interval(tallies[0].detections, total, mu1, p1, eps_sec)
    n2_minus, _ = hoeffding_interval(tallies[1].detections, total, mu2, p2, eps_sec)
    _, n3_plus = hoeffding_interval(tallies[2].detections, total, mu3, p3, eps_sec)
    tau0 = settings.photon_number_probability(0)
    tau1 = settings.photon_number_probability(1)
    numerator = n2_minus - n3_plus - (mu2 ** 2 - mu3 ** 2) / mu1 ** 2 * (n1_plus - s0_lower / tau0)
    # mu1 (mu2 - mu3) - mu2^2 + mu3^2 = (mu2 - mu3)(mu1 - mu2 - mu3) > 0 by the intensity constraints
    denominator = (mu2 - mu3) * (mu1 - mu2 - mu3)
    if denominator <= 0.0:
        return 0.0
    return max(tau1 * mu1 * numerator / denominator, 0.0)


def single_photon_errors_upper(settings: DecoySettings, tallies: tuple[Tally, Tally, Tally],
                               eps_sec: float) -> float:
    """v_{Z,1} <= tau_1 (m^+_{Z,mu2} - m^-_{Z,mu3}) / (mu2 - mu3)   (Lim Eq. 4), with
    m^{+-}_{Z,k} = e^k/p_k [m_{Z,k} +- sqrt(m_Z/2 ln(21/eps_sec))]."""
    _, mu2, mu3 = settings.intensities
    _, p2, p3 = settings.probabilities
    total_errors = sum(t.errors for t in tallies)
    _, m2_plus = hoeffding_interval(tallies[1].errors, total_errors, mu2, p2, eps_sec)
    m3_minus, _ = hoeffding_interval(tallies[2].errors, total_errors, mu3, p3, eps_sec)
    tau1 = settings.photon_number_probability(1)
    return max(tau1 * (m2_plus - m3_minus) / (mu2 - mu3), 0.0)


def sampling_deviation(eps: float, error_rate: float, sample: float, population: float) -> float:
    """gamma(a, b, c, d) = sqrt( (c+d)(1-b) b / (c d ln 2) * log2( (c+d)/(c d (1-b) b) * 21^2/a^2 ) )

    Lim Eq. 5 (random sampling without replacement, their Ref. [31]): with probability >= 1 - eps/21 the
    phase error rate of d single-photon X events exceeds the error rate b seen on c single-photon Z events
    by at most gamma. The formula vanishes as b -> 0, which would be over-optimistic for small blocks, so
    b is evaluated at no less than one error in the sample (1/c); this can only enlarge gamma.
    """
    c, d = sample, population
    b = min(max(error_rate, 1.0 / c), 0.5)
    spread = (c + d) * (1.0 - b) * b / (c * d * math.log(2.0))
    argument = (c + d) / (c * d * (1.0 - b) * b) * (21.0 ** 2) / (eps ** 2)
    return math.sqrt(spread * math.log2(argument)) if argument > 1.0 else 0.0


def finite_key_length(counts: DecoyCounts, settings: DecoySettings, *, eps_sec: float = 1e-10,
                      eps_cor: float = 1e-15, f_ec: float = 1.16, ec_leak_bits: float | None = None,
                      phase_error_tolerance: float = 0.5) -> FiniteKeyResult:
    """Lim's secret key length for one block of measured counts, and whether the block aborts.

    ec_leak_bits: bits actually disclosed by error correction when known (the link passes it); otherwise
    estimated as f_ec * n_X * h(e_obs) from the observed X error rate, as in Lim Sec. IV.
    phase_error_tolerance: phi_tol of Lim's step 4; the block aborts if the phase-error bound reaches it.
    """
    check_probability("eps_sec", eps_sec, open_low=True, open_high=True)
    check_probability("eps_cor", eps_cor, open_low=True, open_high=True)
    check_probability("phase_error_tolerance", phase_error_tolerance, open_low=True)
    if f_ec < 1.0:
        raise ValueError(f"f_ec: error-correction efficiency must be >= 1, got {f_ec!r}")
    n_x = sum(t.detections for t in counts.x)
    m_x = sum(t.errors for t in counts.x)
    n_z = sum(t.detections for t in counts.z)
    m_z = sum(t.errors for t in counts.z)
    qber_x = m_x / n_x if n_x > 0 else 0.0
    qber_z = m_z / n_z if n_z > 0 else 0.0
    if ec_leak_bits is None:
        ec_leak_bits = f_ec * n_x * binary_entropy(min(qber_x, 1.0))
    check_non_negative("ec_leak_bits", ec_leak_bits)

    empty = dict(s_x0_lower=0.0, s_x1_lower=0.0, s_z0_lower=0.0, s_z1_lower=0.0, v_z1_upper=0.0,
                 phase_error_upper=0.5, qber_x=qber_x, qber_z=qber_z, ec_leak_bits=ec_leak_bits,
                 y1_lower=0.0, e1_upper=0.5, eps_sec=eps_sec, eps_cor=eps_cor)
    if n_x <= 0 or n_z <= 0:
        return FiniteKeyResult(key_length_bits=0, abort=True, key_rate_per_pulse=0.0,
                               abort_reason="no sifted detections in the X or Z basis", **empty)

    s_x0 = vacuum_lower(settings, counts.x, eps_sec)
    s_x1 = single_photon_lower(settings, counts.x, s_x0, eps_sec)
    s_z0 = vacuum_lower(settings, counts.z, eps_sec)
    s_z1 = single_photon_lower(settings, counts.z, s_z0, eps_sec)
    v_z1 = single_photon_errors_upper(settings, counts.z, eps_sec)
    tau1 = settings.photon_number_probability(1)
    pulses_xx = counts.pulses_sent * settings.q_x ** 2
    y1_lower = min(s_x1 / (pulses_xx * tau1), 1.0) if pulses_xx > 0 else 0.0
    e1_upper = min(v_z1 / s_z1, 0.5) if s_z1 > 0 else 0.5
    if s_z1 > 0 and s_x1 > 0:
        # Lim Eq. 5: phi_X <= v_Z1/s_Z1 + gamma(eps_sec, v_Z1/s_Z1, s_Z1, s_X1)
        phi_x = min(e1_upper + sampling_deviation(eps_sec, e1_upper, s_z1, s_x1), 0.5)
    else:
        phi_x = 0.5
    # Lim Eq. 1
    pa_cost = 6.0 * math.log2(21.0 / eps_sec) + math.log2(2.0 / eps_cor)
    raw_length = s_x0 + s_x1 * (1.0 - capped_entropy(phi_x)) - ec_leak_bits - pa_cost
    length = max(math.floor(raw_length), 0)

    reason = None
    if s_x1 <= 0.0 or s_z1 <= 0.0:
        reason = ("decoy analysis certifies no single-photon detections (s_X1 or s_Z1 lower bound is 0): "
                  "the loss pattern is consistent with multi-photon pulses only")
    elif phi_x >= phase_error_tolerance:
        reason = f"phase error bound {phi_x:.4f} reaches the tolerance {phase_error_tolerance:.4f}"
    elif length <= 0:
        reason = "finite-key bound leaves no secret key for this block (l <= 0)"
    if reason is not None:
        length = 0
    rate = length / counts.pulses_sent if counts.pulses_sent > 0 else 0.0
    terms = {"pa_cost_bits": pa_cost, "raw_length_bits": raw_length, "n_x": n_x, "n_z": n_z,
             "m_x": m_x, "m_z": m_z}
    return FiniteKeyResult(
        key_length_bits=int(length), abort=reason is not None, abort_reason=reason, key_rate_per_pulse=rate,
        s_x0_lower=s_x0, s_x1_lower=s_x1, s_z0_lower=s_z0, s_z1_lower=s_z1, v_z1_upper=v_z1,
        phase_error_upper=phi_x, qber_x=qber_x, qber_z=qber_z, ec_leak_bits=ec_leak_bits,
        y1_lower=y1_lower, e1_upper=e1_upper, eps_sec=eps_sec, eps_cor=eps_cor, terms=terms)


def expected_counts(channel: ChannelParams, settings: DecoySettings, pulses_sent: float) -> DecoyCounts:
    """Expected sifted tallies for `pulses_sent` pulses: n_{B,k} = N p_k q_B^2 Q_k, m_{B,k} = N p_k q_B^2 E_k Q_k.

    Gains come from the channel model (channel.mu and channel.nu are ignored: the settings' intensities
    are used). Both parties choose basis B with probability q_B (Lim Sec. II and IV).
    """
    check_non_negative("pulses_sent", pulses_sent)

    def basis(q_b: float) -> tuple[Tally, Tally, Tally]:
        return tuple(Tally(pulses_sent * p * q_b ** 2 * gain(channel, k),
                           pulses_sent * p * q_b ** 2 * error_gain(channel, k))
                     for k, p in zip(settings.intensities, settings.probabilities))  # type: ignore[return-value]

    return DecoyCounts(pulses_sent=pulses_sent, x=basis(settings.q_x), z=basis(1.0 - settings.q_x))


def pulses_for_block(channel: ChannelParams, settings: DecoySettings, n_x: float) -> float:
    """Pulses Alice must send until n_x X-basis detections are sifted (expected value)."""
    check_non_negative("n_x", n_x)
    per_pulse = settings.q_x ** 2 * sum(p * gain(channel, k)
                                        for k, p in zip(settings.intensities, settings.probabilities))
    return n_x / per_pulse


def observed_statistics(counts: DecoyCounts, settings: DecoySettings) -> dict[str, dict[str, dict[str, float]]]:
    """Measured gain and QBER per basis and intensity class, as `qkdctl sim run` reports them.

    gain = sifted detections / pulses sent in that class with both parties in that basis
    (pulses_sent * p_k * q_B^2, Bob's basis choice being independent of Alice's).
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for basis, tallies, q_b in (("X", counts.x, settings.q_x), ("Z", counts.z, 1.0 - settings.q_x)):
        out[basis] = {}
        for name, tally, p in zip(INTENSITY_CLASSES, tallies, settings.probabilities):
            sent = counts.pulses_sent * p * q_b ** 2
            out[basis][name] = {
                "detections": tally.detections, "errors": tally.errors,
                "gain": tally.detections / sent if sent > 0 else 0.0,
                "qber": tally.errors / tally.detections if tally.detections > 0 else 0.0,
            }
    return out
