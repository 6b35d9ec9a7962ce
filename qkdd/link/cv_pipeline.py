"""One GG02 (cvqkd) frame's post-processing at one end of a link, as a sans-IO state machine (both roles,
one class), with the same actions as the BB84 pipeline (qkdd.link.pipeline) so the link engine runs both.

Theory of operation
-------------------
Bob's device yields his detector volts, quadrature choices and the frame's shot-noise calibration; Alice's
her quadratures. Leverrier, Grosshans & Grangier, PRA 81, 062343 (2010), Sec. II, in reverse reconciliation:
 1. START (Bob): his quadrature choices (public in GG02), his detector's efficiency and calibrated electronic
    noise, and a fresh seed whose keyed permutation (qkd_prng.h) names the m symbols disclosed for parameter
    estimation.
 2. REVEAL (Alice): her modulation variance and her values at those symbols.
 3. RECONCILE (Bob): t_hat and sigma2_hat (qkdd.protocols.cvqkd_finite.estimate), and, unless the bound
    at the worst case (T over [T_min, T_max], xi_max) leaves no key (ESTIMATION abort) or the SNR is below
    every code, the code and the 8-D reconciliation of the other symbols (qkdd.postprocess.cv_reconciliation):
    per block of 8 values the unit octonion m and |y|, per codeword the syndrome of his fresh bits.
 4. DECODED (Alice): which codewords she decoded; the others are dropped at both ends.
 5. Verification as BB84: Bob announces the polynomial hash of his bits (the key), Alice checks and, with
    the finite-size length l = kept bits - leak - n chi_BE(T_min, xi_max) - n Delta(n), announces the
    Toeplitz seed and the key ids (KEYS) exactly as the BB84 pipeline does; two-phase store the same.

States and transitions (anything else aborts the frame with PROTOCOL; an ABORT part ends it at once):

    role   state            parts received                  actions                           next
    bob    START            start()                         send CV(START)                    AWAIT_REVEAL
    bob    AWAIT_REVEAL     CV(REVEAL)                      send CV(RECONCILE) (or ABORT)     AWAIT_DECODED
    bob    AWAIT_DECODED    CV(DECODED)                     send VERIFY(ANNOUNCE)             AWAIT_SEED
    bob    AWAIT_SEED       VERIFY(RESULT)+AMPLIFY+KEYS     store PENDING; send AMPLIFY(ACK)  AWAIT_COMMIT
    bob    AWAIT_COMMIT     COMMIT                          commit; finished                  DONE
    alice  AWAIT_START      CV(START)                       send CV(REVEAL)                   AWAIT_RECONCILE
    alice  AWAIT_RECONCILE  CV(RECONCILE)                   decode; send CV(DECODED)          AWAIT_VERIFY
    alice  AWAIT_VERIFY     VERIFY(ANNOUNCE)                send VERIFY(RESULT)+AMPLIFY+KEYS  AWAIT_ACK
                                                            (or ABORT: VERIFICATION, NO_KEY)
    alice  AWAIT_ACK        AMPLIFY(ACK)                    store PENDING, commit; send COMMIT DONE

CV messages (Step.CV parts) use the post-processing header (qkdd.postprocess.wire), payloads little endian:

    START      u32 symbols | u8 detection (0 hom, 1 het) | 7 zero | f64 eta | f64 v_el | u32 pe symbols |
               32-byte seed | symbols x u8 quadrature choices (homodyne only)
    REVEAL     f64 V_A | u32 count | count x f32 (Alice's values at the disclosed symbols, Bob's order)
    RECONCILE  f64 t_hat | f64 sigma2_hat | u32 samples | u16 code | u16 zero | u32 codewords |
               blocks x f32 |y| | blocks x 8 f32 m | codewords x m_bits syndrome bits (packed, LSB first)
    DECODED    u32 codewords | ceil(codewords/8) bytes bitmap (LSB first)
"""
from __future__ import annotations

import math
import struct
import time
from typing import Callable

