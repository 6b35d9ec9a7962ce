"""LDPC reconciliation's plan: which shipped code a frame takes, how its bits spread over the codewords, how many
positions are punctured and shortened, and how much each reveal round discloses, from the frame's length, its QBER
estimate and Bob's decoder. Bob decides it (plan()); START carries it (Plan) and Alice checks it (Plan.check).

The tables below are the operating points measured for the shipped codes (bench.reconcile, README): the first
attempt's disclosure f_start * h(Q) per key bit and the reveal step, by code family, decoder and QBER. ldpc.py runs
the protocol on a plan; this module holds no state and does no I/O.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from qkdd.bindings import ldpc as native

MAX_BITS = 1 << 30
MAX_REVEAL_ROUNDS = 16
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
# SUM_PRODUCT's first attempt and reveal step by QBER (up to), as START_LONG: no failed frame in 4-20 at n = 10^6 and
# the lowest f short of the float sum-product rescue running often (bench, 4 frames each: 8 %, start 1.08 -> f 1.090 at
# 10 Mbit/CPU-s, 1.10 -> 1.104 at 16; 5 %, 1.10 with steps 0.03 -> 1.108 at 10, 0.04 -> 1.113 at 14, 1.13 -> 1.133 at
# 18; 3 %, 1.12 -> 1.134; 2 %, 1.12 with 0.04 -> 1.155, 1.13 with 0.03 -> 1.147, 1.15 -> 1.161 and 2 frames lost).
# Above 10.5 % (the rate-0.48 code punctured 4 %; 20 frames at 11 %): 1.09 -> f 1.127 with every frame taking both
# reveal rounds (3.0 round trips, 13 Mbit/CPU-s), 1.11 -> 1.128 (2.1, 17.5), 1.12 with steps 0.04 -> 1.138.
# With check messages capped at 31 (ldpc.c), steps of 0.03 from 4.5 to 6.5 % (bench, the same 40 frames each way: 5 %,
# f 1.113 -> 1.107 at 18 -> 21 Mbit/CPU-s; 6 %, 1.102 -> 1.101).
# Below 1.75 % the high-rate codes (HIGH_RATE_CODES; bench, 40 frames each, n = 10^6: 1 %, start 1.16 with steps of
# 0.04 lost 4 frames, 1.18 -> f 1.276 with 5 codewords given up, 1.20 with 0.05 -> 1.229 and one, 1.22 -> 1.227 at a
# quarter more throughput; 1.25 %, 1.16 with 0.05 -> 1.178, 1.18 -> 1.195, 1.20 with 0.04 -> 1.218; 1.5 %, 1.16 ->
# 1.173, 1.18 -> 1.185; 1.75 %, 1.16 -> 1.164).
START_LONG_SPA = ((0.0115, 1.20, 0.05), (0.0175, 1.16, 0.05), (0.025, 1.15, 0.04), (0.045, 1.12, 0.04),
                  (0.065, 1.10, 0.03), (0.105, 1.09, 0.03), (0.5, 1.11, 0.03))
# A sum-product code punctured or shortened more than this is too far from its rate: min-sum's codes then (at 1 %
# QBER the rate-0.84 code punctured 7 % lost every frame).
SPA_MAX_PUNCTURED_FRACTION = 0.045
# Below SPA_MIN_QBER, min-sum: the rate-0.917 code would serve 0.8-0.9 % (bench, 40 frames: f 1.306 / 1.315 with
# min-sum at 0.8 %, 1.260 / 1.274 at 0.9 %), too little for the throughput it costs (15-26 against 16-26 Mbit/CPU-s
# and more round trips) and for a codeword of a few hundred errors, whose needed disclosure spreads wider.
SPA_MIN_QBER = 0.01
# The sum-product set's codes of 192 base columns (native/tools/ldpc_codes.py LP_CHOSEN: column degrees by linear
# programming on the int8 decoder's density evolution, Z = 256, n = 49 152) replace its codes of the same rates in the
# sum-product decoder's plans: per-codeword median f 1.100 against 1.121 at rate 0.844 and 1.079 against 1.101 at 0.771
# (576 codewords each); per frame (bench.reconcile, n = 10^6, the same 100 frames each way, none lost) f 1.166 ->
# 1.160 at 2 % QBER, 1.137 -> 1.127 at 3 %, 1.147 -> 1.129 at 3.5 %, alike at 4 %. They stay out of min-sum's
# borrowed codes, which were measured on the older ones. An older Alice refuses a START naming them.
SPA_SUPERSEDED = {20: 38, 22: 39}
LP_CODES = frozenset(SPA_SUPERSEDED.values())
# The sum-product set's codes of rates 0.917 and 0.885 (HIGH_RATE_CHOSEN in native/tools/ldpc_codes.py: 192 base
# columns, Z = 256, n = 49 152; per-codeword median f 1.160 and 1.118, 192 codewords each) serve its plans from 1 %
# QBER, where before it fell back to min-sum's codes (f 1.26): per frame (bench.reconcile, n = 10^6, the same 40 frames
# each way, none lost) sum-product / min-sum f 1.214 / 1.261 at 1 %, 1.180 / 1.258 at 1.25 %, 1.174 / 1.257 at 1.5 %,
# 1.164 / 1.209 at 1.75 %. Min-sum does not borrow them either (SPA_ONLY_CODES).
HIGH_RATE_CODES = frozenset({40, 41})
# Frames that split into at least MIN_CODEWORDS_TO_GIVE_UP of them take, for the sum-product decoder from SPA_MIN_QBER
# up, the Z = 1024 lifts of the four codes of 192 base columns and Z = 2048 lifts of the rate-0.8125 and 0.729 codes
# (XL_CODES, n = XL_CODEWORD_BITS = 196 608; native/tools/ldpc_codes.py XL_CODEWORD_BITS, XL_BP_ROWS): their
# per-codeword f spreads far less (p90 0.03-0.04 lower, median 0.01-0.02), so the first attempt starts lower and fewer
# codewords need a reveal. They serve up to
# XL_MAX_QBER; above, and for shorter frames, the codes of 49 152 bits. Above it AUTO takes the sum-product decoder on
# every frame, also where the CPU limits the link, and the XL codes decode a third slower per bit: at 4.5 % they gave
# f 1.116 against 1.121 at 7.4 against 26.6 Mbit/CPU-s (bench, 20 frames of 2*10^6 bits, start 1.09 with steps 0.02).
# A frame of fewer such codewords could not give one up (ldpc.py) and adapts its rate coarsely: a frame of 10^6 bits
# at 2 % QBER splits into six codewords of 166 667 key bits, each punctured 2.2 % at a start of 1.12 h(Q), and reached
# f 1.132 against 1.121 for frames of 2*10^6 bits (eleven codewords punctured 1 %; bench, start 1.12 with steps of
# 0.03, 40 and 20 frames; the codes of 49 152 bits: 1.156). Eight codewords fit frames from about 1.3*10^6 bits (each
# carries fewer key bits than its length), all from 1 572 864 (eight whole ones): at 1.4*10^6 bits, 40 frames each, f
# 1.135 against 1.158 at 2.5 % and 1.104 against 1.129 at 3.25 %, eight codewords each.
MIN_CODEWORDS_TO_GIVE_UP = 8
XL_CODEWORD_BITS = 196608
XL_CODES = frozenset(c.index for c in native.codes() if c.n_bits == XL_CODEWORD_BITS)   # 42-47
XL_MAX_QBER = 0.04
# The first attempt and reveal step by QBER (up to), as START_LONG_SPA: bench.reconcile, n = 2*10^6, 20 frames each,
# none lost; f and Mbit/CPU-s, the start chosen first: 1 %, 1.18 with steps of 0.05 -> 1.207 at 13.8, 1.16 with 0.04
# -> 1.196 at 9.8 (2.9 round trips); 1.25 %, 1.15 with 0.04 -> 1.158 at 17.9, 1.14 with 0.03 -> 1.154 at 13.1, 1.16
# -> 1.165; 1.5 %, 1.14 -> 1.151 at 14.0, 1.12 -> 1.148 at 9.4; 1.75 %, 1.12 -> 1.129, 1.10 -> 1.124 at 9.2; 2 %,
# 1.12 -> 1.121 at 18.5, 1.10 -> 1.111 at 11.7; 2.5 %, 1.12 -> 1.128 at 16.6, 1.10 -> 1.126 at 11.3; 3 %, 1.10 ->
# 1.106 at 13.6, 1.09 with 0.02 -> 1.100 at 9.1; 3.5 %, 1.09 with 0.02 -> 1.091 at 14.3, 1.10 -> 1.110. Then these
# starts against the codes of 49 152 bits on the same frames (f, Mbit/CPU-s): 1.6*10^6 bits, 20 frames: 1 % 1.212 /
# 1.217 at 13.4 / 18.1, 1.5 % 1.160 / 1.175 at 9.3 / 16.9, 2 % 1.123 / 1.157 (one frame lost) at 15.4 / 17.0, 3 %
# 1.111 / 1.125 at 11.7 / 18.0; 4*10^6 bits, 8 frames: 1.25 % 1.159 / 1.177, 1.75 % 1.122 / 1.164, 2.5 % 1.126 /
# 1.159, 3.5 % 1.092 / 1.131, at 13.5-17.7 / 16.1-23.2. 2*10^6 bits, 20 frames: 3.75 %, 1.09 with steps of 0.02 ->
# 1.097 / 1.126 at 10.6 / 25.2; 4 % (the rate-0.729 code), 1.10 with 0.03 -> 1.111 / 1.126 at 15.9 / 24.2, 1.09 with
# 0.02 -> 1.106 at 11.3. The sum-product decoder serves below 4 % only where the link has CPU to spare (AUTO).
START_XL_SPA = ((0.0115, 1.18, 0.05), (0.014, 1.15, 0.04), (0.016, 1.14, 0.03), (0.019, 1.12, 0.03),
                (0.0275, 1.12, 0.03), (0.0325, 1.10, 0.03), (0.0385, 1.09, 0.02), (0.5, 1.10, 0.03))
SPA_ONLY_CODES = LP_CODES | HIGH_RATE_CODES | XL_CODES
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
SPA_SMALL_LIFT, SPA_SMALL_CODEWORD_BITS, SPA_SMALL_LIFT_MIN_QBER = 128, 12288, 0.055
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
# So AUTO takes SUM_PRODUCT below 4 % too, from SPA_MIN_QBER up, where the link has CPU to spare (`spare_cpu`: Bob's
# engine found no device frame waiting behind the one it starts, qkdd.link.engine): the CPU then waits for photons, and
# a link limited by its photons, as most are, gains the 0.05-0.07 h(Q) (at 3 % QBER 0.013 of every sifted bit). With
# frames waiting, post-processing is what limits the link, and AUTO keeps to min-sum there.
AUTO_SUM_PRODUCT_ABOVE = 0.04


def decoder_for(decoder: str, qber_estimate: float, spare_cpu: bool = False) -> str:
    """The decoder (MIN_SUM or SUM_PRODUCT) that `decoder` names for a frame at this QBER estimate; for AUTO, also by
    whether the link has CPU to spare (above)."""
    if decoder not in DECODERS:
        raise ValueError(f"LDPC decoder {decoder!r}: must be one of {DECODERS}")
    if decoder != AUTO:
        return decoder
    if qber_estimate > AUTO_SUM_PRODUCT_ABOVE or (spare_cpu and qber_estimate >= SPA_MIN_QBER):
        return SUM_PRODUCT
    return MIN_SUM


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
         max_reveal_rounds: int | None = None, decoder: str = DEFAULT_DECODER, borrow_codes: bool = True,
         xl_codes: bool = True) -> Plan:
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
    decoder SUM_PRODUCT: the codes of that ensemble (and START_LONG_SPA) first, up to XL_MAX_QBER their codes of
    196 608 bits (XL_CODES, START_XL_SPA) before them where the frame splits into at least MIN_CODEWORDS_TO_GIVE_UP
    of those, unless not xl_codes; where none fits, as MIN_SUM.
    decoder MIN_SUM with borrow_codes: that ensemble's codes (and START_LONG_BORROWED) in the QBER ranges listed
    there, where one fits; otherwise (and without borrow_codes, the plan before they were borrowed) its own."""
    decoder = decoder_for(decoder, qber_estimate)
    starts = None
    if decoder == SUM_PRODUCT and qber_estimate >= SPA_MIN_QBER:
        starts = START_LONG_SPA
    elif decoder == MIN_SUM and borrow_codes and (row := borrowed(qber_estimate)) is not None:
        starts = ((0.5, row[2], row[3]),)

    def sum_product_codes(table: tuple, max_extra_f: float = SPA_MAX_EXTRA_F, **which) -> Plan:
        return _plan(n_bits, qber_estimate, f_start, reveal_step_f, max_reveal_rounds, table,
                     native.ENSEMBLE_SUM_PRODUCT, SPA_MAX_PUNCTURED_FRACTION, SPA_MAX_SHORTENED_FRACTION, max_extra_f,
                     **which)

    if starts is START_LONG_SPA and xl_codes and n_bits >= LONG_FRAME_BITS and qber_estimate <= XL_MAX_QBER:
        try:
            xl = sum_product_codes(START_XL_SPA, codeword_bits=XL_CODEWORD_BITS)
            if xl.codewords >= MIN_CODEWORDS_TO_GIVE_UP:
                return xl
        except ValueError:
            pass    # no XL code fits this QBER (or the estimate is out of range: raised below)
    if starts is not None and n_bits >= LONG_FRAME_BITS:
        try:
            return sum_product_codes(starts, SPA_MAX_EXTRA_F if decoder == SUM_PRODUCT else 0.0,
                                     excluded=frozenset(SPA_SUPERSEDED) if decoder == SUM_PRODUCT else SPA_ONLY_CODES)
        except ValueError:
            if not 0.0 < qber_estimate < 0.5:
                raise
        if decoder == SUM_PRODUCT and qber_estimate >= SPA_SMALL_LIFT_MIN_QBER:
            try:
                return sum_product_codes(START_SMALL_LIFT_SPA, codeword_bits=SPA_SMALL_CODEWORD_BITS)
            except ValueError:
                pass
    return _plan(n_bits, qber_estimate, f_start, reveal_step_f, max_reveal_rounds, START_LONG, native.ENSEMBLE_MIN_SUM)


def borrowed(qber_estimate: float) -> tuple | None:
    """The row of START_LONG_BORROWED whose QBER range holds this estimate, if any."""
    return next((row for row in START_LONG_BORROWED if row[0] <= qber_estimate <= row[1]), None)


def _plan(n_bits: int, qber_estimate: float, f_start: float | None, reveal_step_f: float | None,
          max_reveal_rounds: int | None, starts: tuple, ensemble: int, max_punctured: float = MAX_PUNCTURED_FRACTION,
          max_shortened: float = 1.0, max_extra_f: float = 0.0, codeword_bits: int | None = None,
          excluded: frozenset = frozenset()) -> Plan:
    """plan() within one code set, less the `excluded` code indices. A code whose puncturing would exceed
    max_punctured is passed over, or with max_extra_f > 0 punctured at the limit where that adds at most max_extra_f
    h(Q) to the first attempt (codes needing no such addition first, then the least added). `codeword_bits`: only codes
    of that length (default: the long codes, LONG_CODEWORD_BITS, for long frames; Z = 64 for short ones)."""
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
    family = (lambda c: c.n_bits == (codeword_bits or LONG_CODEWORD_BITS)) if long else (lambda c: c.z == 64)
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
