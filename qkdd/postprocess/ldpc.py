"""LDPC reconciliation as sans-IO protocol objects: Alice sends syndromes, Bob decodes, asks for reveals.

Theory of operation
-------------------
One-way syndrome reconciliation with rate adaptation (Elkouss, Martinez-Mateo, Lancho & Martin, "Rate
compatible protocol for information reconciliation: an application to QKD", ITW 2010, arXiv:1006.2660)
and the blind, interactive extension (Martinez-Mateo, Elkouss & Martin, "Blind reconciliation", QIC 12,
2012, arXiv:1205.5729). Bob splits the n-bit frame evenly over k codewords of a shipped QC-LDPC code
(qkd_ldpc.h) of length N and syndrome length m; in each codeword p positions are punctured (Alice fills
them with fresh secret random bits, Bob knows nothing of them) and s are shortened (zero at both ends),
the rest carry key bits. A 256-bit seed Bob draws from the OS CSPRNG fixes, through the keyed
permutation of qkd_prng.h which positions are punctured, shortened and key, and the order of reveals:
the punctured positions. Codeword j carries frame bits j, j + k, j + 2k, ... (interleave), so that each
sees the frame's average error rate. Bob picks the code and p from his QBER estimate so that the first attempt
discloses f_start * h(Q) per key bit and enough bits are punctured for the reveal rounds, and
announces all of it in START.

Alice answers with the k syndromes. Bob decodes every codeword (layered offset min-sum in C, or with
decoder=SUM_PRODUCT the int8 sum-product decoder on the codes chosen for it); each one
that does not reach its syndrome is listed in a REVEAL, and Alice discloses the next `reveal_step`
punctured positions of its reveal order in REVEALED (a revealed punctured bit turns into a shortened
one, lowering the rate as in Martinez-Mateo et al.); Bob decodes those codewords again, resuming each decoder
where it stalled (then, if that fails, afresh; after the last round also with other check rules, and then
with the floating-point sum-product decoder of qkd_ldpc_bp.h on the same syndrome). After
`max_reveal_rounds` reveals (two for long frames: at most 3 round trips) a codeword still failing is given up:
up to max_dropped() of them (a frame of hundreds of codewords meets the rare one beyond every rescue; none in a
frame of few), their key bits set to 0 at both ends and counted as disclosed whole, so the frame keeps the rest of
its key; more fail the frame (Bob raises, state FAILED). Then Bob writes the corrected bits into his key and sends
DONE with his counts and the codewords given up, which Alice checks against hers.

Disclosed bits, counted alike at both ends (Elkouss et al. 2010, sec. III): per codeword m - p + t, the
syndrome less the punctured bits it spends on Alice's random padding, plus t revealed values; a codeword given up
adds all of its key bits (public zeros now: what the bound subtracts for them is exactly their length). The
finite-key analysis takes this sum exactly as it takes Cascade's parities. Verification and privacy
amplification run afterwards as for Cascade.

Messages use the post-processing header of wire.py (magic b"QKPP", version 1, kind, frame id, sequence
number, payload length). Kinds 0x51 START, 0x52 SYNDROMES, 0x53 REVEAL, 0x54 REVEALED, 0x55 DONE.
Bob numbers his messages 0, 1, 2, ...; Alice's reply carries the number of the message it answers.
Payloads (little-endian)::

    START      u64 n_bits, u16 code, u32 codewords, u32 punctured, u32 reveal_step, u8 max_reveal_rounds,
               32-byte seed
    SYNDROMES  codewords x m bits, bit j of syndrome i at bit i*m + j (byte /8, bit %8)
    REVEAL     u32 count, count x u32 codeword index (strictly increasing)
    REVEALED   count x reveal_step bits, in REVEAL's order (bit-packed as SYNDROMES, zero padding)
    DONE       u64 disclosed bits, u64 corrected bits, u32 round trips (Bob's counts), then, if any codeword was
               given up, u32 count and count x u32 codeword index (strictly increasing)

States and transitions (anything else raises LdpcStateError; a rejected message changes nothing)::

    role   state            event                    action                                next state
    Bob    IDLE             start()                  send START (seq 0)                    AWAIT_SYNDROMES
    Bob    AWAIT_SYNDROMES  SYNDROMES seq 0          decode all; send REVEAL (seq 1)       AWAIT_REVEALED
                                                     or, all decoded, DONE                 DONE
    Bob    AWAIT_REVEALED   REVEALED seq == sent     decode again; send REVEAL (seq+1)     AWAIT_REVEALED
                                                     or DONE                               DONE
                                                     or, rounds exhausted: DONE giving     DONE
                                                     up at most max_dropped() codewords,
                                                     or raise                              FAILED
    Alice  AWAIT_START      START seq 0              send SYNDROMES                        ANSWERING
    Alice  ANSWERING        REVEAL seq == next       send REVEALED                         ANSWERING
    Alice  ANSWERING        DONE seq == next         check counts                          DONE
"""
from __future__ import annotations

import dataclasses
import enum
import math
import struct

import numpy as np

from qkdd.bindings import bits as native_bits
from qkdd.bindings import ldpc as native
from qkdd.bindings import ldpc_bp
from qkdd.postprocess import randomness, wire
from qkdd.postprocess.wire import PeerMessageError

SEED_BYTES = native.SEED_BYTES
MAX_BITS = 1 << 30
MAX_REVEAL_ROUNDS = 16
# Codewords still failing after the last reveal round that Bob gives up (key bits zeroed at both ends, disclosed
# whole) rather than the frame: at most this fraction of the frame's codewords, and at least one, in frames of at
# least MIN_CODEWORDS_TO_GIVE_UP codewords (a smaller frame loses an eighth of its key or more with one, and little
# with all of it). A frame of 562 codewords of code 39 (bench.link yuan2018, 2.9 % QBER, the sum-product decoder) lost
# one frame in four or five to one or two codewords (bench, offline: 3 of 26 frames), each a 48 000-bit codeword that
# costs 0.2 % of the frame's key given up; many failing codewords mean a wrong estimate, and the frame goes. A
# codeword given up costs the disclosure its whole length: not a way to lower the starts (bench, 1 %, 40 frames of
# 10^6 bits: start 1.22 instead of 1.25 gave up 2 codewords and f 1.274 against 1.263).
MAX_DROPPED_FRACTION, MIN_CODEWORDS_TO_GIVE_UP = 0.02, 8
_START = struct.Struct(f"<QHIIIB{SEED_BYTES}s")
_DONE = struct.Struct("<QQI")
_COUNT = struct.Struct("<I")
# Frames from this length on use the long codes (Z = 512): half a long codeword of key bits and more. Shorter frames
# take the short codes (Z = 64), whose thresholds spread far wider: at 1 % QBER they lost 18 of 60 frames of 10^5 bits
# after 8 reveal rounds where the long codes, shortened, lost none (bench, 2026-12-07); a long codeword shortened to
# 10^4 key bits lost every frame.
LONG_FRAME_BITS = 49152 // 2
LONG_CODEWORD_BITS = 49152        # the long codes' length (Z = 512 of 96 base columns, or Z = 256 of 192)
MAX_PUNCTURED_FRACTION = 0.10     # random puncturing beyond this degrades decoding fast
# Short codes, by QBER (up to): the first attempt's disclosure and each reveal round's, in units of h(Q). Below
# 1.5 % a short codeword holds a few dozen errors and the disclosure it needs ranges over 1.2-1.8 h(Q) (bench, 10^5
# bits at 1 %: 14 frames in 30 lost with steps of 0.04, none with 0.08); above, 0.04 steps suffice.
START_SHORT = ((0.005, 1.40, 0.12), (0.015, 1.25, 0.08), (0.5, 1.20, 0.04))
# Long codes (Z = 512), by QBER (up to): the first attempt's f and the reveal step, for the lowest f with at most
# 3 round trips, no failed frame in 50 at n = 10^6 (bench.reconcile; README) and no more than ~15 % of the
# throughput given up. A lost frame costs all its key, f 0.01 more only ~0.2 % of it. Below 1.5 % QBER a codeword
# carries fewer bits of entropy and the thresholds spread wider: a higher start. With MAX_ITERATIONS 80, the check
# rules by code rate (CHECK_RULES) and the sum-product decoder as the last resort, these replaced starts of 1.26 /
# 1.21 with steps of 0.08 (bench, the same frames through each setting in turn, 20-30 frames: f 1.278 -> 1.265 at
# 1 %, 1.250 -> 1.229 at 2 %, 1.234 -> 1.205 at 3 %, 1.220 -> 1.174 at 5 %, 1.221 -> 1.192 at 8 %). Starts 0.01-0.03
# lower save up to 0.01 more and cost 15-35 % of the throughput (more codewords fail their first attempt; 1.24 at
# 1 %: f 1.258 at 17 % less).
# Below 1 % the rows come from frames of 2.5*10^4 to 10^6 bits at 0.2-1.5 % QBER (bench, 2026-12-07: at 1.25 with
# steps of 0.07, 0.5-0.75 % lost 18-30 frames in 30 and 1 % up to 5 in 100; a codeword there holds a few hundred
# errors or fewer, and the disclosure it needs spreads wider as they get fewer), with LOW_QBER_REVEAL_ROUNDS.
START_LONG = ((0.0025, 1.80, 0.20), (0.0035, 1.60, 0.12), (0.005, 1.45, 0.09), (0.0075, 1.35, 0.08),
              (0.015, 1.25, 0.07), (0.025, 1.21, 0.07), (0.045, 1.19, 0.06), (0.055, 1.17, 0.06), (0.07, 1.18, 0.06),
              (0.5, 1.19, 0.06))
