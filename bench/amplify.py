"""Privacy amplification speed: one Toeplitz hash of n bits to m bits, per block, on one thread.

    python -m bench.amplify --n 1048576 --m 524288 --reps 20 [--no-reference]

ms_per_block is the median over --reps of qkdd's kernel (bit-packed in and out, run-time CPU
dispatch); portable_ms_per_block the same without PCLMULQDQ. Unless --no-reference is given, the
same input is also hashed once with randextract's ToeplitzHashing (the FFT reference) in the same
run, checked bit for bit, and its time reported with the speed ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from qkdd.bindings import bits
from qkdd.bindings.toeplitz import toeplitz_hash


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1 << 20)
    parser.add_argument("--m", type=int, default=1 << 19)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-reference", action="store_true", help="skip randextract")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    x_bits = rng.integers(0, 2, args.n, dtype=np.uint8)
    seed_bits = rng.integers(0, 2, args.n + args.m - 1, dtype=np.uint8)
    x, seed = bits.pack(x_bits), bits.pack(seed_bits)

    ms = _median_ms(lambda: toeplitz_hash(seed, x, args.n, args.m), args.reps)
    portable_ms = _median_ms(lambda: toeplitz_hash(seed, x, args.n, args.m, portable=True), max(1, args.reps // 10))
    result = {"n": args.n, "m": args.m, "ms_per_block": round(ms, 3),
              "mbit_per_s": round(args.n / ms / 1e3, 1), "portable_ms_per_block": round(portable_ms, 3)}
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
