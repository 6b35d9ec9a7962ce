"""Reverse reconciliation for GG02: multidimensional (8-D) reconciliation onto a virtual binary-input AWGN
channel, decoded with the shipped QC-LDPC codes: the low-rate multi-edge-type codes with the floating-point
sum-product decoder (qkdd.bindings.ldpc_bp) at low SNR, the BB84 codes with int8 min-sum (qkdd.bindings.ldpc)
above.

Theory of operation
-------------------
Leverrier, Alleaume, Boutros, Zemor & Grangier, "Multidimensional reconciliation for a continuous-variable
quantum key distribution", PRA 77, 042325 (2008), Sec. IV. Bob's measured values y (SNU) are cut into
blocks of 8. For each block Bob draws 8 fresh bits b from the OS CSPRNG, forms the point
u = ((-1)^b_1, ..., (-1)^b_8)/sqrt(8) of the unit sphere and the orthogonal map M(y, u) with M y/|y| = u.
With octonions (Leverrier 2008 Sec. IV.B: the maps are left multiplications by unit octonions) this is
M = left multiplication by m = u * conj(y/|y|): in an alternative algebra (u conj(w)) w = u |w|^2. Bob sends
m and |y| (m is uniform on the sphere whatever u is, so it says nothing about b), and the syndrome of b.
Alice applies the same map to her block x: M x = a |y| u + M w, where x = a y + w is her value given Bob's
(a = Cov(x, y)/Var(y), w independent of y with variance s_w^2), and M w has the law of w since M is
orthogonal and independent of w. So she sees each bit of b through a BIAWGN channel with amplitude
a |y| / sqrt(8) and noise variance s_w^2, of SNR t^2 V_A / sigma^2, and computes the LLR
    L_i = 2 (a |y| / sqrt 8) (M x)_i / s_w^2       (positive: b_i = 0),
then decodes b from its syndrome (layered sum-product or min-sum in C). The reconciled key is Bob's b (reverse
reconciliation); per kept codeword of n bits the syndrome discloses m bits, and the rate R = 1 - m/n
per value is the beta I_AB of the key rate: beta = R d / I_AB with d values per symbol. A codeword that
does not decode is dropped at both ends (its b is independent of every other bit, so dropping costs only
its symbols): the rate is multiplied by 1 - FER.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from qkdd.bindings import ldpc, ldpc_bp

DIMENSION = 8
MAX_ITERATIONS = 200
# The shipped codes (native/tools/ldpc_codes.py) are BSC-optimised and decoded with int8 offset min-sum. On
# the virtual BIAWGN channel they decode (16 codewords each, LLRs scaled by LLR_SCALE) from C_BIAWGN ~ 1.25-1.27 R:
# R 0.479 at SNR 1.45 (15/16), R 0.542 at 1.7 (16/16), R 0.604 at 2.0 (15/16); GAP keeps a margin for a low FER.
CAPACITY_GAP = 1.28
# The decoder's offset (1 unit, 1/4 nat) is tuned for the BSC's constant-magnitude LLRs; scaling the Gaussian
# LLRs by 0.75-0.9 decodes clearly more codewords than 1.0 (at SNR 1.8, R 0.479: 16/16 against 11/16).
LLR_SCALE = 0.8
LONG_CODES = tuple(c.index for c in ldpc.codes() if c.n_bits == 49152)
# The multi-edge-type codes (native/tools/ldpc_cv_codes.py) are named MET_BASE + their index on the wire, apart
# from the BB84 codes' indices. Their operating SNR is measured, not a capacity gap: the SNR of the virtual BIAWGN
# channel where the layered sum-product decoder loses at most about one codeword in ten (bench.cv_reconcile;
# README "CV-QKD (GG02) links"). beta = R / (1/2 log2(1 + SNR)) there, the efficiency as Jouguet et al., PRA 84,
# 062317 (2011) define it for this reconciliation: rate 1/10 at SNR 0.18 is beta 0.84, 1/20 at 0.086 too. The
# rate-1/50 codes of the published ensemble (Mani et al., PRA 103, 062419 (2021)) decode down to SNR 0.032 (n 256 000,
# beta 0.88) and 0.031 (n 1 024 000, beta 0.91): below 0.086 they are the only codes, above it the higher rates win.
MET_BASE = 0x100
MET_OPERATING_SNR = {(0.1, 64000): 0.18, (0.1, 256000): 0.18, (0.05, 64000): 0.086,    # (rate, n): SNR
                     (0.02, 256000): 0.032, (0.02, 1024000): 0.031}
MET_MAX_ITERATIONS = 300
MET_STALL_ITERATIONS = 40      # a decode whose unsatisfied checks have not hit a new low for this long is stuck
MET_CODES = tuple(MET_BASE + c.index for c in ldpc_bp.codes())
CODES = LONG_CODES + MET_CODES


def is_met(code: int) -> bool:
    return code in MET_CODES


def code_info(code: int) -> ldpc.CodeInfo:
    """Lengths and rate of a reconciliation code (an index of LONG_CODES or MET_CODES)."""
    if code in MET_CODES:
        return ldpc_bp.code(code - MET_BASE)
    if code in LONG_CODES:
        return ldpc.code(code)
    raise ValueError(f"{code!r} is not a reconciliation code")


def _quaternion_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a0, a1, a2, a3 = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    b0, b1, b2, b3 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([a0 * b0 - a1 * b1 - a2 * b2 - a3 * b3,
                     a0 * b1 + a1 * b0 + a2 * b3 - a3 * b2,
                     a0 * b2 - a1 * b3 + a2 * b0 + a3 * b1,
                     a0 * b3 + a1 * b2 - a2 * b1 + a3 * b0], axis=1)


def _quaternion_conj(a: np.ndarray) -> np.ndarray:
    return a * np.array([1.0, -1.0, -1.0, -1.0])


def octonion_mul(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise octonion products of (k, 8) arrays, Cayley-Dickson: (a, b)(c, d) = (ac - d*b, da + bc*)."""
    a, b, c, d = x[:, :4], x[:, 4:], y[:, :4], y[:, 4:]
    return np.concatenate([_quaternion_mul(a, c) - _quaternion_mul(_quaternion_conj(d), b),
                           _quaternion_mul(d, a) + _quaternion_mul(b, _quaternion_conj(c))], axis=1)