MIN_REVEAL_ROUNDS = 3             # codes leaving fewer punctured bits than this many rounds are the last choice
# Check rules (scale in eighths, offset, self-corrected) a codeword failing after the last reveal is decoded with
# in turn: at 2 % QBER, n = 10^6, about one codeword in 400 stalls in a trapping set at f 1.35 under the default
# rule and decodes under another (bench).
LAST_CHANCE_RULES = ((7, 1, True), (6, 1, True), (6, 0, True), (7, 1, False), (6, 0, False))   # (..., self-corrected)
# The check rule (scale in eighths, offset) of every attempt, by code rate (up to): scale 6/8 without offset for the
# codes of rate 0.8 and below, 7/8 with offset 1 above (bench, n = 10^6, the same frames and plans through each rule:
# at 5 % QBER, rate 0.67, f 1.176 against 1.196 and at 8 %, rate 0.54, f 1.184 against 1.202 (1 round trip instead of
# 2.6 at an equal start); at 2 %, rate 0.84, alike; 5/8, 8/8, offset 2 and 7/8 without offset worse everywhere).
CHECK_RULES = ((0.8, (6, 0)), (1.0, (7, 1)))
# Bob decodes with self-corrected min-sum (qkd_ldpc.h): per-codeword thresholds ~1.5 % lower than plain min-sum
# on the shipped codes, and fewer iterations (bench: f 1.242 against 1.254 at 2 %, n = 10^6, same plan).
SELF_CORRECTING = True
MAX_REVEAL_ROUNDS_LONG = 2        # long codes: syndromes plus two reveal rounds, at most 3 round trips per frame
# ... except below VERY_LOW_QBER, and below LOW_QBER for frames of fewer than FEW_CODEWORDS_BITS: up to four rounds,
# 5 round trips, where the disclosure each codeword needs spreads wider (bench, 2026-12-07: at 1 %, frames of 2.5*10^4
# to 2*10^5 bits, a few shortened codewords, lost 1-5 in 100 with two rounds and none in 60 with four, 1.7-2.3 round
# trips on average, while 10^6-bit frames lost none in 50 with two; at 0.75 % 10^6-bit frames lost 1 in 10 with two).
LOW_QBER, VERY_LOW_QBER, LOW_QBER_REVEAL_ROUNDS, FEW_CODEWORDS_BITS = 0.015, 0.01, 4, 8 * 49152
# The rate-0.948 codes (indices 0 and 10) are not planned: min-sum decodes them at no QBER they fit (0.4-0.75 %:
# 55-60 frames lost in 60 at f 1.5, the rate-0.917 code losing none at 1.35-1.45; bench, 2026-12-07). They stay in
# the table, so code indices and what a peer's START may name are unchanged.
MAX_PLANNED_RATE = 0.93
MAX_REVEAL_ROUNDS_SHORT = 8       # short codes (Z = 64): their thresholds spread wider, so more and smaller rounds
SHORTENED_WEIGHT = 0.15           # plan, long codes: a shortened bit costs the decoder ~0.15 punctured bits (bench)
# A codeword that every min-sum rule fails after the last reveal round is decoded, before the frame is given up,
# by the floating-point layered sum-product decoder (qkd_ldpc_bp.h) on the same syndrome and LLRs in nats. Its
# thresholds on the shipped codes lie ~0.02-0.03 h(Q) below min-sum's (2 % QBER, rate 0.84: it decodes 7 of 9
# codewords min-sum fails at f 1.21, 11 of 25 at 1.16), but an iteration costs as much as ~100 min-sum iterations
# (2-3 ms for a 49 152-bit codeword), so it serves as the last resort, not before every reveal (bench, n = 10^6:
# run on the failing codewords of a round when at most 5 % of them failed, it cost 25-45 % of the throughput and
# saved 0.001-0.004 in f at 2-5 %). It rescues the rare frame the first attempts and reveal steps closer to the
# threshold (START_LONG) would lose.
BP_MAX_ITERATIONS = 100
# A codeword whose decode stalls with at most ERASURE_MAX_UNSATISFIED checks failing sits in a trapping set (a few
# wrong bits whose checks are mostly satisfied: the error floor), which more reveals seldom leave. Bob decodes it
# afresh with the channel LLRs of the unpinned bits of those checks erased (0), up to ERASURE_ROUNDS times, the checks
# still failing erased too: a local step, nothing more disclosed (Bob's decision still has to reach Alice's syndrome,
# and verification follows). Bench, 300 codewords each: code 39 at f 1.12 and 1.2, 2 of 10 and 2 of 2 failures had 2-4
# failing checks (5-9 wrong bits), every one decoded after the erasure; the rest had thousands (a decoder far from the
# codeword), as had every failure of code 38, and min-sum's on its codes hundreds or more. In frames of 562 codewords
# of code 39 at 2.9 % QBER it decoded 0-3 codewords a frame, each saving a reveal round for its codeword.
ERASURE_MAX_UNSATISFIED = 64
ERASURE_ROUNDS = 3
# Min-sum iterations per attempt: 80 rather than 40 lets the codewords that converge slowly near the threshold
# finish without a reveal (bench, n = 10^6, same plan: f 1.246 -> 1.233 at 2 %, 1.278 -> 1.270 at 1 %, alike at
# 5-8 %; failing codewords cost twice the iterations, but fewer codewords fail).
MAX_ITERATIONS = 80
BP_STALL_ITERATIONS = 20
BP_KNOWN_NATS = 30.0              # BP's LLR of a bit both ends know (shortened or revealed)
# Bob's decoder (LdpcBob(decoder=...)): MIN_SUM, the layered int8 self-corrected min-sum on the codes whose degrees
# were chosen for it (the faster); SUM_PRODUCT, the layered int8 sum-product decoder of qkd_ldpc.h
# (qkd_ldpc_decoder_set_sum_product, SPA_UNITS_PER_NAT) on the codes whose degrees were chosen by density evolution of
# belief propagation (ensemble ENSEMBLE_SUM_PRODUCT; long frames only, rates listed in native/tools/ldpc_codes.py
# BP_CHOSEN), falling back to MIN_SUM where no such code fits the frame and QBER; AUTO (the default), one of the two
# by the frame's QBER estimate (decoder_for). Alice needs no setting: START names the code. Figures side by side in
# the README.
MIN_SUM, SUM_PRODUCT, AUTO = "min-sum", "sum-product", "auto"
DECODERS = (AUTO, MIN_SUM, SUM_PRODUCT)
DEFAULT_DECODER = AUTO
SPA_UNITS_PER_NAT = 4             # as min-sum's LLRs (finer units decode worse: the int8 posteriors saturate; README)
# SUM_PRODUCT's first attempt and reveal step by QBER (up to), as START_LONG: no failed frame in 4-20 at n = 10^6 and
# the lowest f short of the float sum-product rescue running often (bench, 4 frames each: 8 %, start 1.08 -> f 1.090 at
# 10 Mbit/CPU-s, 1.10 -> 1.104 at 16; 5 %, 1.10 with steps 0.03 -> 1.108 at 10, 0.04 -> 1.113 at 14, 1.13 -> 1.133 at
# 18; 3 %, 1.12 -> 1.134; 2 %, 1.12 with 0.04 -> 1.155, 1.13 with 0.03 -> 1.147, 1.15 -> 1.161 and 2 frames lost).
# Above 10.5 % (the rate-0.48 code punctured 4 %; 20 frames at 11 %): 1.09 -> f 1.127 with every frame taking both
# reveal rounds (3.0 round trips, 13 Mbit/CPU-s), 1.11 -> 1.128 (2.1, 17.5), 1.12 with steps 0.04 -> 1.138.
# With check messages capped at 31 (ldpc.c), steps of 0.03 from 4.5 to 6.5 % (bench, the same 40 frames each way: 5 %,
# f 1.113 -> 1.107 at 18 -> 21 Mbit/CPU-s; 6 %, 1.102 -> 1.101).
START_LONG_SPA = ((0.025, 1.15, 0.04), (0.045, 1.12, 0.04), (0.065, 1.10, 0.03), (0.105, 1.09, 0.03), (0.5, 1.11, 0.03))
# A sum-product code punctured or shortened more than this is too far from its rate: min-sum's codes then (at 1 %
# QBER the rate-0.84 code punctured 7 % lost every frame).
SPA_MAX_PUNCTURED_FRACTION = 0.045
SPA_MIN_QBER = 0.0175             # below, min-sum (1.5 %: the rate-0.84 code punctured 4 % lost 4 frames in 100)
# The sum-product set's codes of 192 base columns (native/tools/ldpc_codes.py LP_CHOSEN: column degrees by linear
# programming on the int8 decoder's density evolution, Z = 256, n = 49 152) replace its codes of the same rates in the
# sum-product decoder's plans: per-codeword median f 1.100 against 1.121 at rate 0.844 and 1.079 against 1.101 at 0.771
# (576 codewords each); per frame (bench.reconcile, n = 10^6, the same 100 frames each way, none lost) f 1.166 ->
# 1.160 at 2 % QBER, 1.137 -> 1.127 at 3 %, 1.147 -> 1.129 at 3.5 %, alike at 4 %. They stay out of min-sum's
# borrowed codes, which were measured on the older ones. An older Alice refuses a START naming them.
SPA_SUPERSEDED = {20: 38, 22: 39}
LP_CODES = frozenset(SPA_SUPERSEDED.values())
SPA_MAX_SHORTENED_FRACTION = 0.15
# ... but for the sum-product decoder a code that would be punctured more is still taken, punctured at the limit, when
# that discloses at most SPA_MAX_EXTRA_F h(Q) more than the first attempt asked: frames of a few codewords adapt the
# rate coarsely (a 400 000-bit frame at 8 % QBER needs 9 codewords of the rate-0.55 code, each punctured 5.2 %, and
# fell back to min-sum's codes at f 1.19; punctured at 4.5 % it starts at 1.11 h(Q) instead of 1.09).
SPA_MAX_EXTRA_F = 0.05
# Where no Z = 512 code of the set fits even so, the sum-product decoder's plan takes the set's Z = SPA_SMALL_LIFT
# lifts (n = 12 288) from SPA_SMALL_LIFT_MIN_QBER up, first attempt and reveal step from START_SMALL_LIFT_SPA: a frame
# of 10^5 bits then splits into eight or nine codewords rather than two to four. Their thresholds spread wider (per
# codeword at 6-9 %: median f 1.09, all of 32 within 1.18), so they start higher with wider steps (bench, 60-100
# frames of 10^5-4*10^5 bits: the Z = 512 starts lost 1-12 frames at 8-10 %) and serve only above 5.5 % QBER, where a
# codeword holds 600 errors or more (at 2 % 63 frames of 10^5 bits in 100 were lost).
SPA_SMALL_LIFT, SPA_SMALL_LIFT_MIN_QBER = 128, 0.055
START_SMALL_LIFT_SPA = ((0.5, 1.13, 0.05),)
# MIN_SUM borrows the sum-product set's codes (decoded by min-sum, its fallbacks as on its own codes) where min-sum
# discloses less on them than on its own codes: by QBER (from, up to), the first attempt, the reveal step and the
# check rule (scale in eighths, offset). Bench, n = 10^6, the same 40 frames through each setting, none lost: 2 %
# (rate 0.81) f 1.229 -> 1.203 (start 1.18: 1.201 at 15 % less throughput); 3 % (rate 0.77) 1.205 -> 1.188 (7/8 with
# offset 1: 1.185 at 19 Mbit/CPU-s, below the goal); 5 % (rate 0.69) 1.175 -> 1.154 (6/8 without offset: 1.160, more
# round trips); at 8 % the rate-0.55 code gave 1.192 against 1.191, and at 1 % none fits (README). Elsewhere, or where
# no borrowed code fits (SPA_MAX_*), its own codes, START_LONG and CHECK_RULES.
START_LONG_BORROWED = ((0.0175, 0.025, 1.19, 0.06, (7, 1)), (0.025, 0.04, 1.15, 0.06, (6, 0)),
                       (0.04, 0.055, 1.15, 0.06, (7, 1)))
