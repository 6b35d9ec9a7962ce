"""CV-QKD reverse reconciliation alone: beta and frame error rate of each code over a range of SNRs.

    python -m bench.cv_reconcile [--code 256] [--snr 0.18 --snr 0.17 ...] [--words 20] [--seed 1]
    -> one JSON line per (code, SNR): {"code","n_bits","rate","snr","beta","words","fer","beta_x_goodput",
       "iterations_mean","seconds_per_word"}

Each codeword: Alice's x ~ N(0, V_A), Bob's y = t x + z at the SNR t^2 V_A (the GG02 channel in SNU), Bob's fresh
bits mapped by the 8-D reconciliation (qkdd.postprocess.cv_reconciliation), Alice decodes from her LLRs and his
syndrome. A word counts as decoded only if it equals Bob's bits. beta = R / (1/2 log2(1 + SNR)) (Jouguet,
Kunz-Jacques & Leverrier, PRA 84, 062317 (2011)); beta_x_goodput = beta (1 - FER), the share of I_AB
the key keeps when failed codewords are dropped.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from qkdd.postprocess import cv_reconciliation as cr


def virtual_channel(rng: np.random.Generator, values: int, snr: float,
                    v_a: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Bob's fresh bits and Alice's LLRs of them for `values` symbols at this SNR: x ~ N(0, V_A), y = t x + z
    (GG02 in SNU), through the 8-D reconciliation's mapping."""
    t = math.sqrt(snr / v_a)
    x = rng.normal(0.0, math.sqrt(v_a), values)
    y = t * x + rng.normal(0.0, 1.0, x.size)
    bits = rng.integers(0, 2, x.size, dtype=np.uint8)
    m, norms = cr.bob_map(y, bits)
    a, noise = cr.conditional_model(t, 1.0, v_a)
    return bits, cr.alice_llr(x, m, norms, a, noise)


def measure(code: int, snr: float, words: int, seed: int) -> dict:
    info = cr.code_info(code)
    rng = np.random.default_rng(seed)
    good = iterations = 0
    started = time.perf_counter()
    for _ in range(words):
        bits, llr = virtual_channel(rng, info.n_bits, snr)
        decoded = cr.decode(code, llr, cr.syndromes(code, bits))
        good += int(decoded.ok[0] and np.array_equal(decoded.bits, bits))
        iterations += decoded.iterations
    elapsed = time.perf_counter() - started
    beta = info.rate / (0.5 * math.log2(1.0 + snr))
    fer = 1.0 - good / words
    return {"code": code, "n_bits": info.n_bits, "rate": round(info.rate, 4), "snr": snr, "beta": round(beta, 4),
            "words": words, "fer": round(fer, 4), "beta_x_goodput": round(beta * (1.0 - fer), 4),
            "iterations_mean": round(iterations / words, 1), "seconds_per_word": round(elapsed / words, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=int, action="append", help="code (default: the multi-edge-type codes)")
    parser.add_argument("--snr", type=float, action="append", help="default: 0.2 0.19 0.18 0.175 0.17 0.165")
    parser.add_argument("--words", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for code in args.code or cr.MET_CODES:
        for snr in args.snr or [0.2, 0.19, 0.18, 0.175, 0.17, 0.165]:
            print(json.dumps(measure(code, snr, args.words, args.seed)), flush=True)


if __name__ == "__main__":
    main()