def octonion_conj(x: np.ndarray) -> np.ndarray:
    return x * np.array([1.0] + [-1.0] * 7)


def bits_to_points(bits: np.ndarray) -> np.ndarray:
    """(k*8,) bits -> (k, 8) points ((-1)^b)/sqrt(8) of the unit sphere."""
    return (1.0 - 2.0 * bits.astype(np.float64)).reshape(-1, DIMENSION) / math.sqrt(DIMENSION)


def bob_map(y: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bob: (m, |y|) for his values y (k*8,) and fresh bits (k*8,): m * (y/|y|) = u (Leverrier 2008 IV.B)."""
    blocks = np.asarray(y, dtype=np.float64).reshape(-1, DIMENSION)
    norms = np.linalg.norm(blocks, axis=1)
    if np.any(norms == 0.0):
        raise ValueError("bob_map: a block of zero values cannot be mapped")
    m = octonion_mul(bits_to_points(bits), octonion_conj(blocks / norms[:, None]))
    return m, norms


def alice_llr(x: np.ndarray, m: np.ndarray, norms: np.ndarray, a: float, noise_var: float) -> np.ndarray:
    """Alice: LLRs (nats, positive = bit 0) of Bob's bits from her values x (k*8,) and Bob's (m, |y|)."""
    if not noise_var > 0:
        raise ValueError("alice_llr: noise variance must be > 0")
    mx = octonion_mul(m, np.asarray(x, dtype=np.float64).reshape(-1, DIMENSION))
    amplitude = a * norms[:, None] / math.sqrt(DIMENSION)
    return (2.0 * amplitude * mx / noise_var).reshape(-1)


def conditional_model(t: float, sigma2: float, modulation_variance: float) -> tuple[float, float]:
    """(a, s_w^2) of x = a y + w for y = t x + z, Var x = V_A, Var z = sigma2 (jointly Gaussian)."""
    var_y = t * t * modulation_variance + sigma2
    return t * modulation_variance / var_y, modulation_variance * sigma2 / var_y


def biawgn_capacity(snr: float) -> float:
    """Capacity (bits/use) of the binary-input AWGN channel at SNR = amplitude^2/noise variance: 1 - E log2(1 +
    e^-L), L ~ N(2 snr, 4 snr) (Richardson & Urbanke, Modern Coding Theory, Sec. 4.2), by Gauss-Hermite."""
    if snr <= 0:
        return 0.0
    nodes, weights = _hermite_nodes()
    llr = 2.0 * snr + 2.0 * math.sqrt(snr) * nodes
    return float(1.0 - np.sum(weights * np.logaddexp(0.0, -llr)) / math.sqrt(2.0 * math.pi) / math.log(2.0))


@functools.cache
def _hermite_nodes() -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.hermite_e.hermegauss(80)


@functools.cache
def operating_snr(code_index: int, gap: float = CAPACITY_GAP) -> float:
    """The SNR from which the code decodes with a low FER: for the BB84 codes where C_BIAWGN = gap R, for the
    multi-edge-type codes the measured point (MET_OPERATING_SNR)."""
    info = code_info(code_index)
    if is_met(code_index):
        return MET_OPERATING_SNR[(round(info.rate, 4), info.n_bits)]
    target = min(info.rate * gap, 0.999)
    low, high = 1e-6, 1e3
    for _ in range(100):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if biawgn_capacity(mid) < target else (low, mid)
    return high


def choose_code(snr: float, gap: float = CAPACITY_GAP, values: int | None = None) -> int | None:
    """The code that reconciles the most bits at this SNR: among those whose operating SNR is <= snr, the most
    rate x (values used by whole codewords) for `values` key values (if given, else the highest rate), longer
    codes first on a tie (the shortest if no codeword fits); None if the SNR is below every code's operating
    point."""
    fitting = [c for c in CODES if operating_snr(c, gap) <= snr]
    if not fitting:
        return None

    def reconciled(c: int) -> tuple[float, int]:
        info = code_info(c)
        if values is None:
            return info.rate, info.n_bits
        used = (values // info.n_bits) * info.n_bits
        return info.rate * used, info.n_bits if used else -info.n_bits    # none fits: the shortest

    return max(fitting, key=reconciled)


def quantise(llr: np.ndarray) -> np.ndarray:
    """Nats -> the decoder's int8 units (LLR_SCALE * LLR_UNITS_PER_NAT per nat, saturated)."""
    return np.clip(np.rint(llr * (LLR_SCALE * ldpc.LLR_UNITS_PER_NAT)), -ldpc.LLR_MAX, ldpc.LLR_MAX).astype(np.int8)


@dataclass(frozen=True)
class Decoded:
    ok: np.ndarray          # (codewords,) bool
    bits: np.ndarray        # (codewords * n,) uint8, Alice's decision (valid where ok)
    iterations: int


def decode(code_index: int, llr: np.ndarray, syndromes: np.ndarray, max_iterations: int = MAX_ITERATIONS,
           path: int = ldpc.PATH_AUTO) -> Decoded:
    """Alice decodes every codeword of Bob's bits from her LLRs (nats) and his syndromes (codewords, m)."""
    info = code_info(code_index)
    words = syndromes.shape[0]
    if llr.shape != (words * info.n_bits,) or syndromes.shape != (words, info.m_bits):
        raise ValueError("decode: LLRs and syndromes do not match the code's lengths")
    if is_met(code_index):
        bp = ldpc_bp.BpDecoder(code_index - MET_BASE)
        soft = np.asarray(llr, dtype=np.float32).reshape(words, info.n_bits)

        def step(i: int) -> tuple[int, np.ndarray]:
            return bp.decode(np.ascontiguousarray(soft[i]), np.ascontiguousarray(syndromes[i]),
                             max_iterations=MET_MAX_ITERATIONS, stall_iterations=MET_STALL_ITERATIONS)
    else:
        decoder = ldpc.Decoder(code_index)
        q = quantise(llr).reshape(words, info.n_bits)

        def step(i: int) -> tuple[int, np.ndarray]:
            return decoder.decode(np.ascontiguousarray(q[i]), np.ascontiguousarray(syndromes[i]),
                                  max_iterations=max_iterations, path=path)
    ok = np.zeros(words, dtype=bool)
    out = np.zeros((words, info.n_bits), dtype=np.uint8)
    total = 0
    for i in range(words):
        iterations, bits = step(i)
        ok[i] = iterations > 0
        out[i] = bits
        total += iterations
    return Decoded(ok=ok, bits=out.reshape(-1), iterations=total)


def syndromes(code_index: int, bits: np.ndarray) -> np.ndarray:
    """Bob: the syndrome of each codeword of his bits (codewords * n,) -> (codewords, m) uint8."""
    info = code_info(code_index)
    words = bits.reshape(-1, info.n_bits)
    if is_met(code_index):
        return np.stack([ldpc_bp.syndrome(code_index - MET_BASE, np.ascontiguousarray(w)) for w in words])
    return np.stack([ldpc.syndrome(code_index, np.ascontiguousarray(w)) for w in words])
