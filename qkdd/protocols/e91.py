"""E91 / BBM92 with a CHSH test: Bell parameter S from the non-matching setting pairs, key from the
matching ones, abort when S is not significantly above 2, key length from Shor-Preskill (with the
Tomamichel et al. finite-key bound) or, when selected, the device-independent bound of Acin et al.

Settings (polarisation angles, |Phi+> source, correlator E(a, b) = V cos 2(a - b) for visibility V):
    Alice  A0 = 0 deg (Z), A1 = 45 deg (X)
    Bob    B0 = 22.5 deg, B1 = -22.5 deg (CHSH only), B2 = 0 deg (Z), B3 = 45 deg (X)
    key pairs:  (A0, B2) in Z and (A1, B3) in X  -- matching, outcomes agree up to the QBER
    CHSH:       S = E(A0,B0) + E(A0,B1) + E(A1,B0) - E(A1,B1)
                (Clauser, Horne, Shimony, Holt, PRL 23, 880 (1969); Acin et al. 2007 Eq. 1), = 2 sqrt(2) V
This is the Acin et al. protocol (Alice's key setting is one of her CHSH settings, Bob has one more)
extended with a second key basis, so Z bits are the key and X bits estimate their phase errors as in
BBM92 (Bennett, Brassard, Mermin, PRL 68, 557 (1992)). The other setting pairs are discarded.
For a Werner state of visibility V: S = 2 sqrt(2) V and QBER = (1 - V)/2 in either key basis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from qkdd.protocols.channel import check_non_negative, check_probability
from qkdd.protocols.entropy import binary_entropy, capped_entropy, secure_fraction_asymptotic

ALICE_ANGLES_DEG = (0.0, 45.0)
BOB_ANGLES_DEG = (22.5, -22.5, 0.0, 45.0)
CHSH_TERMS = ((0, 0, +1), (0, 1, +1), (1, 0, +1), (1, 1, -1))
"""(Alice setting, Bob setting, sign) of the four CHSH correlators, in the order E91Counts.chsh uses."""
KEY_PAIRS = {"z": (0, 2), "x": (1, 3)}
TSIRELSON_BOUND = 2.0 * math.sqrt(2.0)
LOCAL_BOUND = 2.0


@dataclass(frozen=True)
class Correlation:
    """Coincidences of one setting pair: how many outcome pairs agreed and how many differed."""

    agree: float
    disagree: float

    def __post_init__(self) -> None:
        check_non_negative("agree", self.agree)
        check_non_negative("disagree", self.disagree)

    @property
    def total(self) -> float:
        return self.agree + self.disagree

    @property
    def correlator(self) -> float:
        """E = (agree - disagree) / total, the +-1 outcome correlator."""
        return (self.agree - self.disagree) / self.total if self.total > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.disagree / self.total if self.total > 0 else 0.0


@dataclass(frozen=True)
class E91Counts:
    """Sifted coincidences of one block: four CHSH correlators (CHSH_TERMS order) and the two key bases."""

    chsh: tuple[Correlation, Correlation, Correlation, Correlation]
    key_z: Correlation
    key_x: Correlation
    pairs_emitted: float = 0.0

    def __post_init__(self) -> None:
        if len(self.chsh) != 4 or not all(isinstance(c, Correlation) for c in self.chsh):
            raise ValueError("chsh: needs four Correlation entries in CHSH_TERMS order")
        check_non_negative("pairs_emitted", self.pairs_emitted)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> "E91Counts":
        """From {"chsh": [{"agree", "disagree"} x4], "key_z": {...}, "key_x": {...}, "pairs_emitted": N}."""
        try:
            def corr(item: Mapping[str, object]) -> Correlation:
                return Correlation(float(item["agree"]), float(item["disagree"]))  # type: ignore[arg-type]
            return cls(chsh=tuple(corr(c) for c in data["chsh"]),  # type: ignore[arg-type, union-attr]
                       key_z=corr(data["key_z"]), key_x=corr(data["key_x"]),  # type: ignore[arg-type]
                       pairs_emitted=float(data.get("pairs_emitted", 0.0)))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"E91 counts: missing or malformed field {exc}") from None


@dataclass(frozen=True)
class ChshEstimate:
    """S, its Gaussian standard error, and the Hoeffding lower confidence bound used for the abort test."""

    s: float
    sigma: float
    s_lower: float
    eps_pe: float


@dataclass(frozen=True)
class E91Result:
    key_length_bits: int
    abort: bool
    abort_reason: str | None
    chsh_s: float
    chsh_sigma: float
    chsh_s_lower: float
    qber_z: float
    qber_x: float
    phase_error_upper: float
    ec_leak_bits: float
    device_independent: bool
    key_rate_per_pair: float
    secure_fraction_asymptotic: float

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def correlator(visibility: float, alice_deg: float, bob_deg: float) -> float:
    """E(a, b) = V cos 2(a - b) for polarisation-entangled |Phi+> mixed with white noise (Werner state)."""
    return visibility * math.cos(2.0 * math.radians(alice_deg - bob_deg))


def chsh_estimate(counts: E91Counts, eps_pe: float = 1e-10) -> ChshEstimate:
    """S = sum_i sign_i E_i with a one-sided confidence bound.

    Each E_i is the mean of n_i independent +-1 outcomes (i.i.d. rounds, the collective-attack setting of
    Acin et al.), so S-hat is a sum of sum_i n_i independent terms, the ones of correlator i ranging over
    an interval of width 2/n_i. Hoeffding's inequality (Hoeffding, JASA 58, 13 (1963), Thm. 2) gives
    P[S-hat - S >= delta] <= exp(-2 delta^2 / sum_i n_i (2/n_i)^2), hence with probability >= 1 - eps_pe
    S >= S-hat - delta,   delta = sqrt(2 ln(1/eps_pe) sum_i 1/n_i).
    Unlike a k-sigma Gaussian rule this holds for any block size, with eps_pe the stated failure chance.
    sigma = sqrt(sum_i (1 - E_i^2)/n_i) (binomial standard error) is reported for display only.
    """
    check_probability("eps_pe", eps_pe, open_low=True, open_high=True)
    if any(c.total <= 0 for c in counts.chsh):
        return ChshEstimate(s=0.0, sigma=math.inf, s_lower=-math.inf, eps_pe=eps_pe)
    s = sum(sign * c.correlator for (_, _, sign), c in zip(CHSH_TERMS, counts.chsh))
    sigma = math.sqrt(sum((1.0 - c.correlator ** 2) / c.total for c in counts.chsh))
    delta = math.sqrt(2.0 * math.log(1.0 / eps_pe) * sum(1.0 / c.total for c in counts.chsh))
    return ChshEstimate(s=s, sigma=sigma, s_lower=s - delta, eps_pe=eps_pe)


def shor_preskill_rate(qber: float, f_ec: float = 1.0) -> float:
    """r = 1 - h(Q_phase) - f h(Q_bit), with phase and bit error rates equal (Shor & Preskill, PRL 85,
    441 (2000)); per sifted key bit, floored at 0. f = 1 gives the seed's 1 - 2h(Q)."""
    check_probability("qber", qber)
    return max(0.0, 1.0 - capped_entropy(qber) - f_ec * binary_entropy(min(qber, 1.0)))


