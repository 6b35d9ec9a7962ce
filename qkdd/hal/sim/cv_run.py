"""`qkdctl sim run --protocol cvqkd` without the command line: one GG02 frame simulated and post-processed
in memory, both ends, as the report `--json` prints.

Steps (Leverrier, Grosshans & Grangier, PRA 81, 062343 (2010), Sec. II): shot-noise calibration
(qkdd.hal.sim.cv_channel), N symbols; Bob announces his homodyne quadratures; m random symbols are
disclosed for parameter estimation of T and xi with confidence intervals (qkdd.protocols.cvqkd_finite);
the code is chosen from the estimated SNR (abort when even the lowest-rate code cannot decode); reverse
8-D reconciliation of the other n = N - m symbols over the LDPC decoder (qkdd.postprocess.cv_reconciliation),
codewords that fail are dropped; verification (polynomial hash) and Toeplitz privacy amplification
(qkdd.postprocess.verification, .amplification) to the finite-size length; abort when the Holevo bound at
the worst-case estimates leaves no key.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from qkdd.bindings import bits as bitops
from qkdd.hal.sim.cv_channel import CvChannel, CvChannelSettings, alice_values, bob_values_snu
from qkdd.postprocess import amplification, cv_reconciliation, randomness, verification
from qkdd.protocols import cvqkd_finite
from qkdd.protocols.cvqkd import CvParams, gg02_terms

DEFAULT_SYMBOLS = 4_000_000
CALIBRATION_SAMPLES = 1_000_000
PE_FRACTION = 0.5                # Leverrier 2010 Figs. 2-4 disclose half of the symbols


def _fresh_bits(count: int) -> np.ndarray:
    """Bob's reconciliation bits from the OS CSPRNG (they become the key)."""
    raw = np.frombuffer(randomness.fresh_bytes((count + 7) // 8), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:count].copy()


def operating_modulation_variance(params: CvParams, margin: float = 1.05, symbols: int = DEFAULT_SYMBOLS,
                                  pe_fraction: float = PE_FRACTION) -> float:
    """V_A that puts the expected SNR (nominal T, xi, detector) at a code's operating point, with a small margin:
    the shipped codes' best reconciliation efficiency (the SNR fixed to the code, as Jouguet, Kunz-Jacques &
    Leverrier, PRA 84, 062317 (2011), Sec. V do). The code is the one whose point gives the most analytic
    finite-size key per frame of `symbols` (whole codewords only); if none gives key, the lowest-SNR code's."""
    pe_symbols = int(symbols * pe_fraction)
    key_values = (symbols - pe_symbols) * (1 if params.detection == "homodyne" else 2)
    best: tuple[float, float] | None = None
    for code in sorted(cv_reconciliation.CODES, key=cv_reconciliation.operating_snr, reverse=True):
        snr = margin * cv_reconciliation.operating_snr(code)
        variance = _variance_for_snr(params, snr)
        info = cv_reconciliation.code_info(code)
        used = (key_values // info.n_bits) * info.n_bits / key_values
        beta = min(info.rate / (0.5 * math.log2(1.0 + snr)), 1.0)
        rate = used * cvqkd_finite.finite_size_rate(
            dataclasses.replace(params, modulation_variance=variance, beta=beta), symbols, pe_symbols)
        if best is None or rate > best[0] or (best[0] == 0.0 and rate == 0.0):
            best = (rate, variance)
    return best[1]


def _variance_for_snr(params: CvParams, snr: float) -> float:
    eta_t = params.eta_det * params.transmittance
    if params.detection == "homodyne":
        return snr * (1.0 + params.electronic_noise + eta_t * params.excess_noise) / eta_t
    return snr * (1.0 + params.electronic_noise + eta_t * params.excess_noise / 2.0) / (eta_t / 2.0)


def run(settings: CvChannelSettings, symbols: int = DEFAULT_SYMBOLS, *, seed: int | None = None,
        pe_fraction: float = PE_FRACTION, eps_pe: float = 1e-10, eps_smooth: float = 1e-10,
        eps_pa: float = 1e-10, eps_cor: float = 1e-15) -> dict[str, Any]:
    if isinstance(symbols, bool) or not isinstance(symbols, int) or symbols < 1000:
        raise ValueError(f"symbols: need a whole number >= 1000, got {symbols!r}")
    if not 0.0 < pe_fraction < 1.0:
        raise ValueError(f"pe_fraction: must lie in (0, 1), got {pe_fraction!r}")
    for name, value in (("eps_pe", eps_pe), ("eps_smooth", eps_smooth), ("eps_pa", eps_pa), ("eps_cor", eps_cor)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name}: must lie in (0, 1), got {value!r}")
    started = time.perf_counter()
    params = settings.params
    channel = CvChannel(settings, seed=seed)
    calibration = channel.calibrate(CALIBRATION_SAMPLES)
    # trusted detector noise: the calibrated electronic noise replaces the nominal one
    measured = dataclasses.replace(params, electronic_noise=calibration.electronic_noise_snu)
    frame = channel.frame(symbols)
    x = alice_values(frame, params.detection)
    y = bob_values_snu(frame, calibration)
    d = settings.quadratures
    rng = np.random.default_rng(None if seed is None else seed + 1)
    disclosed = np.zeros(symbols, dtype=bool)
    disclosed[rng.choice(symbols, int(symbols * pe_fraction), replace=False)] = True
    disclosed_values = np.repeat(disclosed, d)
    est = cvqkd_finite.estimate(measured, x[disclosed_values], y[disclosed_values], eps_pe)
    expected = gg02_terms(params, params.transmittance, params.excess_noise + settings.cloner_excess_noise)
    report: dict[str, Any] = {
        "protocol": "cvqkd", "detection": params.detection, "symbols": symbols, "distance_km": params.distance_km,
        "seed": seed, "modulation_variance": params.modulation_variance,
        "transmittance": params.transmittance, "excess_noise": params.excess_noise,
        "cloner_excess_noise": settings.cloner_excess_noise,
        "shot_noise_v2": calibration.shot_noise_v2, "electronic_noise_measured": calibration.electronic_noise_snu,
        "pe_symbols": int(disclosed.sum()), "estimate": est.as_dict(), "snr": est.snr,
        "mutual_information_expected": expected.mutual_information,
    }
    key_x, key_y = x[~disclosed_values], y[~disclosed_values]
    code = cv_reconciliation.choose_code(est.snr, values=int(key_y.size))
    if code is None:
        lowest = min(cv_reconciliation.CODES, key=cv_reconciliation.operating_snr)
        return _abort(report, started, f"SNR {est.snr:.3f} too low for the shipped LDPC codes (lowest operating "
                                       f"SNR {cv_reconciliation.operating_snr(lowest):.3f})")
    info = cv_reconciliation.code_info(code)
    words = key_y.size // info.n_bits
    if words == 0:
        return _abort(report, started, f"{key_y.size} values are fewer than one codeword ({info.n_bits})")
    used = words * info.n_bits
    bob_bits = _fresh_bits(used)
    m, norms = cv_reconciliation.bob_map(key_y[:used], bob_bits)
    syndromes = cv_reconciliation.syndromes(code, bob_bits)
    a, noise_var = cv_reconciliation.conditional_model(est.t_hat, est.sigma2_hat, params.modulation_variance)
    llr = cv_reconciliation.alice_llr(key_x[:used], m, norms, a, noise_var)
    decoded = cv_reconciliation.decode(code, llr, syndromes)
    kept = np.repeat(decoded.ok, info.n_bits)
    alice_key, bob_key = decoded.bits[kept], bob_bits[kept]
    kept_words = int(decoded.ok.sum())
    reconciled_bits = kept_words * info.n_bits
    key_symbols = reconciled_bits // d
    mutual = 0.5 * d * math.log2(1.0 + est.snr)
    report.update(code=code, code_rate=info.rate, codewords=words, codewords_decoded=kept_words,
                  frame_error_rate=1.0 - kept_words / words, decoder_iterations=decoded.iterations,
                  beta=info.rate * d / mutual if mutual > 0 else 0.0, reconciled_bits=reconciled_bits)
    if kept_words == 0:
        return _abort(report, started, "no codeword decoded")
    # verification: Bob announces a hash of his key (the reference), Alice checks hers
    bob_words, alice_words = bitops.pack(bob_key), bitops.pack(alice_key)
    announcer = verification.Verification(verification.ANNOUNCER, 0, bob_words, reconciled_bits,
                                          verification.keys_for(eps_cor, reconciled_bits))
    checker = verification.Verification(verification.CHECKER, 0, alice_words, reconciled_bits,
                                        verification.keys_for(eps_cor, reconciled_bits))
    (result,) = checker.receive(announcer.start()[0])
    announcer.receive(result)
    if not checker.result.matched:
        return _abort(report, started, "verification hashes differ: frame discarded")
    leak_bits = kept_words * info.m_bits + checker.result.leaked_bits
    bound = cvqkd_finite.key_length(measured, est, key_symbols, reconciled_bits, leak_bits, eps_smooth, eps_pa)
    report.update(leak_bits=leak_bits, holevo_bits_per_symbol=bound.holevo_bits_per_symbol,
                  finite_size_delta_bits=bound.delta_bits, key_length_bits=bound.key_length_bits)
    if bound.abort:
        return _abort(report, started, bound.abort_reason or "no key")
    # privacy amplification: Bob announces the Toeplitz seed, both hash to the bound's length
    bob_pa = amplification.Amplification(amplification.ANNOUNCER, 0, bob_words, reconciled_bits)
    alice_pa = amplification.Amplification(amplification.RECEIVER, 0, alice_words, reconciled_bits)
    (seed_msg,) = bob_pa.start(bound.key_length_bits, amplification.SEED_SHAKE256)
    (ack,) = alice_pa.receive(seed_msg)
    bob_pa.receive(ack)
    keys_match = bool(np.array_equal(bob_pa.output, alice_pa.output))
    report.update(abort=False, abort_reason=None, keys_match=keys_match,
                  secret_bits_per_symbol=bound.key_length_bits / symbols,
                  analytic_finite_rate_per_symbol=cvqkd_finite.finite_size_rate(
                      dataclasses.replace(params, beta=min(report["beta"], 1.0)), symbols, int(disclosed.sum()),
                      eps_pe, eps_smooth, eps_pa),
                  wall_seconds=time.perf_counter() - started)
    return report


def _abort(report: dict[str, Any], started: float, reason: str) -> dict[str, Any]:
    report.update(abort=True, abort_reason=reason, key_length_bits=0, secret_bits_per_symbol=0.0,
                  wall_seconds=time.perf_counter() - started)
    return report
