"""Reconciliation benchmark: both ends in one process and one thread, messages serialized as bytes.

    python -m bench.reconcile --algo efficient --n 1000000 --qber 0.02 --frames 20 --noise exact
    python -m bench.reconcile --algo efficient --biconf 0 --biconf 4    # side by side, with BICONF
    python -m bench.reconcile --algo efficient --algo ldpc --qber 0.02  # Cascade and LDPC in one run

Prints {"algo","n","qber","frames","frame_errors","efficiency","round_trips","mbit_per_s"} per
configuration. efficiency = disclosed bits / (n h(Q)) (ratio to the Shannon limit, as in
Martinez-Mateo et al., arXiv:1407.3257, sec. 2), over all frames; mbit_per_s counts input bits
reconciled per wall second (both ends, messages serialized), key and noise generation excluded.
mbit_per_cpu_s is the same per CPU second of this thread: the figure to compare on a shared machine.
--algo cascade names Cascade's most efficient schedule ("efficient"; the run is named after the schedule).
--algo ldpc runs LDPC reconciliation (qkdd.postprocess.ldpc) instead; its round_trips count the
syndrome exchange and each reveal round; its disclosed bits are syndromes less punctured bits plus reveals.
--ldpc-decoder (repeatable) picks Bob's decoder (qkdd.postprocess.ldpc_plan.DECODERS; default min-sum); the
sum-product runs are named "ldpc+sum-product". --ldpc-codes own (repeatable, beside "best", the default) keeps the
min-sum decoder on its own codes (the plan before it borrowed the sum-product set's, ldpc_plan.START_LONG_BORROWED);
those runs are named "ldpc+own-codes". --ldpc-codes no-xl keeps the sum-product decoder off its codes of 196 608 bits
(ldpc_plan.XL_CODES, for frames of eight such codewords and more): runs named "ldpc+no-xl-codes".
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from qkdd.postprocess.cascade import CascadeAlice, CascadeBob
from qkdd.postprocess.cascade_schedules import SCHEDULES
from qkdd.postprocess.ldpc import LdpcAlice, LdpcBob, LdpcFrameError
from qkdd.postprocess.ldpc_plan import DECODERS, DEFAULT_DECODER

LDPC = "ldpc"
CASCADE, CASCADE_BEST = "cascade", "efficient"     # --algo cascade: the schedule disclosing least (README)


def binary_entropy(q: float) -> float:
    """h(q) = -q log2 q - (1-q) log2(1-q)."""
    if q <= 0.0 or q >= 1.0:
        return 0.0
    return -q * math.log2(q) - (1 - q) * math.log2(1 - q)


def noisy_pair(rng: np.random.Generator, n: int, qber: float, noise: str) -> tuple[np.ndarray, np.ndarray]:
    """Alice's random key and Bob's copy with errors: exactly round(Q n) flips, or each bit with prob. Q."""
    words = (n + 63) // 64
    alice = rng.integers(0, 2 ** 64, words, dtype=np.uint64, endpoint=False)
    if n % 64:
        alice[-1] &= np.uint64((1 << (n % 64)) - 1)
    if noise == "exact":
        positions = rng.choice(n, size=round(qber * n), replace=False)
    else:
        positions = np.flatnonzero(rng.random(n) < qber)
    flips = np.zeros(words * 64, dtype=np.uint8)
    flips[positions] = 1
    bob = alice ^ np.packbits(flips, bitorder="little").view(np.uint64)
    return alice, bob


OWN_CODES, BEST_CODES, NO_XL_CODES = "own", "best", "no-xl"


def reconcile_ldpc(alice_key, bob_key, n, qber, frame_id, seed=None, decoder=DEFAULT_DECODER, codes=BEST_CODES):
    """One frame through both LDPC ends; return (bob, alice) after DONE, or after Bob gave the frame up."""
    bob = LdpcBob(bob_key, n, frame_id, qber, seed=seed, decoder=decoder, borrow_codes=codes != OWN_CODES,
                  xl_codes=codes != NO_XL_CODES)
    alice = LdpcAlice(alice_key, n, frame_id)
    to_alice = [bob.start()]
    try:
        while to_alice:
            (reply,) = alice.receive(to_alice.pop())
            to_alice = bob.receive(reply)
            if bob.done:
                assert alice.receive(to_alice.pop()) == []
    except LdpcFrameError:
        pass    # counted as a frame error: the keys differ
    return bob, alice


def reconcile(alice_key, bob_key, n, qber, algo, frame_id, seed=None, lookahead=None, biconf_rounds=0,
              decoder=DEFAULT_DECODER, codes=BEST_CODES):
    """Run one frame through both ends; return (bob, alice) after DONE."""
    if algo == LDPC:
        return reconcile_ldpc(alice_key, bob_key, n, qber, frame_id, seed, decoder, codes)
    bob = CascadeBob(bob_key, n, frame_id, qber, schedule=algo, seed=seed, lookahead=lookahead,
                     biconf_rounds=biconf_rounds)
    alice = CascadeAlice(alice_key, n, frame_id)
    to_alice = [bob.start()]
    while to_alice:
        (reply,) = alice.receive(to_alice.pop())
        to_alice = [m for m in bob.receive(reply)]
        if bob.done:
            assert alice.receive(to_alice.pop()) == []
    return bob, alice


def run(algo: str, n: int, qber: float, frames: int, noise: str, seed: int, lookahead=None,
        biconf_rounds: int = 0, decoder: str = DEFAULT_DECODER, codes: str = BEST_CODES) -> dict:
    rng = np.random.default_rng(seed)
    frame_errors = 0
    disclosed = 0
    round_trips = 0
    elapsed_s = 0.0
    cpu_s = 0.0
    for frame in range(frames):
        alice_key, bob_key = noisy_pair(rng, n, qber, noise)
        shuffle_seed = os.urandom(32)
        t0, c0 = time.perf_counter(), time.thread_time()
        bob, alice = reconcile(alice_key, bob_key, n, qber, algo, frame, shuffle_seed, lookahead, biconf_rounds,
                               decoder, codes)
        elapsed_s += time.perf_counter() - t0
        cpu_s += time.thread_time() - c0
        frame_errors += int(not np.array_equal(alice_key, bob_key))
        disclosed += bob.disclosed_bits
        round_trips += bob.round_trips
    name = algo if lookahead is None else f"{algo}+lookahead{lookahead[0]}:{lookahead[1]}"
    name += f"+biconf{biconf_rounds}" if biconf_rounds else ""
    name += f"+{decoder}" if algo == LDPC and decoder != DEFAULT_DECODER else ""
    name += f"+{codes}-codes" if algo == LDPC and codes != BEST_CODES else ""
    return {"algo": name, "n": n, "qber": qber, "frames": frames, "frame_errors": frame_errors,
            "efficiency": round(disclosed / (frames * n * binary_entropy(qber)), 4),
            "round_trips": round(round_trips / frames, 1),
            "mbit_per_s": round(frames * n / elapsed_s / 1e6, 2),
            "mbit_per_cpu_s": round(frames * n / cpu_s / 1e6, 2)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", action="append", choices=sorted(SCHEDULES) + [CASCADE, LDPC],
                        help=f"Cascade schedule, {CASCADE} (the {CASCADE_BEST!r} schedule) or ldpc (repeatable; "
                             "default: every Cascade schedule)")
    parser.add_argument("--n", type=int, action="append", help="frame length in bits (repeatable)")
    parser.add_argument("--qber", type=float, action="append", help="error rate (repeatable)")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--noise", choices=["exact", "bernoulli"], default="exact")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulated keys and noise")
    parser.add_argument("--lookahead", metavar="FEW:LEVELS",
                        help="ask LEVELS tree levels per round once at most FEW searches are open")
    parser.add_argument("--biconf", type=int, action="append", metavar="ROUNDS",
                        help="BICONF rounds after the schedule's passes (repeatable; default: 0)")
    parser.add_argument("--ldpc-decoder", action="append", choices=DECODERS,
                        help=f"Bob's LDPC decoder (repeatable; default: {DEFAULT_DECODER})")
    parser.add_argument("--ldpc-codes", action="append", choices=[BEST_CODES, OWN_CODES, NO_XL_CODES],
                        help="best (default), own (min-sum on its own codes) or no-xl (sum-product without the "
                             "codes of 196 608 bits) (repeatable)")
    args = parser.parse_args(argv)
    lookahead = tuple(int(v) for v in args.lookahead.split(":")) if args.lookahead else None
    for algo in (CASCADE_BEST if a == CASCADE else a for a in args.algo or sorted(SCHEDULES)):
        for n in args.n or [1_000_000]:
            for qber in args.qber or [0.02]:
                for rounds in args.biconf or [0]:
                    for decoder in (args.ldpc_decoder or [DEFAULT_DECODER]) if algo == LDPC else [DEFAULT_DECODER]:
                        for codes in (args.ldpc_codes or [BEST_CODES]) if algo == LDPC else [BEST_CODES]:
                            print(json.dumps(run(algo, n, qber, args.frames, args.noise, args.seed, lookahead, rounds,
                                                 decoder, codes)), flush=True)


if __name__ == "__main__":
    main()