# AUTO (the default decoder) takes SUM_PRODUCT for frames whose QBER estimate lies above AUTO_SUM_PRODUCT_ABOVE and
# MIN_SUM below. Key is what the disclosure costs most at high QBER: at 8 % the sum-product pair discloses f 1.10
# against min-sum's 1.19, 0.037 of every sifted bit, about a fifth of the secret fraction there (1 - 2 h(Q) = 0.20
# asymptotically; Shor & Preskill, PRL 85, 441 (2000)). Since check messages are capped at 31 (ldpc.c) the pair
# decodes as fast as min-sum from 4 % up and discloses 0.03-0.05 h(Q) less (bench.reconcile, n = 10^6, the same 40
# frames each way, f and Mbit/CPU-s: 4 % 1.126 / 1.180 at 22.7 / 22.6, 4.5 % 1.121 / 1.152 at 30.9 / 30.8, 5 % 1.106
# / 1.154 at 22.9 / 28.8; it was the default from 5.5 % before). Below 4 % it still discloses 0.05-0.07 h(Q) less
# (2 % f 1.156 against 1.204 at 19.3 / 25.7 Mbit/CPU-s, 2.5 % 1.158 / 1.205 at 21.9 / 23.7, 3 % 1.124 / 1.189 at
# 20.1 / 23.7; n = 10^7 at 2.9 %: 1.124 / 1.186 at 21.7 / 25.3), but on a CPU-bound link it gains nothing:
# bench.link --system yuan2018 (QBER 2.9 %), two runs each alternated, 4 % more secret key a frame (7.16 against
# 6.88 Mbit) at 2.38-2.52 Mbit/s against 2.52-2.83 with min-sum, reconciliation 0.23-0.25 against 0.19-0.21 CPU s
# per secret Mbit (before codewords could be given up it also lost a frame in four: 1.92-2.01 Mbit/s; README).
AUTO_SUM_PRODUCT_ABOVE = 0.04


def decoder_for(decoder: str, qber_estimate: float) -> str:
    """The decoder (MIN_SUM or SUM_PRODUCT) that `decoder` names for a frame at this QBER estimate."""
    if decoder not in DECODERS:
        raise ValueError(f"LDPC decoder {decoder!r}: must be one of {DECODERS}")
    if decoder != AUTO:
        return decoder
    return SUM_PRODUCT if qber_estimate > AUTO_SUM_PRODUCT_ABOVE else MIN_SUM