def eve_holevo_bound(s: float) -> float:
    """chi(B1:E) <= h((1 + sqrt((S/2)^2 - 1)) / 2) for collective attacks, any devices
    (Acin, Brunner, Gisin, Massar, Pironio, Scarani, PRL 98, 230501 (2007), main result; the full proof
    is Pironio et al., NJP 11, 045021 (2009)). 1 bit for S <= 2, 0 at the Tsirelson bound."""
    if s <= LOCAL_BOUND:
        return 1.0
    s = min(s, TSIRELSON_BOUND)
    return binary_entropy((1.0 + math.sqrt(max((s / 2.0) ** 2 - 1.0, 0.0))) / 2.0)


def device_independent_rate(s: float, qber: float, f_ec: float = 1.0) -> float:
    """r >= 1 - f h(Q) - h((1 + sqrt((S/2)^2 - 1))/2)   (Acin et al. 2007), per key bit, floored at 0."""
    check_probability("qber", qber)
    return max(0.0, 1.0 - f_ec * binary_entropy(qber) - eve_holevo_bound(s))


def werner_statistics(visibility: float) -> tuple[float, float]:
    """(S, QBER) of a Werner state of visibility V with the settings above: 2 sqrt(2) V and (1 - V)/2."""
    check_probability("visibility", visibility)
    s = sum(sign * correlator(visibility, ALICE_ANGLES_DEG[a], BOB_ANGLES_DEG[b]) for a, b, sign in CHSH_TERMS)
    a, b = KEY_PAIRS["z"]
    return s, (1.0 - correlator(visibility, ALICE_ANGLES_DEG[a], BOB_ANGLES_DEG[b])) / 2.0