import numpy as np

from qkdd.bindings import NativeError, ldpc
from qkdd.bindings import bits as bitops
from qkdd.hal.base import RawFrame
from qkdd.link import linkmsg
from qkdd.link.actions import Action, Commit, Finished, StorePending
from qkdd.link.envelope import EnvelopeError, Step
from qkdd.link.frame_steps import ALICE, BOB, FrameSteps
from qkdd.link.linkmsg import AbortReason, LinkMessageError
from qkdd.link.pipeline import PipelineSettings
from qkdd.postprocess import amplification, cv_reconciliation, randomness, verification, wire
from qkdd.postprocess.wire import PeerMessageError
from qkdd.protocols import cvqkd_finite
from qkdd.protocols.cvqkd import DETECTIONS, CvParams

START, AWAIT_REVEAL, AWAIT_DECODED, AWAIT_SEED, AWAIT_COMMIT = (
    "START", "AWAIT_REVEAL", "AWAIT_DECODED", "AWAIT_SEED", "AWAIT_COMMIT")
AWAIT_START, AWAIT_RECONCILE, AWAIT_VERIFY, AWAIT_ACK, DONE = (
    "AWAIT_START", "AWAIT_RECONCILE", "AWAIT_VERIFY", "AWAIT_ACK", "DONE")
EXPECTED: dict[tuple[str, str], tuple[Step, ...]] = {
    (BOB, AWAIT_REVEAL): (Step.CV,),
    (BOB, AWAIT_DECODED): (Step.CV,),
    (BOB, AWAIT_SEED): (Step.VERIFY, Step.AMPLIFY, Step.KEYS),
    (BOB, AWAIT_COMMIT): (Step.COMMIT,),
    (ALICE, AWAIT_START): (Step.CV,),
    (ALICE, AWAIT_RECONCILE): (Step.CV,),
    (ALICE, AWAIT_VERIFY): (Step.VERIFY,),
    (ALICE, AWAIT_ACK): (Step.AMPLIFY,),
}
CV_START, CV_REVEAL, CV_RECONCILE, CV_DECODED = 0x71, 0x72, 0x73, 0x74
KIND_OF_STATE = {(ALICE, AWAIT_START): CV_START, (BOB, AWAIT_REVEAL): CV_REVEAL,
                 (ALICE, AWAIT_RECONCILE): CV_RECONCILE, (BOB, AWAIT_DECODED): CV_DECODED}
PE_FRACTION = 0.5
SEED_BYTES = ldpc.SEED_BYTES
_START = struct.Struct(f"<IB7xddI{SEED_BYTES}s")
_REVEAL = struct.Struct("<dI")
_RECONCILE = struct.Struct("<ddIHxxI")
_COUNT = struct.Struct("<I")
MAX_SYMBOLS = 1 << 24
_PEER_ERRORS = (PeerMessageError, LinkMessageError, EnvelopeError, NativeError,
                verification.VerificationStateError, amplification.AmplificationStateError, ValueError)