class MessageType(enum.IntEnum):
    START = 0x51
    SYNDROMES = 0x52
    REVEAL = 0x53
    REVEALED = 0x54
    DONE = 0x55


class State(enum.Enum):
    IDLE = "IDLE"
    AWAIT_SYNDROMES = "AWAIT_SYNDROMES"
    AWAIT_REVEALED = "AWAIT_REVEALED"
    AWAIT_START = "AWAIT_START"
    ANSWERING = "ANSWERING"
    DONE = "DONE"
    FAILED = "FAILED"


class LdpcError(PeerMessageError):
    """An LDPC reconciliation message or call was refused."""


class LdpcMessageError(LdpcError):
    """Malformed message: bad header, truncated, oversized, inconsistent fields."""


class LdpcSequenceError(LdpcError):
    """Replayed, duplicated or out-of-order message."""


class LdpcStateError(LdpcError):
    """The message type or call is not legal in the current state."""


class LdpcFrameError(LdpcError):
    """The frame cannot be reconciled (a codeword still fails after every reveal round)."""


def binary_entropy(q: float) -> float:
    if q <= 0.0 or q >= 1.0:
        return 0.0
    return -q * math.log2(q) - (1 - q) * math.log2(1 - q)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a frame maps onto codewords; START carries all of it."""
    n_bits: int
    code: int
    codewords: int
    punctured: int
    reveal_step: int
    max_reveal_rounds: int

    def key_bits(self, index: int) -> int:
        """Key bits carried by codeword `index` (the frame split as evenly as possible)."""
        base, extra = divmod(self.n_bits, self.codewords)
        return base + (index < extra)

    def groups(self) -> list[tuple[int, int, int, int]]:
        """(first codeword, codewords, key bits each, first frame bit) of the runs of equal codewords."""
        base, extra = divmod(self.n_bits, self.codewords)
        runs = [(0, extra, base + 1, 0), (extra, self.codewords - extra, base, extra * (base + 1))]
        return [run for run in runs if run[1] and run[2]]

    def span(self, index: int) -> tuple[int, int]:
        """(first bit, key bits) of codeword `index` in the frame dealt to the codewords (interleave)."""
        base, extra = divmod(self.n_bits, self.codewords)
        if index < extra:
            return index * (base + 1), base + 1
        return extra * (base + 1) + (index - extra) * base, base

    def spans(self):
        """(codeword, first bit, key bits) of every codeword in order, as span()."""
        for first, count, k, start in self.groups():
            for r in range(count):
                yield first + r, start + r * k, k

    def check(self) -> None:
        info = native.code(self.code)
        if not 1 <= self.n_bits <= MAX_BITS:
            raise ValueError(f"LDPC frame of {self.n_bits} bits: must be 1 to {MAX_BITS}")
        if not 1 <= self.codewords <= self.n_bits:
            raise ValueError(f"{self.codewords} codewords for {self.n_bits} bits")
        if not 0 <= self.punctured < info.m_bits:
            raise ValueError(f"{self.punctured} punctured bits: must be below the syndrome length {info.m_bits}")
        if self.key_bits(0) + self.punctured > info.n_bits:
            raise ValueError(f"{self.key_bits(0)} key and {self.punctured} punctured bits exceed "
                             f"the {info.n_bits}-bit codeword")
        if not 1 <= self.reveal_step <= info.n_bits or not 0 <= self.max_reveal_rounds <= MAX_REVEAL_ROUNDS:
            raise ValueError("reveal step or rounds out of range")
        if self.max_reveal_rounds * self.reveal_step > self.punctured:
            raise ValueError("the reveal rounds would disclose more than the punctured bits")

    def key_bits_of(self, codewords) -> int:
        """Key bits carried by these codewords together."""
        return sum(self.key_bits(i) for i in codewords)

    def disclosed_bits(self, revealed_per_codeword: np.ndarray) -> int:
        """m - p + revealed, summed over codewords."""
        m = native.code(self.code).m_bits
        return int(self.codewords * (m - self.punctured) + int(revealed_per_codeword.sum()))


def plan(n_bits: int, qber_estimate: float, f_start: float | None = None, reveal_step_f: float | None = None,
         max_reveal_rounds: int | None = None, decoder: str = DEFAULT_DECODER, borrow_codes: bool = True) -> Plan:
    """Bob's choice: the code family by frame length, then the code and puncturing that disclose
    f_start * h(Q) per key bit in the first attempt; each reveal adds about reveal_step_f * h(Q).
    f_start, reveal_step_f and max_reveal_rounds default by family (long: START_LONG, MAX_REVEAL_ROUNDS_LONG or,
    below VERY_LOW_QBER and for frames of few codewords below LOW_QBER, LOW_QBER_REVEAL_ROUNDS; short: START_SHORT,
    MAX_REVEAL_ROUNDS_SHORT).

    Long codes: random puncturing costs the min-sum decoder much more than shortening does, and heavy
    shortening of a high-rate code costs too (bench, 2 %: a 5 % punctured rate-0.79 code decodes at f 1.26 where
    a 12 % shortened, 1.5 % punctured rate-0.84 code decodes at 1.21; 1 %: a 24 % shortened rate-0.92 code
    does worse than a 3 % punctured rate-0.875 one), so the plan takes the code with the least punctured
    fraction plus SHORTENED_WEIGHT times the shortened fraction. Short codes: the fewest codewords with enough
    punctured bits for the rounds.

    decoder AUTO: SUM_PRODUCT or MIN_SUM by the QBER estimate (decoder_for).
    decoder SUM_PRODUCT: the codes of that ensemble (and START_LONG_SPA) first; where none fits, as MIN_SUM.
    decoder MIN_SUM with borrow_codes: that ensemble's codes (and START_LONG_BORROWED) in the QBER ranges listed
    there, where one fits; otherwise (and without borrow_codes, the plan before they were borrowed) its own."""
    decoder = decoder_for(decoder, qber_estimate)
    starts = None
    if decoder == SUM_PRODUCT and qber_estimate >= SPA_MIN_QBER:
        starts = START_LONG_SPA
    elif decoder == MIN_SUM and borrow_codes and (borrowed := _borrowed(qber_estimate)) is not None:
        starts = ((0.5, borrowed[2], borrowed[3]),)
    if starts is not None and n_bits >= LONG_FRAME_BITS:
        try:
            return _plan(n_bits, qber_estimate, f_start, reveal_step_f, max_reveal_rounds, starts,
                         native.ENSEMBLE_SUM_PRODUCT, SPA_MAX_PUNCTURED_FRACTION, SPA_MAX_SHORTENED_FRACTION,
                         SPA_MAX_EXTRA_F if decoder == SUM_PRODUCT else 0.0,
                         excluded=frozenset(SPA_SUPERSEDED) if decoder == SUM_PRODUCT else LP_CODES)
        except ValueError:
            if not 0.0 < qber_estimate < 0.5:
                raise
        if decoder == SUM_PRODUCT and qber_estimate >= SPA_SMALL_LIFT_MIN_QBER:
            try:
                return _plan(n_bits, qber_estimate, f_start, reveal_step_f, max_reveal_rounds, START_SMALL_LIFT_SPA,
                             native.ENSEMBLE_SUM_PRODUCT, SPA_MAX_PUNCTURED_FRACTION, SPA_MAX_SHORTENED_FRACTION,
                             SPA_MAX_EXTRA_F, lift=SPA_SMALL_LIFT)
            except ValueError:
                pass
    return _plan(n_bits, qber_estimate, f_start, reveal_step_f, max_reveal_rounds, START_LONG, native.ENSEMBLE_MIN_SUM)


def _borrowed(qber_estimate: float) -> tuple | None:
    """The row of START_LONG_BORROWED whose QBER range holds this estimate, if any."""
    return next((row for row in START_LONG_BORROWED if row[0] <= qber_estimate <= row[1]), None)


def _plan(n_bits: int, qber_estimate: float, f_start: float | None, reveal_step_f: float | None,
          max_reveal_rounds: int | None, starts: tuple, ensemble: int, max_punctured: float = MAX_PUNCTURED_FRACTION,
          max_shortened: float = 1.0, max_extra_f: float = 0.0, lift: int | None = None,
          excluded: frozenset = frozenset()) -> Plan:
    """plan() within one code set, less the `excluded` code indices. A code whose puncturing would exceed
    max_punctured is passed over, or with max_extra_f > 0 punctured at the limit where that adds at most max_extra_f
    h(Q) to the first attempt (codes needing no such addition first, then the least added). `lift`: only that Z
    (default: the long codes, LONG_CODEWORD_BITS, for long frames; Z = 64 for short ones)."""
    long = n_bits >= LONG_FRAME_BITS
    table = starts if long else START_SHORT
    start = next(((f, step) for q, f, step in table if qber_estimate <= q), table[-1][1:])
    if f_start is None:
        f_start = start[0]
    if reveal_step_f is None:
        reveal_step_f = start[1]
    if max_reveal_rounds is None and not long:
        max_reveal_rounds = MAX_REVEAL_ROUNDS_SHORT
    elif max_reveal_rounds is None:
        wide = qber_estimate < VERY_LOW_QBER or (qber_estimate < LOW_QBER and n_bits < FEW_CODEWORDS_BITS)
        max_reveal_rounds = LOW_QBER_REVEAL_ROUNDS if wide else MAX_REVEAL_ROUNDS_LONG
    if not 1 <= n_bits <= MAX_BITS:
        raise ValueError(f"LDPC frame of {n_bits} bits: must be 1 to {MAX_BITS}")
    if not 0.0 < qber_estimate < 0.5:
        raise ValueError(f"QBER estimate {qber_estimate!r} must lie in (0, 0.5)")
    fh = f_start * binary_entropy(qber_estimate)
    reveal_h = max_reveal_rounds * reveal_step_f * binary_entropy(qber_estimate)   # what the rounds may add
    best = None
    family = (lambda c: c.z == lift) if lift else (lambda c: c.n_bits == LONG_CODEWORD_BITS) if long else \
        (lambda c: c.z == 64)
    for info in (c for c in native.codes() if family(c) and c.ensemble == ensemble and c.rate <= MAX_PLANNED_RATE
                 and c.index not in excluded):
        n, m = info.n_bits, info.m_bits
        # Most key bits a codeword can carry: m - p = fh K with p >= (what the reveal rounds take) and K + p <= n.
        key_max = min(int(m / (fh + reveal_h)), int((n - m) / (1 - fh)) if fh < 1 else n, n)
        if key_max < 1:
            continue
        codewords = math.ceil(n_bits / key_max)
        while True:
            key_bits = math.ceil(n_bits / codewords)
            punctured = max(0, m - math.ceil(fh * key_bits))
            if key_bits + punctured <= n:
                break
            codewords += 1
        extra = 0
        if punctured > max_punctured * n:
            extra = punctured - math.floor(max_punctured * n)   # syndrome bits disclosed beyond f_start h(Q)
            if extra > max_extra_f * binary_entropy(qber_estimate) * key_bits:
                continue    # the code's rate is too far above the target
            punctured -= extra
        if n - key_bits - punctured > max_shortened * n:
            continue    # ... or below it
        step = max(1, math.ceil(reveal_step_f * binary_entropy(qber_estimate) * key_bits))
        rounds = min(max_reveal_rounds, punctured // step)
        cost = (punctured + SHORTENED_WEIGHT * (n - key_bits - punctured)) / n
        # enough punctured bits for the reveal rounds first, then the least added disclosure, then (long) the least
        # cost or (short) the most key bits per codeword
        fit = (-cost,) if long else (key_bits / n, rounds)
        score = (rounds >= min(MIN_REVEAL_ROUNDS, max_reveal_rounds), -extra / key_bits, *fit)
        if best is None or score > best[0]:
            best = (score, info, punctured, codewords, step, rounds)
    if best is None:
        raise ValueError(f"no shipped code reaches {f_start} h(Q) at QBER {qber_estimate}")
    _, info, punctured, codewords, step, rounds = best
    result = Plan(n_bits, info.index, codewords, punctured, step, rounds)
    result.check()
    return result


class _Layout:
    """Positions inside one codeword, from the seed: punctured, shortened, key, and the reveal order."""

    def __init__(self, plan_: Plan, seed: bytes):
        info = native.code(plan_.code)
        self.info = info
        perm = native.permutation(seed, 0, info.n_bits).astype(np.int64)
        self.punctured = perm[:plan_.punctured]
        self._perm = perm
        self._p = plan_.punctured
        self._inverse = np.empty_like(perm)
        self._inverse[perm] = np.arange(info.n_bits)

    def place_row(self, ordered: np.ndarray, out: np.ndarray) -> None:
        """A codeword from its row in layout order (punctured, shortened, key): out[perm[j]] = ordered[j]. A gather
        (numpy's take), several times faster than a scatter; mode="clip" on indices that are a permutation: the
        same gather without numpy's buffered copy of `out` (mode="raise" buffers it: 30 % slower)."""
        np.take(ordered, self._inverse, out=out, mode="clip")

    def key_positions(self, key_bits: int) -> np.ndarray:
        return self._perm[self.info.n_bits - key_bits:]

    def shortened(self, key_bits: int) -> np.ndarray:
        return self._perm[self._p:self.info.n_bits - key_bits]

    def reveal_order(self, key_bits: int) -> np.ndarray:
        """Only punctured bits are revealed: each carries a whole bit Bob lacks (a key bit only h(Q))."""
        return self.punctured


def interleave(bits: np.ndarray, codewords: int) -> np.ndarray:
    """The frame's bits in the order the codewords take them, runs of Plan.key_bits each: codeword j takes
    frame bits j, j + k, j + 2k, ... (k codewords), so each codeword sees the frame's average error rate. A frame
    is not uniform: the pipeline concatenates the key bits of the intensity classes, and a decoy class's error
    rate is several times the signal's; taken in frame order, the codewords covering it failed every frame on
    a live link. (A blocked transposition in C, qkd_bytes_deal: numpy's strided copy of the transpose took
    7 times as long, an index gather costs 6 ms per 10^6 bits, a keyed permutation 25 ms.)"""
    return native_bits.deal(np.asarray(bits, dtype=np.uint8), codewords)


def deinterleave(ordered: np.ndarray, codewords: int) -> np.ndarray:
    """The inverse of interleave: frame order from codeword order."""
    return native_bits.undeal(np.asarray(ordered, dtype=np.uint8), codewords)


def _codeword_list(codewords: list[int]) -> bytes:
    """REVEAL's payload, and DONE's tail: u32 count, then the codeword indices as u32."""
    return _COUNT.pack(len(codewords)) + np.asarray(codewords, dtype="<u4").tobytes()


def _pack_bits(bits: np.ndarray) -> bytes:
    return np.packbits(np.asarray(bits, dtype=np.uint8), bitorder="little").tobytes()


def _check_key(key: np.ndarray, n_bits: int) -> None:
    if not isinstance(key, np.ndarray) or key.dtype != np.uint64 or key.ndim != 1:
        raise TypeError("key must be a 1-D numpy array of uint64 (bit-packed words)")
    if not 1 <= n_bits <= MAX_BITS:
        raise ValueError(f"LDPC frame of {n_bits} bits: must be 1 to {MAX_BITS}")
    if key.size != (n_bits + 63) // 64:
        raise ValueError(f"key holds {key.size} words, a {n_bits}-bit frame needs {(n_bits + 63) // 64}")


_TYPES = {int(t): t for t in MessageType}


class _End:
    role = ""

    def __init__(self, frame_id: int, n_bits: int):
        if not 0 <= frame_id < 2 ** 64:
            raise ValueError("frame_id must fit in 64 bits")
        self.frame_id = frame_id
        self.n_bits = n_bits
        self.state: State
        self.plan: Plan | None = None
        self.round_trips = 0
        self._revealed: np.ndarray | None = None   # reveal rounds done, per codeword
        self.dropped: list[int] = []               # codewords given up (their key bits zeroed, disclosed whole)

    def _illegal(self, what: str) -> LdpcStateError:
        return LdpcStateError(f"LDPC {self.role} in state {self.state.value}: {what} not allowed")

    def _decode(self, message: bytes, expected: dict[MessageType, int]) -> tuple[MessageType, int, memoryview]:
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise LdpcMessageError(f"LDPC message must be bytes, not {type(message).__name__}")
        try:
            header, payload = wire.decode(message, max_payload_bytes=max(expected.values()))
        except PeerMessageError as exc:
            raise LdpcMessageError(f"LDPC message refused: {exc}") from None
        msg_type = _TYPES.get(header.kind)
        if msg_type is None:
            raise LdpcMessageError(f"unknown LDPC message kind {header.kind:#x}")
        if header.frame_id != self.frame_id:
            raise LdpcMessageError(f"LDPC message for frame {header.frame_id}, this is frame {self.frame_id}")
        if msg_type not in expected:
            raise self._illegal(f"a {msg_type.name} message")
        if header.payload_bytes > expected[msg_type]:
            raise LdpcMessageError(f"oversized LDPC {msg_type.name}: {header.payload_bytes} bytes")
        return msg_type, header.seq, payload

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    @property
    def disclosed_bits(self) -> int:
        if self.plan is None or self._revealed is None:
            return 0
        return self.plan.disclosed_bits(self._revealed * self.plan.reveal_step) + self.plan.key_bits_of(self.dropped)

    def max_dropped(self) -> int:
        """The most codewords this frame may give up (MAX_DROPPED_FRACTION, at least one; none in a frame of fewer
        than MIN_CODEWORDS_TO_GIVE_UP)."""
        if self.plan.codewords < MIN_CODEWORDS_TO_GIVE_UP:
            return 0
        return max(1, int(MAX_DROPPED_FRACTION * self.plan.codewords))

    def _give_up(self, dealt: np.ndarray, codewords: list[int]) -> None:
        """Zero these codewords' key bits in the frame dealt to the codewords (interleave): given up, disclosed
        whole."""
        for i in codewords:
            start, k = self.plan.span(i)
            dealt[start:start + k] = 0
        self.dropped = sorted(codewords)

    def _codewords_in(self, payload, offset: int, what: str) -> np.ndarray:
        """The u32 codeword list from `offset` to the payload's end, checked strictly increasing within the frame."""
        which = np.frombuffer(payload, dtype="<u4", offset=offset).astype(np.int64)
        if np.any(np.diff(which) <= 0) or which[-1] >= self.plan.codewords:
            raise LdpcMessageError(f"{what} codeword list not strictly increasing within the frame")
        return which

    def _syndromes_bytes(self) -> int:
        return (self.plan.codewords * native.code(self.plan.code).m_bits + 7) // 8


class LdpcBob(_End):
    """Bob's end: owns the noisy key (corrected in place at the end) and drives the protocol."""

    role = "Bob"

    def __init__(self, key: np.ndarray, n_bits: int, frame_id: int, qber_estimate: float,
                 seed: bytes | None = None, f_start: float | None = None, reveal_step_f: float | None = None,
                 max_reveal_rounds: int | None = None, max_iterations: int = MAX_ITERATIONS,
                 sum_product: bool = True, decoder: str = DEFAULT_DECODER, borrow_codes: bool = True):
        """`sum_product`: decode a codeword every min-sum rule fails after the last reveal round with the
        sum-product decoder before giving the frame up (BP_* above). `decoder`: AUTO, MIN_SUM or SUM_PRODUCT (above).
        `borrow_codes`: whether MIN_SUM may plan from the sum-product set's codes (plan)."""
        _check_key(key, n_bits)
        if not key.flags.writeable or not key.flags.c_contiguous:
            raise ValueError("Bob's key must be a writable C-contiguous array (it is corrected in place)")
        super().__init__(frame_id, n_bits)
        q = min(max(qber_estimate, 1e-4), 0.45)
        decoder = decoder_for(decoder, q)
        self.plan = plan(n_bits, q, f_start, reveal_step_f, max_reveal_rounds, decoder, borrow_codes)
        # the fixed-point sum-product decoder on the codes chosen for it (plan may have fallen back to min-sum's; the
        # min-sum decoder may have borrowed them)
        self._spa_units = SPA_UNITS_PER_NAT if decoder == SUM_PRODUCT and \
            native.code(self.plan.code).ensemble == native.ENSEMBLE_SUM_PRODUCT else 0
        self.seed = randomness.fresh_bytes(SEED_BYTES) if seed is None else bytes(seed)
        if len(self.seed) != SEED_BYTES:
            raise ValueError(f"seed must be {SEED_BYTES} bytes")
        self.key = key
        self.max_iterations = max_iterations
        self.sum_product = bool(sum_product)
        self.llr_units = max(1, min(native.LLR_MAX, round(native.LLR_UNITS_PER_NAT * math.log((1 - q) / q))))
        self.state = State.IDLE
        self._seq = 0
        self._layout = _Layout(self.plan, self.seed)
        self._spare: native.Decoder | None = self._new_decoder()   # next fresh start
        self._stuck: dict[int, native.Decoder] = {}    # failing codeword -> its decoder, for resuming
        self._revealed = np.zeros(self.plan.codewords, dtype=np.int64)
        self._pending: list[int] = []
        self.corrected_bits = 0
        self.decoder_iterations = 0
        self._bp: ldpc_bp.BpDecoder | None = None
        rate = native.code(self.plan.code).rate
        self._rule = next(rule for up_to, rule in CHECK_RULES if rate <= up_to)    # (scale eighths, offset)
        if native.code(self.plan.code).ensemble == native.ENSEMBLE_SUM_PRODUCT and not self._spa_units:
            self._rule = _borrowed(q)[4]        # min-sum on a borrowed code: plan found q in a listed range
        self._channel_nats = np.float32(math.log((1 - q) / q))
        self.bp_codewords = 0           # codewords handed to the sum-product decoder, and its iterations
        self.bp_iterations = 0
        self.erasure_rescues = 0        # codewords decoded after erasing the bits of their failing checks
        self._eraser: native.Decoder | None = None

    def start(self) -> bytes:
        if self.state is not State.IDLE:
            raise self._illegal("start()")
        p = self.plan
        payload = _START.pack(p.n_bits, p.code, p.codewords, p.punctured, p.reveal_step, p.max_reveal_rounds,
                              self.seed)
        self.state = State.AWAIT_SYNDROMES
        return wire.encode(MessageType.START, self.frame_id, 0, payload)

    def _prepare(self) -> None:
        """Bob's LLRs for every codeword (once, on SYNDROMES), one codeword at a time in a row it reuses: of the
        frame's size only his bits dealt to the codewords (interleave, from the packed key: no unpacked copy),
        which the decoded codewords then overwrite (_keep), and the LLRs."""
        info = native.code(self.plan.code)
        n, p = info.n_bits, self.plan.punctured
        bits = native_bits.deal_bits(self.key, self.n_bits, self.plan.codewords)
        self._llr = np.empty((self.plan.codewords, n), dtype=np.int8)
        # +units for a 0, -units for a 1, as units - 2 units b in bytes modulo 256 (two's complement): a multiply
        # and an add on the row (a masked copy took 80 times as long, a take's 0/1 index would become int64)
        units, minus_twice = np.uint8(self.llr_units), np.uint8(-2 * self.llr_units % 256)
        ordered = np.zeros(n, dtype=np.int8)          # layout order: punctured (0), shortened, key
        for i, start, k in self.plan.spans():
            ordered[p:n - k] = native.LLR_MAX
            key = ordered[n - k:].view(np.uint8)
            np.multiply(bits[start:start + k], minus_twice, out=key)
            np.add(key, units, out=key)
            self._layout.place_row(ordered, self._llr[i])
        self._bits = bits
        self._decoded = np.empty(n, dtype=np.uint8)   # the codeword being decoded: its hard decisions
        self._corrected = 0

    def _keep(self, i: int) -> None:
        """Codeword i decoded (self._decoded): its key bits replace Bob's in the dealt frame, the changes counted."""
        start, k = self.plan.span(i)
        own = self._bits[start:start + k]
        decided = np.take(self._decoded, self._layout.key_positions(k), mode="clip")     # positions < n: no clipping
        self._corrected += int(np.count_nonzero(decided != own))
        own[:] = decided

    def _decode_all(self, which: list[int]) -> list[int]:
        """Decode codewords `which` (with the bits revealed so far pinned); return those failing. A codeword's
        first attempt starts afresh; after a reveal its decoder first resumes where it stalled (the messages
        kept: most codewords then need a few iterations), and only if that fails starts afresh (a decoder
        stuck far from the codeword may not leave its trap, where a fresh start with the reveals succeeds). After
        the last reveal round a codeword that still fails is tried with the LAST_CHANCE_RULES: min-sum with
        another scale or offset often leaves the trapping set where the default rule stalls, and then with the
        sum-product decoder (_decode_bp). A failing codeword keeps its decoder (its state); the next codeword gets a
        fresh one."""
        failing = []
        for i in which:
            stuck = self._stuck.pop(i, None)
            iterations = 0
            if stuck is not None:
                iterations, _ = stuck.resume(self._llr[i], self._syndromes[i], self.max_iterations, *self._rule,
                                             out=self._decoded)
                self.decoder_iterations += iterations or self.max_iterations
                if iterations:
                    self._keep(i)
                    self._spare = stuck         # its scratch serves the next fresh codeword
                    continue
                self._spare = stuck
            decoder = self._fresh_decoder()
            last = self._revealed[i] >= self.plan.max_reveal_rounds
            rules = ((*self._rule, SELF_CORRECTING),)
            # after the last round min-sum's other rules, after sum-product all of them: min-sum leaves the trapping
            # sets where the sum-product decoder stalls too (bench, 2 %, 10 frames: 2 float rescues instead of 15)
            rules += tuple(rule for rule in LAST_CHANCE_RULES if rule != rules[0] or self._spa_units) if last \
                else ()
            for attempt, (scale, offset, self_correcting) in enumerate(rules):
                # the sum-product decoder's first attempt; min-sum's rules after it
                if attempt and (self_correcting != decoder.self_correcting or decoder.sum_product_units):
                    decoder = native.Decoder(self.plan.code, self_correcting)
                iterations, _ = decoder.decode(self._llr[i], self._syndromes[i], self.max_iterations, scale, offset,
                                               out=self._decoded)
                self.decoder_iterations += iterations or self.max_iterations
                if iterations:
                    break
            rescued = not iterations and self._decode_erased(i)
            if iterations or rescued or (last and self.sum_product and self._decode_bp(i)):
                self._keep(i)
                if (iterations or rescued) and decoder.self_correcting == SELF_CORRECTING \
                        and decoder.sum_product_units == self._spa_units:
                    self._spare = decoder
            else:
                failing.append(i)
                self._stuck[i] = decoder
        return failing

    def _decode_erased(self, i: int) -> bool:
        """Codeword i failed (self._decoded its hard decisions): if it stalled in a trapping set, decode it afresh with
        the unpinned bits of its failing checks erased (ERASURE_* above); True (self._decoded the codeword) if that
        reaches the syndrome."""
        code, target = self.plan.code, self._syndromes[i]
        llr = None
        for _ in range(ERASURE_ROUNDS):
            failing = np.flatnonzero(native.syndrome(code, self._decoded) != target)
            if not 0 < failing.size <= ERASURE_MAX_UNSATISFIED:
                return False
            if llr is None:
                llr = self._llr[i].copy()
            bits = native.check_bits(code, failing)
            llr[bits[np.abs(llr[bits]) < native.LLR_MAX]] = 0      # shortened and revealed bits stay pinned
            if self._eraser is None:
                self._eraser = self._new_decoder()
            iterations, _ = self._eraser.decode(llr, target, self.max_iterations, *self._rule, out=self._decoded)
            self.decoder_iterations += iterations or self.max_iterations
            if iterations:
                self.erasure_rescues += 1
                return True
        return False

    def _decode_bp(self, i: int) -> bool:
        """Sum-product on codeword i's syndrome (same bits pinned, channel LLRs in nats); True (the hard
        decisions in self._decoded) if it reaches the syndrome."""
        if self._bp is None:
            self._bp = ldpc_bp.BpDecoder(self.plan.code, bb84=True)
        row = self._llr[i]
        llr = np.sign(row).astype(np.float32) * np.float32(BP_KNOWN_NATS)
        key = self._layout.key_positions(self.plan.key_bits(i))
        llr[key] = np.where(row[key] > 0, self._channel_nats, -self._channel_nats)
        iterations, _ = self._bp.decode(llr, self._syndromes[i], BP_MAX_ITERATIONS, BP_STALL_ITERATIONS,
                                        out=self._decoded)
        self.bp_codewords += 1
        self.bp_iterations += iterations or BP_MAX_ITERATIONS
        return bool(iterations)

    def _fresh_decoder(self) -> native.Decoder:
        decoder, self._spare = self._spare, None
        return decoder if decoder is not None else self._new_decoder()

    def _new_decoder(self) -> native.Decoder:
        return native.Decoder(self.plan.code, SELF_CORRECTING, sum_product_units=self._spa_units)

    def _next(self, failing: list[int]) -> list[bytes]:
        self._seq += 1
        if failing and any(self._revealed[i] >= self.plan.max_reveal_rounds for i in failing):
            if len(failing) > self.max_dropped():
                self.state = State.FAILED
                raise LdpcFrameError(f"{len(failing)} of {self.plan.codewords} codewords still fail after "
                                     f"{self.plan.max_reveal_rounds} reveal rounds: frame lost")
            self._give_up(self._bits, failing)
            failing = []
        if not failing:
            self._finish()
            done = _DONE.pack(self.disclosed_bits, self.corrected_bits, self.round_trips)
            if self.dropped:
                done += _codeword_list(self.dropped)
            self.state = State.DONE
            return [wire.encode(MessageType.DONE, self.frame_id, self._seq, done)]
        self._pending = failing
        self.state = State.AWAIT_REVEALED
        return [wire.encode(MessageType.REVEAL, self.frame_id, self._seq, _codeword_list(failing))]

    def _finish(self) -> None:
        """Every codeword decoded (_keep wrote its bits): the dealt frame back into Bob's key, packed in place."""
        self.corrected_bits = self._corrected
        native_bits.undeal_bits(self._bits, self.plan.codewords, out=self.key)

    def receive(self, message: bytes) -> list[bytes]:
        """Take SYNDROMES or REVEALED; return REVEAL, or DONE when every codeword decodes."""
        if self.state is State.AWAIT_SYNDROMES:
            msg_type, seq, payload = self._decode(message, {MessageType.SYNDROMES: self._syndromes_bytes()})
            self._check_seq(seq, msg_type)
            if len(payload) != self._syndromes_bytes():
                raise LdpcMessageError(f"SYNDROMES of {len(payload)} bytes, expected {self._syndromes_bytes()}")
            info = native.code(self.plan.code)
            bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
            self._syndromes = bits[:self.plan.codewords * info.m_bits].reshape(self.plan.codewords, info.m_bits)
            self._prepare()
            self.round_trips += 1
            return self._next(self._decode_all(list(range(self.plan.codewords))))
        if self.state is State.AWAIT_REVEALED:
            step = self.plan.reveal_step
            size = (len(self._pending) * step + 7) // 8
            msg_type, seq, payload = self._decode(message, {MessageType.REVEALED: size})
            self._check_seq(seq, msg_type)
            if len(payload) != size:
                raise LdpcMessageError(f"REVEALED of {len(payload)} bytes, expected {size}")
            values = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
            for j, i in enumerate(self._pending):
                k = self.plan.key_bits(i)
                order = self._layout.reveal_order(k)
                done = int(self._revealed[i]) * step
                positions = order[done:done + step]
                self._llr[i][positions] = np.where(values[j * step:(j + 1) * step] == 0, native.LLR_MAX,
                                                   -native.LLR_MAX)
                self._revealed[i] += 1
            self.round_trips += 1
            return self._next(self._decode_all(self._pending))
        raise self._illegal("receiving a message")

    def _check_seq(self, seq: int, msg_type: MessageType) -> None:
        if seq != self._seq:
            kind = "replayed" if seq < self._seq else "out-of-order"
            raise LdpcSequenceError(f"{kind} {msg_type.name}: sequence {seq}, expected {self._seq}")


class LdpcAlice(_End):
    """Alice's end: sends syndromes of her key (padded with secret random bits), answers reveals."""

    role = "Alice"

    def __init__(self, key: np.ndarray, n_bits: int, frame_id: int, max_disclosed_bits: int | None = None):
        """`max_disclosed_bits` caps what Alice discloses in this frame (default 3/4 of the frame, as for
        Cascade); a START or REVEAL that would exceed it is refused."""
        _check_key(key, n_bits)
        super().__init__(frame_id, n_bits)
        self.max_disclosed_bits = 3 * n_bits // 4 if max_disclosed_bits is None else max_disclosed_bits
        self.key = key
        self.state = State.AWAIT_START
        self._next_seq = 0
        self.corrected_bits = 0   # as Bob reports in DONE

    def _check_seq(self, seq: int, msg_type: MessageType) -> None:
        if seq != self._next_seq:
            kind = "replayed" if seq < self._next_seq else "out-of-order"
            raise LdpcSequenceError(f"{kind} {msg_type.name}: sequence {seq}, expected {self._next_seq}")

    def receive(self, message: bytes) -> list[bytes]:
        if self.state is State.AWAIT_START:
            msg_type, seq, payload = self._decode(message, {MessageType.START: _START.size})
            self._check_seq(seq, msg_type)
            return self._on_start(payload)
        if self.state is not State.ANSWERING:
            raise self._illegal("receiving a message")
        limit = _COUNT.size + 4 * self.plan.codewords
        msg_type, seq, payload = self._decode(message, {MessageType.REVEAL: limit,
                                                        MessageType.DONE: _DONE.size + limit})
        self._check_seq(seq, msg_type)
        if msg_type is MessageType.DONE:
            return self._on_done(payload)
        return self._on_reveal(payload)

    def _on_start(self, payload) -> list[bytes]:
        if len(payload) != _START.size:
            raise LdpcMessageError(f"START of {len(payload)} bytes, expected {_START.size}")
        n_bits, code, codewords, punctured, step, rounds, seed = _START.unpack(payload)
        if n_bits != self.n_bits:
            raise LdpcMessageError(f"START for {n_bits} bits, this frame has {self.n_bits}")
        if code >= len(native.codes()):
            raise LdpcMessageError(f"START names unknown code {code}")
        candidate = Plan(n_bits, code, codewords, punctured, step, rounds)
        try:
            candidate.check()
        except ValueError as exc:
            raise LdpcMessageError(f"START refused: {exc}") from None
        if candidate.disclosed_bits(np.zeros(1, dtype=np.int64)) > self.max_disclosed_bits:
            raise LdpcMessageError(f"START would disclose more than {self.max_disclosed_bits} bits")
        self.plan = candidate
        self._layout = _Layout(candidate, seed)
        info = native.code(code)
        # one codeword at a time in a reused row: of the frame's size only the dealt bits and the codewords
        bits = native_bits.deal_bits(self.key, self.n_bits, codewords)
        n = info.n_bits
        self._words = np.empty((codewords, n), dtype=np.uint8)
        padding = np.unpackbits(np.frombuffer(randomness.fresh_bytes((codewords * punctured + 7) // 8), dtype=np.uint8),
                                bitorder="little")[:codewords * punctured].reshape(codewords, punctured)
        ordered = np.zeros(n, dtype=np.uint8)         # layout order: punctured (padding), shortened (0), key
        syndromes = np.empty((codewords, info.m_bits), dtype=np.uint8)
        for i, start, k in candidate.spans():
            ordered[:punctured] = padding[i]
            ordered[punctured:n - k] = 0
            ordered[n - k:] = bits[start:start + k]
            self._layout.place_row(ordered, self._words[i])
            syndromes[i] = native.syndrome(code, self._words[i])
        del bits
        self._revealed = np.zeros(codewords, dtype=np.int64)
        self.state = State.ANSWERING
        self._next_seq += 1
        return [wire.encode(MessageType.SYNDROMES, self.frame_id, self._next_seq - 1, _pack_bits(syndromes.ravel()))]

    def _on_reveal(self, payload) -> list[bytes]:
        if len(payload) < _COUNT.size:
            raise LdpcMessageError("REVEAL too short")
        (count,) = _COUNT.unpack_from(payload)
        if len(payload) != _COUNT.size + 4 * count or count == 0:
            raise LdpcMessageError(f"REVEAL of {len(payload)} bytes for {count} codewords")
        which = self._codewords_in(payload, _COUNT.size, "REVEAL")
        if np.any(self._revealed[which] >= self.plan.max_reveal_rounds):
            raise LdpcMessageError("REVEAL beyond the announced rounds")
        step = self.plan.reveal_step
        if self.disclosed_bits + count * step > self.max_disclosed_bits:
            raise LdpcMessageError(f"REVEAL would disclose more than {self.max_disclosed_bits} bits")
        values = []
        for i in which:
            order = self._layout.reveal_order(self.plan.key_bits(int(i)))
            done = int(self._revealed[i]) * step
            values.append(self._words[i][order[done:done + step]])
        self._revealed[which] += 1
        self.round_trips += 1
        self._next_seq += 1
        return [wire.encode(MessageType.REVEALED, self.frame_id, self._next_seq - 1,
                            _pack_bits(np.concatenate(values)))]

    def _on_done(self, payload) -> list[bytes]:
        dropped = self._dropped_in_done(payload)
        disclosed, corrected, round_trips = _DONE.unpack_from(payload)
        counted = self.disclosed_bits + self.plan.key_bits_of(dropped)
        if disclosed != counted:
            raise LdpcMessageError(f"DONE reports {disclosed} disclosed bits, Alice counted {counted}")
        if corrected > self.n_bits:
            raise LdpcMessageError(f"DONE reports {corrected} corrected bits in a {self.n_bits}-bit frame")
        if dropped:                         # given up: zeros at both ends (Bob's are), disclosed whole
            bits = native_bits.deal_bits(self.key, self.n_bits, self.plan.codewords)
            self._give_up(bits, dropped)
            native_bits.undeal_bits(bits, self.plan.codewords, out=self.key)
        self.corrected_bits = corrected
        self.round_trips = round_trips
        self.state = State.DONE
        self._next_seq += 1
        return []

    def _dropped_in_done(self, payload) -> list[int]:
        """The codewords DONE gives up (none if it ends after the counts), checked: strictly increasing, within the
        frame, at most max_dropped(), each past its last reveal round, their disclosure within max_disclosed_bits."""
        if len(payload) == _DONE.size:
            return []
        if len(payload) < _DONE.size + _COUNT.size:
            raise LdpcMessageError(f"DONE of {len(payload)} bytes, expected {_DONE.size} or more than "
                                   f"{_DONE.size + _COUNT.size}")
        (count,) = _COUNT.unpack_from(payload, _DONE.size)
        if count == 0 or len(payload) != _DONE.size + _COUNT.size + 4 * count:
            raise LdpcMessageError(f"DONE of {len(payload)} bytes giving up {count} codewords")
        if count > self.max_dropped():
            raise LdpcMessageError(f"DONE gives up {count} codewords, at most {self.max_dropped()} of "
                                   f"{self.plan.codewords}")
        which = self._codewords_in(payload, _DONE.size + _COUNT.size, "DONE")
        if np.any(self._revealed[which] < self.plan.max_reveal_rounds):
            raise LdpcMessageError("DONE gives up a codeword before its last reveal round")
        dropped = which.tolist()
        if self.disclosed_bits + self.plan.key_bits_of(dropped) > self.max_disclosed_bits:
            raise LdpcMessageError(f"DONE would disclose more than {self.max_disclosed_bits} bits")
        return dropped

