"""Privacy amplification speed: one Toeplitz hash of n bits to m bits, per block, on one thread.

    python -m bench.amplify --n 1048576 --m 524288 --reps 20 [--no-reference] [--ntt] [--both]

ms_per_block is the median wall time over --reps of qkdd's kernel (bit-packed in and out, run-time
CPU dispatch), cpu_ms_per_block its CPU time (telling on a shared, loaded machine);
pclmul_ms_per_block the same restricted to 128-bit PCLMULQDQ (no AVX-512), and
portable_ms_per_block one run of the portable C path (n <= 2^22 only); with --ntt,
ntt_ms_per_block / ntt_cpu_ms_per_block one run of the number-theoretic path, checked against the
carry-less result (ntt_bit_exact); with --both, the two production kernels side by side in the same run:
karatsuba_* (carry-less Karatsuba, O(n^1.58)) and fft_* (additive FFT over GF(2^64), O(n log^2 n)), CPU
time and wall time, the FFT output checked against the Karatsuba one (fft_bit_exact); `path` names the
kernel toeplitz_hash picks by itself at this size. Unless --no-reference is
given, the same input is also hashed once with randextract's ToeplitzHashing (the FFT reference) in
the same run, checked bit for bit, and its time reported with the speed ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from qkdd.bindings import bits
from qkdd.bindings.toeplitz import CPU_FEATURES, FFT_MIN_OUTPUT_BITS, PCLMUL, fft_available, toeplitz_hash


def _median_ms(fn, reps: int) -> tuple[float, float]:
    """Median wall and CPU (this thread) milliseconds of fn() over reps runs."""
    wall, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1 << 20)
    parser.add_argument("--m", type=int, default=1 << 19)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-reference", action="store_true", help="skip randextract")
    parser.add_argument("--ntt", action="store_true", help="also time the number-theoretic path once")
    parser.add_argument("--both", action="store_true", help="time the Karatsuba and the FFT kernel side by side")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    x_bits = rng.integers(0, 2, args.n, dtype=np.uint8)
    seed_bits = rng.integers(0, 2, args.n + args.m - 1, dtype=np.uint8)
    x, seed = bits.pack(x_bits), bits.pack(seed_bits)

    ms, cpu_ms = _median_ms(lambda: toeplitz_hash(seed, x, args.n, args.m), args.reps)
    result = {"n": args.n, "m": args.m, "ms_per_block": round(ms, 3), "mbit_per_s": round(args.n / ms / 1e3, 1),
              "cpu_ms_per_block": round(cpu_ms, 3)}
    fft_here = fft_available(args.n, args.m)
    result["path"] = "fft" if fft_here and args.m >= FFT_MIN_OUTPUT_BITS else "karatsuba"
    if args.both:
        got = {}
        for name, use_fft in (("karatsuba", False), ("fft", True)):
            if use_fft and not fft_here:
                continue
            reps = 1 if name == "karatsuba" and args.n > 1 << 24 else args.reps
            wall_ms, path_cpu_ms = _median_ms(
                lambda: got.__setitem__(name, toeplitz_hash(seed, x, args.n, args.m, fft=use_fft)), reps)
            result.update({f"{name}_ms_per_block": round(wall_ms, 3),
                           f"{name}_cpu_ms_per_block": round(path_cpu_ms, 3)})
        if "fft" in got:
            result["fft_bit_exact"] = bool(np.array_equal(got["fft"], got["karatsuba"]))
    if CPU_FEATURES & PCLMUL and args.n <= 1 << 24:
        pclmul_ms, _ = _median_ms(lambda: toeplitz_hash(seed, x, args.n, args.m, cpu_features=PCLMUL), args.reps)
        result["pclmul_ms_per_block"] = round(pclmul_ms, 3)
    if args.n <= 1 << 22:  # the portable path is for correctness on other CPUs, not for huge blocks
        portable_ms, _ = _median_ms(lambda: toeplitz_hash(seed, x, args.n, args.m, cpu_features=0), 1)
        result["portable_ms_per_block"] = round(portable_ms, 3)
    if args.ntt:
        got = []
        ntt_ms, ntt_cpu_ms = _median_ms(lambda: got.append(toeplitz_hash(seed, x, args.n, args.m, ntt=True)), 1)
        result.update({"ntt_ms_per_block": round(ntt_ms, 3), "ntt_cpu_ms_per_block": round(ntt_cpu_ms, 3),
                       "ntt_bit_exact": bool(np.array_equal(got[0], toeplitz_hash(seed, x, args.n, args.m)))})
    if not args.no_reference:
        from randextract import ToeplitzHashing
        start = time.perf_counter()
        expected = np.asarray(ToeplitzHashing(args.n, args.m).extract(x_bits, seed_bits), dtype=np.uint8)
        ref_ms = (time.perf_counter() - start) * 1e3
        ours = bits.unpack(toeplitz_hash(seed, x, args.n, args.m), args.m)
        result.update({"randextract_ms": round(ref_ms, 1), "speedup_vs_randextract": round(ref_ms / ms, 1),
                       "bit_exact": bool(np.array_equal(ours, expected))})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
