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
discloses f_start * h(Q) per key bit and enough bits are punctured for the reveal rounds (ldpc_plan.py), and
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

import enum
import math
import struct

import numpy as np

from qkdd.bindings import bits as native_bits
from qkdd.bindings import ldpc as native
from qkdd.bindings import ldpc_bp
from qkdd.postprocess import randomness, wire
from qkdd.postprocess.ldpc_plan import (DEFAULT_DECODER, MAX_BITS, MIN_CODEWORDS_TO_GIVE_UP, SUM_PRODUCT, Plan,
                                        borrowed, decoder_for, plan)
from qkdd.postprocess.wire import PeerMessageError

SEED_BYTES = native.SEED_BYTES
# Codewords still failing after the last reveal round that Bob gives up (key bits zeroed at both ends, disclosed
# whole) rather than the frame: at most this fraction of the frame's codewords, and at least one, in frames of at
# least MIN_CODEWORDS_TO_GIVE_UP codewords (a smaller frame loses an eighth of its key or more with one, and little
# with all of it). A frame of 562 codewords of code 39 (bench.link yuan2018, 2.9 % QBER, the sum-product decoder) lost
# one frame in four or five to one or two codewords (bench, offline: 3 of 26 frames), each a 48 000-bit codeword that
# costs 0.2 % of the frame's key given up; many failing codewords mean a wrong estimate, and the frame goes. A
# codeword given up costs the disclosure its whole length: not a way to lower the starts (bench, 1 %, 40 frames of
# 10^6 bits: start 1.22 instead of 1.25 gave up 2 codewords and f 1.274 against 1.263).
MAX_DROPPED_FRACTION = 0.02      # MIN_CODEWORDS_TO_GIVE_UP: ldpc_plan (its XL codes follow it)
_START = struct.Struct(f"<QHIIIB{SEED_BYTES}s")
_DONE = struct.Struct("<QQI")
_COUNT = struct.Struct("<I")
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
SPA_UNITS_PER_NAT = 4             # as min-sum's LLRs (finer units decode worse: the int8 posteriors saturate; README)

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
                 sum_product: bool = True, decoder: str = DEFAULT_DECODER, borrow_codes: bool = True,
                 spare_cpu: bool = False, xl_codes: bool = True):
        """`sum_product`: decode a codeword every min-sum rule fails after the last reveal round with the
        sum-product decoder before giving the frame up (BP_* above). `decoder`: AUTO, MIN_SUM or SUM_PRODUCT (above).
        `borrow_codes`: whether MIN_SUM may plan from the sum-product set's codes, `xl_codes` whether SUM_PRODUCT may
        plan long frames on its codes of 196 608 bits (plan). `spare_cpu`: the link has CPU to spare, so AUTO may take
        SUM_PRODUCT at lower QBER (ldpc_plan.decoder_for)."""
        _check_key(key, n_bits)
        if not key.flags.writeable or not key.flags.c_contiguous:
            raise ValueError("Bob's key must be a writable C-contiguous array (it is corrected in place)")
        super().__init__(frame_id, n_bits)
        q = min(max(qber_estimate, 1e-4), 0.45)
        decoder = decoder_for(decoder, q, spare_cpu)
        self.plan = plan(n_bits, q, f_start, reveal_step_f, max_reveal_rounds, decoder, borrow_codes, xl_codes)
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
            self._rule = borrowed(q)[4]        # min-sum on a borrowed code: plan found q in a listed range
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