def _fresh_bits(count: int) -> np.ndarray:
    raw = np.frombuffer(randomness.fresh_bytes((count + 7) // 8), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:count].copy()


class CvFramePipeline(FrameSteps):
    """One end of one GG02 frame's post-processing (the interface of qkdd.link.pipeline.FramePipeline)."""

    def __init__(self, role: str, frame: RawFrame, settings: PipelineSettings = PipelineSettings(), *,
                 gate=None, decoy=None, clock: Callable[[], float] = time.time, auth_pool=None):
        super().__init__(role, frame, settings, START if role == BOB else AWAIT_START, clock)
        if (role == ALICE and frame.cv_alice is None) or (role == BOB and frame.cv_bob is None):
            raise ValueError(f"{role} needs a cvqkd frame of its side")
        if settings.transcript_auth:
            raise ValueError('cvqkd links authenticate with auth = "pq" (transcript tags are BB84-only)')
        self._seq = 0
        self._params: CvParams | None = None
        self._key_mask: np.ndarray | None = None
        self._bits: np.ndarray | None = None              # this end's reconciled bits (kept codewords)
        self._code = 0
        self._estimate: cvqkd_finite.Estimate | None = None
        self._y_key: np.ndarray | None = None

    # -- entry points ---------------------------------------------------------------------------
    def start(self) -> list[Action]:
        if self.role != BOB or self.state != START:
            raise RuntimeError(f"start() not allowed for {self.role} in state {self.state}")
        bob = self.frame.cv_bob
        symbols = int(bob.quadrature.size)
        self.outcome.detections = symbols
        shot = bob.lo_variance_v2 - bob.electronic_variance_v2
        if not shot > 0 or symbols < 1000 or bob.detection not in DETECTIONS:
            return self._abort(AbortReason.PROTOCOL, "device frame refused: bad calibration or too few symbols")
        v_el = bob.electronic_variance_v2 / shot
        seed = randomness.fresh_bytes(SEED_BYTES)
        pe_symbols = int(symbols * PE_FRACTION)
        self._bob_values = bob.volts.reshape(-1) / math.sqrt(shot)
        try:
            self._setup(symbols, bob.detection, bob.eta_det, v_el, pe_symbols, seed)
        except LinkMessageError as exc:
            return self._abort(AbortReason.PROTOCOL, f"device frame refused: {exc}")
        head = _START.pack(symbols, DETECTIONS.index(bob.detection), bob.eta_det, v_el, pe_symbols, seed)
        choices = bob.quadrature.astype(np.uint8).tobytes() if bob.detection == "homodyne" else b""
        self.state = AWAIT_REVEAL
        return [self._send((Step.CV, self._cv(CV_START, head + choices)))]

    def receive(self, record: bytes) -> list[Action]:
        if self.state == DONE:
            return []
        try:
            steps, parts = self._unwrap(record)
            if steps and steps[-1] == Step.ABORT:
                return self._peer_abort(parts)
            if steps != EXPECTED.get((self.role, self.state)):
                raise LinkMessageError(f"{self.role} in state {self.state} cannot take "
                                       f"{'+'.join(s.name for s in steps)} (are both ends cvqkd?)")
            return self._handle(parts)
        except _PEER_ERRORS as exc:
            return self._abort(AbortReason.PROTOCOL, f"peer message refused: {exc}")

    # -- shared set-up --------------------------------------------------------------------------
    def _setup(self, symbols: int, detection: str, eta: float, v_el: float, pe_symbols: int, seed: bytes) -> None:
        if not (1000 <= symbols <= MAX_SYMBOLS and 2 <= pe_symbols < symbols and 0 < eta <= 1
                and math.isfinite(v_el) and 0 <= v_el < 10):
            raise LinkMessageError("START: symbols, disclosed symbols, eta or v_el out of range")
        self._detection = detection
        self._eta, self._v_el = eta, v_el
        self._d = 1 if detection == "homodyne" else 2
        order = ldpc.permutation(seed, 0, symbols)
        disclosed = np.zeros(symbols, dtype=bool)
        disclosed[order[:pe_symbols]] = True
        self._pe_positions = np.flatnonzero(disclosed)
        self._key_mask = ~disclosed
        self._symbols = symbols
        self.outcome.sifted_bits = int(symbols - pe_symbols)

    def _values(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Per-symbol values (symbols, d) -> the flattened values of the symbols in `mask`."""
        return values.reshape(self._symbols, self._d)[mask].reshape(-1)

    def _cv(self, kind: int, payload: bytes) -> bytes:
        message = wire.encode(kind, self.frame_id, self._seq, payload)
        self._seq += 1
        return message

    def _open(self, kind: int, message, max_bytes: int) -> memoryview:
        header, payload = wire.decode(bytes(message), max_payload_bytes=max_bytes)
        if header.kind != kind or header.frame_id != self.frame_id:
            raise LinkMessageError(f"CV message of kind {header.kind:#x} for frame {header.frame_id} refused")
        return payload

    # -- Bob ------------------------------------------------------------------------------------
    def _bob_await_reveal(self, part) -> list[Action]:
        payload = self._open(CV_REVEAL, part, _REVEAL.size + 4 * self._d * MAX_SYMBOLS)
        v_a, count = _REVEAL.unpack_from(payload)
        if count != self._pe_positions.size * self._d or len(payload) != _REVEAL.size + 4 * count:
            raise LinkMessageError("REVEAL: value count does not match the disclosed symbols")
        if not (math.isfinite(v_a) and 0 < v_a < 1e4):
            raise LinkMessageError("REVEAL: modulation variance out of range")
        x_pe = np.frombuffer(payload, dtype="<f4", count=count, offset=_REVEAL.size).astype(np.float64)
        if not np.all(np.isfinite(x_pe)):
            raise LinkMessageError("REVEAL: non-finite values")
        self._params = CvParams(modulation_variance=v_a, eta_det=self._eta, electronic_noise=self._v_el,
                                detection=self._detection)
        disclosed = np.zeros(self._symbols, dtype=bool)
        disclosed[self._pe_positions] = True
        y_pe = self._values(self._bob_values, disclosed)
        est = cvqkd_finite.estimate(self._params, x_pe, y_pe, self.settings.eps_sec)
        self._estimate = est
        y_key = self._values(self._bob_values, self._key_mask)
        code = cv_reconciliation.choose_code(est.snr, values=int(y_key.size))
        if code is None:
            return self._abort(AbortReason.ESTIMATION, f"SNR {est.snr:.3f} below every LDPC code's threshold")
        info = cv_reconciliation.code_info(code)
        words = y_key.size // info.n_bits
        if words == 0:
            return self._abort(AbortReason.ESTIMATION, "fewer key values than one codeword")
        # the bound if every codeword decodes: no key then means none at all (the early abort)
        predicted = cvqkd_finite.key_length(self._params, est, words * info.n_bits // self._d,
                                            words * info.n_bits, words * info.m_bits, self.settings.eps_sec,
                                            self.settings.eps_sec)
        if predicted.abort:
            return self._abort(AbortReason.ESTIMATION, predicted.abort_reason or "no key")
        used = words * info.n_bits
        self._code, self._words = code, words
        self._bits = _fresh_bits(used)
        m, norms = cv_reconciliation.bob_map(y_key[:used], self._bits)
        syndromes = cv_reconciliation.syndromes(code, self._bits)
        head = _RECONCILE.pack(est.t_hat, est.sigma2_hat, est.samples, code, words)
        body = head + norms.astype("<f4").tobytes() + m.astype("<f4").tobytes() \
            + np.packbits(syndromes.reshape(-1), bitorder="little").tobytes()
        self.state = AWAIT_DECODED
        return [self._send((Step.CV, self._cv(CV_RECONCILE, body)))]

    def _bob_await_decoded(self, part) -> list[Action]:
        payload = self._open(CV_DECODED, part, 4 + (self._words + 7) // 8)
        ok = self._decode_bitmap(payload)
        info = cv_reconciliation.code_info(self._code)
        self._bits = self._bits.reshape(self._words, info.n_bits)[ok].reshape(-1)
        self._account(int(ok.sum()))
        if self._bits.size == 0:
            return self._abort(AbortReason.NO_KEY, "no codeword decoded")
        words = bitops.pack(self._bits)
        self._verify = verification.Verification(verification.ANNOUNCER, self.frame_id, words, int(self._bits.size),
                                                 verification.keys_for(self.settings.eps_cor, int(self._bits.size)))
        (announce,) = self._verify.start()
        self.state = AWAIT_SEED
        return [self._send((Step.VERIFY, announce))]

    def _bob_await_seed(self, result, seed_announce, keys) -> list[Action]:
        self._verify.receive(bytes(result))
        if not self._verify.result.matched:
            raise LinkMessageError("verification failed but the peer went on")
        seed, count, key_bits, expires_at = linkmsg.decode_keys(keys)
        self._check_expiry(expires_at)
        ack = self._receive_seed(bitops.pack(self._bits), int(self._bits.size), seed_announce, count, key_bits)
        keys_out = self._key_material(seed, count, key_bits)
        self._stored = True
        self.state = AWAIT_COMMIT
        return [StorePending(self.frame_id, keys_out, [i % 2 == 1 for i in range(count)], expires_at, None),
                self._send((Step.AMPLIFY, ack))]

    def _bob_await_commit(self, _commit) -> list[Action]:
        self.state = DONE
        return [Commit(self.frame_id), Finished(self.outcome)]

    # -- Alice ----------------------------------------------------------------------------------
    def _alice_await_start(self, part) -> list[Action]:
        payload = self._open(CV_START, part, _START.size + MAX_SYMBOLS)
        symbols, detection_code, eta, v_el, pe_symbols, seed = _START.unpack_from(payload)
        if detection_code >= len(DETECTIONS):
            raise LinkMessageError("START: unknown detection")
        detection = DETECTIONS[detection_code]
        alice = self.frame.cv_alice
        if symbols != alice.values.shape[0]:
            raise LinkMessageError(f"START: {symbols} symbols, this end's frame has {alice.values.shape[0]}")
        self._setup(symbols, detection, eta, v_el, pe_symbols, seed)
        self.outcome.detections = symbols
        if detection == "homodyne":
            if len(payload) != _START.size + symbols:
                raise LinkMessageError("START: quadrature choices do not match the symbol count")
            choice = np.frombuffer(payload, dtype=np.uint8, count=symbols, offset=_START.size)
            if np.any(choice > 1):
                raise LinkMessageError("START: quadrature choice out of range")
            self._alice_values = alice.values[np.arange(symbols), choice]
        else:
            if len(payload) != _START.size:
                raise LinkMessageError("START: heterodyne carries no quadrature choices")
            self._alice_values = alice.values.reshape(-1)
        self._params = CvParams(modulation_variance=alice.modulation_variance, eta_det=eta, electronic_noise=v_el,
                                detection=detection)
        disclosed = np.zeros(symbols, dtype=bool)
        disclosed[self._pe_positions] = True
        x_pe = self._values(self._alice_values, disclosed).astype("<f4")
        body = _REVEAL.pack(alice.modulation_variance, x_pe.size) + x_pe.tobytes()
        self.state = AWAIT_RECONCILE
        return [self._send((Step.CV, self._cv(CV_REVEAL, body)))]

    def _alice_await_reconcile(self, part) -> list[Action]:
        payload = self._open(CV_RECONCILE, part, _RECONCILE.size + 40 * MAX_SYMBOLS)
        t_hat, sigma2_hat, samples, code, words = _RECONCILE.unpack_from(payload)
        if code not in cv_reconciliation.CODES:
            raise LinkMessageError(f"RECONCILE: code {code} is not a reconciliation code")
        info = cv_reconciliation.code_info(code)
        x_key = self._values(self._alice_values, self._key_mask)
        if not 1 <= words <= x_key.size // info.n_bits or samples != self._pe_positions.size * self._d:
            raise LinkMessageError("RECONCILE: codeword or sample count does not match the frame")
        blocks = words * info.n_bits // cv_reconciliation.DIMENSION
        syndrome_bytes = (words * info.m_bits + 7) // 8
        if len(payload) != _RECONCILE.size + 4 * blocks * 9 + syndrome_bytes:
            raise LinkMessageError("RECONCILE: length does not match its codewords")
        offset = _RECONCILE.size
        norms = np.frombuffer(payload, dtype="<f4", count=blocks, offset=offset).astype(np.float64)
        m = np.frombuffer(payload, dtype="<f4", count=8 * blocks, offset=offset + 4 * blocks)
        m = m.astype(np.float64).reshape(blocks, 8)
        packed = np.frombuffer(payload, dtype=np.uint8, count=syndrome_bytes, offset=offset + 36 * blocks)
        syndromes = np.unpackbits(packed, bitorder="little")[:words * info.m_bits].reshape(words, info.m_bits)
        if not (np.all(np.isfinite(norms)) and np.all(np.isfinite(m))):
            raise LinkMessageError("RECONCILE: non-finite values")
        self._estimate = cvqkd_finite.estimate_from(self._params, t_hat, sigma2_hat, samples, self.settings.eps_sec)
        self._code, self._words = code, words
        a, noise_var = cv_reconciliation.conditional_model(t_hat, sigma2_hat, self._params.modulation_variance)
        llr = cv_reconciliation.alice_llr(x_key[:words * info.n_bits], m, norms, a, noise_var)
        decoded = cv_reconciliation.decode(code, llr, np.ascontiguousarray(syndromes))
        self._bits = decoded.bits.reshape(words, info.n_bits)[decoded.ok].reshape(-1)
        self._account(int(decoded.ok.sum()))
        bitmap = np.packbits(decoded.ok.astype(np.uint8), bitorder="little").tobytes()
        self.state = AWAIT_VERIFY
        return [self._send((Step.CV, self._cv(CV_DECODED, _COUNT.pack(words) + bitmap)))]

    def _alice_await_verify(self, announce) -> list[Action]:
        n = int(self._bits.size)
        if n == 0:
            raise LinkMessageError("verification announced for a frame with no decoded codeword")
        words = bitops.pack(self._bits)
        self._verify = verification.Verification(verification.CHECKER, self.frame_id, words, n)
        (result_msg,) = self._verify.receive(bytes(announce))
        if not self._verify.result.matched:
            return self._abort(AbortReason.VERIFICATION, "verification hashes differ: frame discarded",
                               before=[(Step.VERIFY, result_msg)])
        leak_bits = self.outcome.disclosed_bits + self._verify.result.leaked_bits
        bound = cvqkd_finite.key_length(self._params, self._estimate, n // self._d, n, leak_bits,
                                        self.settings.eps_sec, self.settings.eps_sec)
        self.outcome.key_length_bits = bound.key_length_bits
        key_bits = self.settings.key_bits
        count = 0 if bound.abort else min(bound.key_length_bits, n) // key_bits
        if count == 0:
            text = bound.abort_reason or f"key length {bound.key_length_bits} bits is less than one key"
            return self._abort(AbortReason.NO_KEY, text, before=[(Step.VERIFY, result_msg)])
        seed_announce = self._announce_keys(words, n, count, key_bits)
        self.state = AWAIT_ACK
        return [self._send((Step.VERIFY, result_msg), (Step.AMPLIFY, seed_announce),
                           (Step.KEYS, linkmsg.encode_keys(*self._keys)))]

    def _alice_await_ack(self, ack) -> list[Action]:
        self._amp.receive(bytes(ack))
        seed, count, key_bits, expires_at = self._keys
        keys_out = self._key_material(seed, count, key_bits)
        self._stored = True
        self.state = DONE
        return [StorePending(self.frame_id, keys_out, [i % 2 == 0 for i in range(count)], expires_at, None),
                Commit(self.frame_id), self._send((Step.COMMIT, b"")), Finished(self.outcome)]

    # -- shared ---------------------------------------------------------------------------------
    def _decode_bitmap(self, payload) -> np.ndarray:
        (words,) = _COUNT.unpack_from(payload)
        if words != self._words or len(payload) != 4 + (words + 7) // 8:
            raise LinkMessageError("DECODED: codeword count does not match RECONCILE")
        raw = np.frombuffer(payload, dtype=np.uint8, offset=4)
        return np.unpackbits(raw, bitorder="little")[:words].astype(bool)

    def _account(self, kept_words: int) -> None:
        info = cv_reconciliation.code_info(self._code)
        self.outcome.sifted_key_bits = kept_words * info.n_bits
        self.outcome.disclosed_bits = kept_words * info.m_bits