def expected_counts(visibility: float, coincidences_per_pair: float) -> E91Counts:
    """Expected coincidences when every used setting pair collects the same number of coincidences."""
    check_non_negative("coincidences_per_pair", coincidences_per_pair)

    def pair(a: int, b: int) -> Correlation:
        e = correlator(visibility, ALICE_ANGLES_DEG[a], BOB_ANGLES_DEG[b])
        return Correlation(coincidences_per_pair * (1 + e) / 2, coincidences_per_pair * (1 - e) / 2)

    check_probability("visibility", visibility)
    return E91Counts(chsh=tuple(pair(a, b) for a, b, _ in CHSH_TERMS),  # type: ignore[arg-type]
                     key_z=pair(*KEY_PAIRS["z"]), key_x=pair(*KEY_PAIRS["x"]))


def phase_error_deviation(n_key: float, k_test: float, eps_sec: float) -> float:
    """mu = sqrt( (n + k)/(n k) * (k + 1)/k * ln(4/eps_sec) ): statistical margin on the phase error
    rate of n key bits estimated from k test bits (Tomamichel, Lim, Gisin, Renner, Nat. Commun. 3, 634
    (2012), Eq. 2; we use ln(4/eps_sec), the more conservative of the constants found in its versions)."""
    n, k = n_key, k_test
    return math.sqrt((n + k) / (n * k) * (k + 1.0) / k * math.log(4.0 / eps_sec))


def e91_key_length(counts: E91Counts, *, eps_sec: float = 1e-10, eps_cor: float = 1e-15,
                   eps_pe: float = 1e-10, f_ec: float = 1.16, ec_leak_bits: float | None = None,
                   device_independent: bool = False) -> E91Result:
    """Abort decision and secret key length for one E91 block; key from the Z-basis matching pairs.

    Abort unless the CHSH lower bound S - delta exceeds 2 (see `chsh_estimate`): without a significant
    violation the correlations have a local model and nothing certifies the source.
    Key length (trusted measurement devices): Tomamichel et al. 2012 Eq. 2 with q = 1,
        l = n_Z (1 - h(Q_X + mu)) - leak_EC - log2(2 / (eps_sec^2 eps_cor)),
    the X-basis error rate Q_X bounding the phase error of the Z key bits (Shor-Preskill). With
    device_independent=True the privacy-amplification term is Acin et al.'s chi(S) evaluated at the
    lower bound S - delta (an i.i.d./collective-attack estimate, not a general-attack finite-key proof):
        l = n_Z (1 - chi(S - delta)) - leak_EC - log2(2 / (eps_sec^2 eps_cor)).
    """
    for name, eps in (("eps_sec", eps_sec), ("eps_cor", eps_cor)):
        check_probability(name, eps, open_low=True, open_high=True)
    if f_ec < 1.0:
        raise ValueError(f"f_ec: error-correction efficiency must be >= 1, got {f_ec!r}")
    chsh = chsh_estimate(counts, eps_pe)
    n_key, k_test = counts.key_z.total, counts.key_x.total
    qber_z, qber_x = counts.key_z.error_rate, counts.key_x.error_rate
    if ec_leak_bits is None:
        ec_leak_bits = f_ec * n_key * binary_entropy(qber_z)
    check_non_negative("ec_leak_bits", ec_leak_bits)
    phase = min(qber_x + phase_error_deviation(n_key, k_test, eps_sec), 0.5) if n_key > 0 and k_test > 0 else 0.5
    pa_cost = math.log2(2.0 / (eps_sec ** 2 * eps_cor))
    if device_independent:
        unknown_fraction = eve_holevo_bound(chsh.s_lower)
    else:
        unknown_fraction = capped_entropy(phase)
    raw = n_key * (1.0 - unknown_fraction) - ec_leak_bits - pa_cost
    length = max(math.floor(raw), 0)

    reason = None
    if n_key <= 0 or k_test <= 0:
        reason = "no coincidences in a key basis"
    elif chsh.s_lower <= LOCAL_BOUND:
        reason = (f"CHSH S = {chsh.s:.4f} is not significantly above 2 (lower bound {chsh.s_lower:.4f} at "
                  f"eps = {eps_pe:g})")
    elif length <= 0:
        reason = "finite-key bound leaves no secret key for this block (l <= 0)"
    if reason is not None:
        length = 0
    pairs = counts.pairs_emitted if counts.pairs_emitted > 0 else n_key
    return E91Result(key_length_bits=int(length), abort=reason is not None, abort_reason=reason,
                     chsh_s=chsh.s, chsh_sigma=chsh.sigma, chsh_s_lower=chsh.s_lower,
                     qber_z=qber_z, qber_x=qber_x, phase_error_upper=phase, ec_leak_bits=ec_leak_bits,
                     device_independent=device_independent,
                     key_rate_per_pair=length / pairs if pairs > 0 else 0.0,
                     secure_fraction_asymptotic=secure_fraction_asymptotic(qber_z))
