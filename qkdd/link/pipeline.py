"""One frame's post-processing at one end of a link, as a sans-IO state machine (both roles, one class).

Theory of operation
-------------------
Raw frame in (Alice: her prepared states of the detected slots; Bob: his detections), link records out
and in (envelope.py), and finally *actions* for the caller: store keys PENDING, commit them, discard
them, report the outcome. The caller executes the actions in order (a store before the next send), so
the two-phase store holds at every crash point: Bob stores PENDING before he acknowledges the
amplification seed; Alice stores and commits only after that acknowledgement and then tells Bob to
commit. After a crash, the key store's resynchronisation (qkdd.keystore.resync) promotes keys that
both ends hold and drops keys only one end holds.

Steps (Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), Sec. II "protocol"):
 1. Sifting (qkdd.postprocess.sifting) on the frame's detections, indexed in Bob's detection order;
    Bob also sends the slot numbers (SLOTS) so Alice can pick her records of those slots.
 2. Estimation: Alice reveals all her sifted test-basis (Z) bits, Bob counts the errors per intensity
    class; both build the same decoy counts. X (the key basis, all intensities) is never revealed.
    Both ends run the finite-key bound (qkdd.protocols.bb84_finite) with the error-correction leakage
    estimated from the Z error rate, and the QBER gate on the Z error rate; either end may abort.
 3. Cascade (qkdd.postprocess.cascade) on the X-basis sifted bits; Bob corrects his copy. The exact
    X error rate is the number of corrected bits over the X length. With settings.reconciliation =
    "ldpc", LDPC reconciliation (qkdd.postprocess.ldpc) takes Cascade's place, in LDPC parts instead of
    CASCADE ones, with the same messages in the same states; both ends must be configured alike.
 4. Verification (qkdd.postprocess.verification): Bob announces a polynomial hash, Alice checks.
 5. Alice computes the key length with Lim's bound, the leakage being the parities Cascade actually
    disclosed plus the verification tag, rounds it down to whole keys, and announces a fresh Toeplitz
    seed (qkdd.postprocess.amplification) and a fresh key-id seed (KEYS). Both split the output into
    keys and derive the same key ids (linkmsg.derive_key_ids). Even-numbered keys are Alice's to
    hand out on her own, odd-numbered ones Bob's (the key store's `allocatable` partition).
    KEYS also carries the keys' expiry time, Alice's clock plus her key_expiry_s, so both ends store
    the same one whatever their clocks say; Bob refuses a time already past on his clock or later than
    his own key_expiry_s plus MAX_CLOCK_SKEW_S ahead (an absurd value, or clocks far apart).

Links with `auth` "its" or "both" (PipelineSettings.auth) also authenticate the frame's transcript with
Wegman-Carter tags from the link's authentication pool (qkdd.auth.wegman_carter): Alice's KEYS record,
Bob's ACK and Alice's COMMIT carry an AUTH part, each end checks the other's before it stores a key and
Bob checks COMMIT's before he commits (AUTH abort otherwise, Bob's pending keys discarded),
and the first `refill` bits of the amplified output go back to the pool (at the positions Alice's
authenticated AUTH part names) before the rest is split into keys. Alice refuses a frame with AUTH_POOL
when her pool cannot pay for its tags.

When the caller cannot store (the key store at capacity or failing), `store_refused()` says what to do
instead: a frame whose keys are not committed at both ends is aborted there and then (Bob: ABORT in
place of the ACK; Alice: ABORT in place of COMMIT, so Bob discards his pending keys).

States and transitions (anything else aborts the frame with PROTOCOL; an ABORT part from the peer
ends it at once):

    role   state          event / parts received            actions                        next
    bob    START          start()                           send SLOTS+SIFT(DETECTIONS)   SIFTING
    bob    SIFTING        SIFT(ANSWER)                      send SIFT(REPORT)             AWAIT_REVEAL
    bob    AWAIT_REVEAL   ESTIMATE(REVEAL)                  send ESTIMATE(ERRORS)+CASCADE(START)
                                                            (or +ABORT)                    RECONCILING
    bob    RECONCILING    CASCADE(PARITIES)                 send CASCADE(QUESTIONS), or
                                                            CASCADE(DONE)+VERIFY(ANNOUNCE) AWAIT_SEED
                          (LDPC: SYNDROMES / REVEALED in, REVEAL / DONE out, in LDPC parts)
    bob    AWAIT_SEED     VERIFY(RESULT)+AMPLIFY+KEYS[+AUTH] store PENDING; send AMPLIFY(ACK)[+AUTH]
                                                                                           AWAIT_COMMIT
    bob    AWAIT_COMMIT   COMMIT[+AUTH]                     commit; finished               DONE
    alice  AWAIT_DETECT   SLOTS+SIFT(DETECTIONS)            send SIFT(ANSWER)             AWAIT_REPORT
    alice  AWAIT_REPORT   SIFT(REPORT)                      send ESTIMATE(REVEAL)         AWAIT_ERRORS
    alice  AWAIT_ERRORS   ESTIMATE(ERRORS)+CASCADE(START)   send CASCADE(PARITIES)        RECONCILING
    alice  RECONCILING    CASCADE(QUESTIONS)                send CASCADE(PARITIES)        RECONCILING
    alice  RECONCILING    CASCADE(DONE)+VERIFY(ANNOUNCE)    send VERIFY(RESULT)+AMPLIFY+KEYS[+AUTH]
                                                                                           AWAIT_ACK
    alice  AWAIT_ACK      AMPLIFY(ACK)[+AUTH]               store PENDING, commit; send COMMIT[+AUTH];
                                                            finished                       DONE
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from qkdd.auth.pool import CHUNK_BITS, AuthPoolError, PoolDry, PositionUnavailable
from qkdd.auth.wegman_carter import AuthFailed, FrameAuthenticator
from qkdd.bindings import NativeError
from qkdd.bindings import bits as bitops
from qkdd.hal.base import RawFrame
from qkdd.link import envelope, linkmsg
from qkdd.link.actions import Action, Commit, Discard, Finished, FrameOutcome, Send, StorePending  # noqa: F401
from qkdd.link.envelope import EnvelopeError, Step
from qkdd.link.frame_steps import ALICE, BOB, MAX_CLOCK_SKEW_S, FrameSteps  # noqa: F401
from qkdd.link.linkmsg import AbortReason, LinkMessageError
from qkdd.postprocess import amplification, sifting, verification
from qkdd.postprocess.cascade import CascadeAlice, CascadeBob, CascadeError
from qkdd.postprocess.cascade_schedules import SCHEDULES as CASCADE_SCHEDULES
from qkdd.postprocess.efficiency import measured_efficiency
from qkdd.postprocess.ldpc import LdpcAlice, LdpcBob
from qkdd.postprocess.ldpc_plan import DECODERS as LDPC_DECODERS
from qkdd.postprocess.wire import PeerMessageError
from qkdd.protocols.bb84_finite import DecoyCounts, DecoySettings, Tally, finite_key_length
from qkdd.protocols.entropy import binary_entropy

# The actions (qkdd.link.actions), ALICE, BOB and MAX_CLOCK_SKEW_S (qkdd.link.frame_steps) are re-exported:
# callers import them from here.

CLASSES = linkmsg.CLASSES
Z, X = sifting.BASIS_Z, sifting.BASIS_X

START, SIFTING, AWAIT_REVEAL, RECONCILING, AWAIT_SEED, AWAIT_COMMIT = (
    "START", "SIFTING", "AWAIT_REVEAL", "RECONCILING", "AWAIT_SEED", "AWAIT_COMMIT")
AWAIT_DETECT, AWAIT_REPORT, AWAIT_ERRORS, AWAIT_ACK, DONE = (
    "AWAIT_DETECT", "AWAIT_REPORT", "AWAIT_ERRORS", "AWAIT_ACK", "DONE")

# (role, state) -> the steps the next record must carry, in order (a trailing ABORT is always allowed
# in place of the last one).
EXPECTED: dict[tuple[str, str], tuple[tuple[Step, ...], ...]] = {
    (BOB, SIFTING): ((Step.SIFT,),),
    (BOB, AWAIT_REVEAL): ((Step.ESTIMATE,),),
    (BOB, RECONCILING): ((Step.CASCADE,), (Step.LDPC,)),
    (BOB, AWAIT_SEED): ((Step.VERIFY, Step.AMPLIFY, Step.KEYS),),
    (BOB, AWAIT_COMMIT): ((Step.COMMIT,),),
    (ALICE, AWAIT_DETECT): ((Step.SLOTS, Step.SIFT),),
    (ALICE, AWAIT_REPORT): ((Step.SIFT,),),
    (ALICE, AWAIT_ERRORS): ((Step.ESTIMATE, Step.CASCADE), (Step.ESTIMATE, Step.LDPC)),
    (ALICE, RECONCILING): ((Step.CASCADE,), (Step.CASCADE, Step.VERIFY), (Step.LDPC,), (Step.LDPC, Step.VERIFY)),
    (ALICE, AWAIT_ACK): ((Step.AMPLIFY,),),
}
# With transcript authentication (auth "its" or "both"), the three records that lead to a store or a commit
# carry a tag.
EXPECTED_AUTH = {**EXPECTED,
                 (BOB, AWAIT_SEED): ((Step.VERIFY, Step.AMPLIFY, Step.KEYS, Step.AUTH),),
                 (BOB, AWAIT_COMMIT): ((Step.COMMIT, Step.AUTH),),
                 (ALICE, AWAIT_ACK): ((Step.AMPLIFY, Step.AUTH),)}
AUTH_MODES = ("pq", "its", "both")

_PEER_ERRORS = (PeerMessageError, CascadeError, LinkMessageError, EnvelopeError, NativeError,
                sifting.SiftingStateError, verification.VerificationStateError,
                amplification.AmplificationStateError)

RECONCILIATION_STEPS = {"cascade": Step.CASCADE, "ldpc": Step.LDPC}

Gate = Callable[[float], "str | None"]   # frame QBER estimate -> refusal reason, or None to go on
MAX_KEY_EXPIRY_S = 366 * 86400.0


def threshold_gate(threshold: float = 0.11) -> Gate:
    """A gate that refuses frames at or above a fixed QBER (tests; the daemon uses qber_gate.QberGate)."""
    return lambda qber: None if qber < threshold else f"QBER {qber:.4f} at or above {threshold}"


@dataclass(frozen=True)
class PipelineSettings:
    key_bits: int = 256                     # length of each stored key
    eps_sec: float = 1e-10                  # Lim's secrecy parameter
    eps_cor: float = 1e-15                  # correctness: verification tag and Lim's log2(2/eps_cor)
    f_ec_estimate: float | None = None      # leakage estimate for the early abort check only (None: what the
                                            # configured method measures at this frame length and QBER)
    cascade_schedule: str = "yan"            # ~190 round trips per frame at f ~ 1.06 ("efficient": ~1000 at 1.04)
    min_qber_estimate: float = 0.005        # floor for Cascade's block sizes
    max_key_bits_per_key: int = 8192
    max_cascade_round_trips: int = 3000     # a Cascade that asks more is refused (inconsistent answers)
    key_expiry_s: float = 86400.0           # Alice: her keys' lifetime; Bob: the longest he accepts
    reconciliation: str = "cascade"         # or "ldpc" (qkdd.postprocess.ldpc); both ends alike
    ldpc_decoder: str = "auto"              # Bob's LDPC decoder (qkdd.postprocess.ldpc_plan.DECODERS)
    ldpc_spare_cpu: bool = False            # Bob, per frame: no frame waits behind this one ("auto": decoder_for)
    auth: str = "pq"                        # "its"/"both": Wegman-Carter transcript tags (the pool is given)
    auth_refill_bits: int = 1024            # Alice: distilled bits back into the pool per frame, at most ...
    auth_pool_max_bits: int = 1 << 20       # ... up to this many bits in her pool
    chsh_eps: float = 1e-10                 # E91: failure probability of the CHSH lower bound (Alice's counts)

    @property
    def transcript_auth(self) -> bool:
        return self.auth in ("its", "both")

    def __post_init__(self) -> None:
        if self.reconciliation not in RECONCILIATION_STEPS:
            raise ValueError(f"reconciliation must be one of {sorted(RECONCILIATION_STEPS)}, "
                             f"got {self.reconciliation!r}")
        if self.ldpc_decoder not in LDPC_DECODERS:
            raise ValueError(f"ldpc_decoder must be one of {', '.join(LDPC_DECODERS)}, got {self.ldpc_decoder!r}")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}")
        if self.auth_refill_bits % CHUNK_BITS or self.auth_refill_bits < 0 or self.auth_pool_max_bits < 0:
            raise ValueError(f"auth_refill_bits must be a non-negative multiple of {CHUNK_BITS}")
        if not 1.0 <= self.key_expiry_s <= MAX_KEY_EXPIRY_S:
            raise ValueError(f"key_expiry_s must lie in [1, {MAX_KEY_EXPIRY_S:g}]")
        if self.key_bits % 64 or not 64 <= self.key_bits <= self.max_key_bits_per_key:
            raise ValueError(f"key_bits must be a multiple of 64 in [64, {self.max_key_bits_per_key}]")
        if not (linkmsg.MIN_EPS <= self.eps_sec < 1 and linkmsg.MIN_EPS <= self.eps_cor < 1):
            # the peer refuses a REVEAL announcing less (linkmsg.MIN_EPS): every frame would abort
            raise ValueError(f"eps_sec and eps_cor must lie in [{linkmsg.MIN_EPS:g}, 1)")
        if not linkmsg.MIN_EPS <= self.chsh_eps < 1:
            raise ValueError(f"chsh_eps must lie in [{linkmsg.MIN_EPS:g}, 1)")
        if self.cascade_schedule not in CASCADE_SCHEDULES:
            raise ValueError(f"cascade_schedule must be one of {', '.join(CASCADE_SCHEDULES)}, "
                             f"got {self.cascade_schedule!r}")
        if self.f_ec_estimate is not None and not 1.0 <= self.f_ec_estimate <= 10.0:
            raise ValueError(f"f_ec_estimate must lie in [1, 10], got {self.f_ec_estimate!r}")

    def early_abort_efficiency(self, key_bits: int, qber: float) -> float:
        """f for the check before reconciliation: f_ec_estimate if set, else what the configured method (the
        Cascade schedule, or LDPC with its default decoder: Alice does not know Bob's) measures on a frame of
        `key_bits` at this QBER (qkdd.postprocess.efficiency)."""
        if self.f_ec_estimate is not None:
            return self.f_ec_estimate
        method = "ldpc" if self.reconciliation == "ldpc" else self.cascade_schedule
        return measured_efficiency(method, max(key_bits, 1), min(max(qber, 0.0), 0.49))


class FramePipeline(FrameSteps):
    """One end of one frame's post-processing. Alice needs the decoy settings of her source."""

    NEEDS_DECOY = True          # protocols without a decoy-state source (qkdd.link.e91_pipeline) set False

    def __init__(self, role: str, frame: RawFrame, settings: PipelineSettings = PipelineSettings(), *,
                 gate: Gate | None = None, decoy: DecoySettings | None = None, clock: Callable[[], float] = time.time,
                 auth_pool=None):
        super().__init__(role, frame, settings, START if role == BOB else AWAIT_DETECT, clock)
        if role == ALICE and (frame.alice is None or (decoy is None and self.NEEDS_DECOY)):
            raise ValueError("alice needs a frame with Alice's records and the decoy settings")
        if role == BOB and frame.bob is None:
            raise ValueError("bob needs a frame with Bob's detections")
        self._gate = gate or threshold_gate()
        self._decoy = decoy
        self._sift: sifting.Sifting | None = None
        self._counts: DecoyCounts | None = None
        self._refusal: tuple[AbortReason, str] | None = None
        self._key: np.ndarray | None = None
        self._n_key_bits = 0
        self._cascade = None                # Cascade or LDPC, both ends' objects share the interface
        self._recon_step = RECONCILIATION_STEPS[settings.reconciliation]
        self._auth: FrameAuthenticator | None = None
        self._expected = EXPECTED
        if settings.transcript_auth:
            if auth_pool is None:
                raise ValueError(f"auth {settings.auth!r} needs the link's authentication pool")
            self._auth = FrameAuthenticator(role, frame.frame_id, auth_pool)
            self._expected = EXPECTED_AUTH
        self._auth_pool = auth_pool
        self._refill_bits = 0

    # -- entry points ---------------------------------------------------------------------------
    def start(self) -> list[Action]:
        """Bob: announce the frame's detections."""
        if self.role != BOB or self.state != START:
            raise RuntimeError(f"start() not allowed for {self.role} in state {self.state}")
        det = self.frame.bob
        count = det.count
        self.outcome.detections = count
        try:
            local = sifting.BobDetections.every_slot(np.ascontiguousarray(det.bases, dtype=np.uint8),
                                                     np.ascontiguousarray(det.outcomes, dtype=np.uint8))
            self._sift = sifting.Sifting(sifting.BOB, self.frame_id, local, CLASSES, message_parts=True)
            (detections,) = self._sift.start()
        except (ValueError, NativeError) as exc:
            return self._abort(AbortReason.PROTOCOL, f"device frame refused: {exc}")
        self.state = SIFTING
        return [self._send((Step.SLOTS, linkmsg.detections_slots_part(det)), (Step.SIFT, detections))]

    def receive(self, record: bytes) -> list[Action]:
        """Take one record from the peer; returns the actions (sends, stores, outcome) in order."""
        if self.state == DONE:
            return []
        try:
            steps, parts = self._unwrap(record)
            if steps and steps[-1] == Step.ABORT:
                return self._peer_abort(parts)
            if steps not in self._expected.get((self.role, self.state), ()):
                if steps in (EXPECTED_AUTH if self._auth is None else EXPECTED).get((self.role, self.state), ()):
                    raise LinkMessageError(f'the ends\' auth settings differ: this end has "{self.settings.auth}", '
                                           "the peer's records say otherwise (set auth alike at both ends)")
                raise LinkMessageError(f"{self.role} in state {self.state} cannot take "
                                       f"{'+'.join(s.name for s in steps)}")
            own = RECONCILIATION_STEPS[self.settings.reconciliation]
            if any(s in RECONCILIATION_STEPS.values() and s != own for s in steps):
                raise LinkMessageError(f"the peer reconciles with {'+'.join(s.name for s in steps)}, this end is "
                                       f"configured for reconciliation = {self.settings.reconciliation!r}")
            if self._auth is not None and steps[-1] != Step.AUTH:
                self._auth.record(ALICE if self.role == BOB else BOB, record)
            return self._handle(parts)
        except AuthFailed as exc:
            return self._abort(AbortReason.AUTH, f"transcript authentication failed: {exc}")
        except PositionUnavailable as exc:
            return self._abort(AbortReason.AUTH, f"authentication pool refill refused: {exc}")
        except AuthPoolError as exc:
            return self._abort(AbortReason.AUTH, f"authentication pool: {exc}")
        except _PEER_ERRORS as exc:
            return self._abort(AbortReason.PROTOCOL, f"peer message refused: {exc}")

    # -- Bob ------------------------------------------------------------------------------------
    def _bob_sifting(self, answer) -> list[Action]:
        (report,) = self._sift.receive(answer)
        self.state = AWAIT_REVEAL
        return [self._send((Step.SIFT, report))]

    def _bob_await_reveal(self, reveal) -> list[Action]:
        result = self._sift.result
        own = [result.key_bits(c, Z) for c in range(CLASSES)]
        decoy, pulses, eps_sec, eps_cor, revealed = linkmsg.decode_reveal(reveal, [n for _, n in own])
        self._decoy = decoy
        self.settings = PipelineSettings(**{**self.settings.__dict__, "eps_sec": eps_sec, "eps_cor": eps_cor})
        errors = [bitops.popcount(np.bitwise_xor(a[:bitops.words_for_bits(n)], b[:bitops.words_for_bits(n)]))
                  if n else 0 for (a, n), (b, _) in zip(revealed, own)]
        self.outcome.pulses_sent = int(pulses)
        self._estimate(errors)
        parts: list[tuple[Step, bytes]] = [(Step.ESTIMATE, linkmsg.encode_errors(errors))]
        if self._refusal is not None:
            reason, text = self._refusal
            return self._abort(reason, text, before=parts)
        parts.append((self._recon_step, self._start_reconciliation_bob()))
        self.state = RECONCILING
        return [self._send(*parts)]

    def _start_reconciliation_bob(self) -> bytes:
        """Bob's first reconciliation message on the frame's key bits (Cascade or LDPC)."""
        qber = max(self.outcome.qber_estimate, self.settings.min_qber_estimate)
        if self.settings.reconciliation == "ldpc":
            self._cascade = LdpcBob(self._key, self._n_key_bits, self.frame_id, qber,
                                    decoder=self.settings.ldpc_decoder, spare_cpu=self.settings.ldpc_spare_cpu)
        else:
            self._cascade = CascadeBob(self._key, self._n_key_bits, self.frame_id, qber,
                                       schedule=self.settings.cascade_schedule)
        return self._cascade.start()

    def _bob_reconciling(self, parities) -> list[Action]:
        (reply,) = self._cascade.receive(bytes(parities))
        if self._cascade.round_trips > self.settings.max_cascade_round_trips:
            raise LinkMessageError(f"Cascade still asking after {self._cascade.round_trips} round trips "
                                   "(inconsistent parities)")
        if not self._cascade.done:
            return [self._send((self._recon_step, reply))]
        self._record_reconciliation()
        nkeys = verification.keys_for(self.settings.eps_cor, self._n_key_bits)
        self._verify = verification.Verification(verification.ANNOUNCER, self.frame_id, self._key,
                                                 self._n_key_bits, nkeys)
        (announce,) = self._verify.start()
        self.state = AWAIT_SEED
        return [self._send((self._recon_step, reply), (Step.VERIFY, announce))]

    def _bob_await_seed(self, result, seed_announce, keys, auth=None) -> list[Action]:
        if self._auth is not None:              # nothing of this record is used before Alice's tag checks
            unsealed = envelope.encode(self.frame_id, [(Step.VERIFY, result), (Step.AMPLIFY, seed_announce),
                                                       (Step.KEYS, keys)])
            announced = self._auth.check_keys(unsealed, auth)
            self._auth.record(ALICE, envelope.encode(self.frame_id, [(Step.VERIFY, result),
                                                                     (Step.AMPLIFY, seed_announce),
                                                                     (Step.KEYS, keys), (Step.AUTH, auth)]))
            self._refill_bits = CHUNK_BITS * announced.refill_chunks
        self._verify.receive(bytes(result))
        if not self._verify.result.matched:
            raise LinkMessageError("verification failed but the peer went on")
        seed, count, key_bits, expires_at = linkmsg.decode_keys(keys)
        self._check_expiry(expires_at)
        ack = self._receive_seed(self._key, self._n_key_bits, seed_announce, count, key_bits, self._refill_bits)
        keys_out = self._split(seed, count, key_bits)
        self._stored = True
        self.state = AWAIT_COMMIT
        store = StorePending(self.frame_id, keys_out, [i % 2 == 1 for i in range(count)], expires_at,
                             self.outcome.qber)
        if self._auth is None:
            return [store, self._send((Step.AMPLIFY, ack))]
        tag = self._auth.seal_ack(envelope.encode(self.frame_id, [(Step.AMPLIFY, ack)]))
        return [store, self._send((Step.AMPLIFY, ack), (Step.AUTH, tag))]

    def _bob_await_commit(self, commit, auth=None) -> list[Action]:
        if self._auth is not None:              # Alice's TAG_C: only her authentic COMMIT commits
            self._auth.check_commit(envelope.encode(self.frame_id, [(Step.COMMIT, commit)]), auth)
        self.state = DONE
        return [Commit(self.frame_id), Finished(self.outcome)]

    # -- Alice ----------------------------------------------------------------------------------
    def _alice_await_detect(self, slots_part, detections) -> list[Action]:
        records = self.frame.alice
        columns = (records.bits, records.bases, records.intensities)
        if linkmsg.is_slot_stream_of(slots_part, records.slots):   # the usual case: a record per detected slot
            slots = records.slots
        else:
            slots = linkmsg.decode_slots(slots_part, records.slots.size)
        if slots is not records.slots and not np.array_equal(records.slots, slots):
            positions = np.searchsorted(records.slots, slots)
            inside = positions < records.slots.size
            if not bool(np.all(inside)) or not np.array_equal(records.slots[positions[inside]], slots[inside]) \
                    or not bool(np.all(inside)):
                raise LinkMessageError("SLOTS names a slot this end has no prepared state for")
            columns = tuple(column[positions] for column in columns)
        self.outcome.detections = int(slots.size)
        compact = sifting.AliceRecords.from_columns(*columns, CLASSES)
        self._sift = sifting.Sifting(sifting.ALICE, self.frame_id, compact, CLASSES, message_parts=True)
        (answer,) = self._sift.receive(detections)
        self.state = AWAIT_REPORT
        return [self._send((Step.SIFT, answer))]

    def _alice_await_report(self, report) -> list[Action]:
        self._sift.receive(bytes(report))
        result = self._sift.result
        self.outcome.pulses_sent = int(sum(self.frame.pulses_per_intensity))
        reveal = linkmsg.encode_reveal(self._decoy, self.outcome.pulses_sent, self.settings.eps_sec,
                                       self.settings.eps_cor, [result.key_bits(c, Z) for c in range(CLASSES)])
        self.state = AWAIT_ERRORS
        return [self._send((Step.ESTIMATE, reveal))]

    def _alice_await_errors(self, errors_part, cascade_start) -> list[Action]:
        result = self._sift.result
        n_z = [int(result.counts.matched[c, Z]) for c in range(CLASSES)]
        self._estimate(linkmsg.decode_errors(errors_part, n_z))
        if self._refusal is not None:
            return self._abort(*self._refusal)
        return self._start_reconciliation_alice(cascade_start)

    def _start_reconciliation_alice(self, cascade_start) -> list[Action]:
        """Alice's answer to Bob's first reconciliation message on the frame's key bits."""
        if self.settings.reconciliation == "ldpc":
            self._cascade = LdpcAlice(self._key, self._n_key_bits, self.frame_id)
        else:
            self._cascade = CascadeAlice(self._key, self._n_key_bits, self.frame_id)
        (parities,) = self._cascade.receive(bytes(cascade_start))
        self.state = RECONCILING
        return [self._send((self._recon_step, parities))]

    def _alice_reconciling(self, cascade_part, announce=None) -> list[Action]:
        replies = self._cascade.receive(bytes(cascade_part))
        if announce is None:
            if self._cascade.done:
                raise LinkMessageError("Cascade finished without a verification announcement")
            return [self._send((self._recon_step, replies[0]))]
        if not self._cascade.done:
            raise LinkMessageError("verification announced before Cascade finished")
        self._record_reconciliation()
        self._verify = verification.Verification(verification.CHECKER, self.frame_id, self._key, self._n_key_bits)
        (result_msg,) = self._verify.receive(bytes(announce))
        checked = self._verify.result
        if not checked.matched:
            return self._abort(AbortReason.VERIFICATION, "verification hashes differ: frame discarded",
                               before=[(Step.VERIFY, result_msg)])
        leak_bits = self.outcome.disclosed_bits + checked.leaked_bits
        bound = self._key_length_bound(leak_bits)
        self.outcome.key_length_bits = bound.key_length_bits
        key_bits = self.settings.key_bits
        usable_bits = 0 if bound.abort else min(bound.key_length_bits, self._n_key_bits)
        if self._auth is not None:              # the pool's refill comes first, then whole keys
            room_bits = max(0, self.settings.auth_pool_max_bits - self._auth_pool.bits)
            self._refill_bits = min(self.settings.auth_refill_bits, room_bits, usable_bits) // CHUNK_BITS * CHUNK_BITS
        count = (usable_bits - self._refill_bits) // key_bits
        if bound.abort or count + self._refill_bits == 0:
            text = bound.abort_reason or f"key length {bound.key_length_bits} bits is less than one key"
            return self._abort(AbortReason.NO_KEY, text, before=[(Step.VERIFY, result_msg)])
        seed_announce = self._announce_keys(self._key, self._n_key_bits, count, key_bits, self._refill_bits)
        parts = [(Step.VERIFY, result_msg), (Step.AMPLIFY, seed_announce),
                 (Step.KEYS, linkmsg.encode_keys(*self._keys))]
        if self._auth is not None:
            try:
                parts.append((Step.AUTH, self._auth.seal_keys(envelope.encode(self.frame_id, parts),
                                                              self._refill_bits // CHUNK_BITS)))
            except PoolDry as exc:
                return self._abort(AbortReason.AUTH_POOL, str(exc), before=[(Step.VERIFY, result_msg)])
        self.state = AWAIT_ACK
        return [self._send(*parts)]

    def _alice_await_ack(self, ack, auth=None) -> list[Action]:
        if self._auth is not None:              # Bob's tag, over the whole transcript, before anything is kept
            self._auth.check_ack(envelope.encode(self.frame_id, [(Step.AMPLIFY, ack)]), auth)
            self._auth.record(BOB, envelope.encode(self.frame_id, [(Step.AMPLIFY, ack), (Step.AUTH, auth)]))
        self._amp.receive(bytes(ack))
        seed, count, key_bits, expires_at = self._keys
        keys_out = self._split(seed, count, key_bits)
        self._stored = True
        self.state = DONE
        commit: list[tuple[Step, bytes]] = [(Step.COMMIT, b"")]
        if self._auth is not None:
            commit.append((Step.AUTH, self._auth.seal_commit(envelope.encode(self.frame_id, commit))))
        return [StorePending(self.frame_id, keys_out, [i % 2 == 0 for i in range(count)], expires_at,
                             self.outcome.qber),
                Commit(self.frame_id), self._send(*commit), Finished(self.outcome)]

    # -- shared ---------------------------------------------------------------------------------
    def _record_reconciliation(self) -> None:
        """The finished reconciliation's counts into the outcome, alike at both ends (LDPC's codewords given up)."""
        self.outcome.disclosed_bits = self._cascade.disclosed_bits
        self.outcome.codewords_given_up = len(getattr(self._cascade, "dropped", ()))
        self.outcome.qber = self._cascade.corrected_bits / self._n_key_bits

    def _key_length_bound(self, leak_bits: float):
        """The secret key length of the frame (Lim's bound) given the reconciliation's actual leakage;
        the result has key_length_bits, abort and abort_reason."""
        return finite_key_length(self._counts, self._decoy, eps_sec=self.settings.eps_sec,
                                 eps_cor=self.settings.eps_cor, ec_leak_bits=leak_bits)

    def _observe_peer_estimate(self, body) -> None:
        """Alice: Bob's estimation message that came with his ABORT still counts (the frame's QBER)."""
        result = self._sift.result
        self._estimate(linkmsg.decode_errors(body, [int(result.counts.matched[c, Z]) for c in range(CLASSES)]))

    def _estimate(self, z_errors: list[int]) -> None:
        """Decoy counts from the sifting tables and the Z errors; the early abort and gate decisions."""
        result = self._sift.result
        matched = result.counts.matched
        x = tuple(Tally(float(matched[c, X]), 0.0) for c in range(CLASSES))
        z = tuple(Tally(float(matched[c, Z]), float(z_errors[c])) for c in range(CLASSES))
        self._counts = DecoyCounts(pulses_sent=float(self.outcome.pulses_sent), x=x, z=z)
        n_x = int(sum(matched[c, X] for c in range(CLASSES)))
        n_z = int(sum(matched[c, Z] for c in range(CLASSES)))
        self.outcome.sifted_key_bits = n_x
        self.outcome.sifted_bits = n_x + n_z
        if n_z == 0 or n_x == 0:
            self._refusal = (AbortReason.ESTIMATION, "no sifted bits in the key or the test basis")
            return
        qber = sum(z_errors) / n_z
        self.outcome.qber_estimate = qber
        refusal = self._gate(qber)
        if refusal is not None:
            self.outcome.gate_refused = True
            self._refusal = (AbortReason.QBER, refusal)
            return
        leak_bits = self.settings.early_abort_efficiency(n_x, qber) * n_x * binary_entropy(min(qber, 0.5))
        try:
            estimate = finite_key_length(self._counts, self._decoy, eps_sec=self.settings.eps_sec,
                                         eps_cor=self.settings.eps_cor, ec_leak_bits=leak_bits)
        except (ArithmeticError, ValueError) as exc:    # at Bob, decoy settings Alice announced (REVEAL)
            raise LinkMessageError(f"decoy analysis failed on the announced settings: {exc}") from None
        if estimate.abort:
            self._refusal = (AbortReason.ESTIMATION, estimate.abort_reason or "finite-key bound aborts")
            return
        self._key, self._n_key_bits = _concatenate([result.key_bits(c, X) for c in range(CLASSES)])

    def _split(self, seed: bytes, count: int, key_bits: int) -> list[tuple[str, bytes]]:
        """The frame's keys; with transcript authentication, the first `_refill_bits` of the output go to the
        authentication pool first (at the positions Alice's AUTH part announced)."""
        refill_words = self._refill_bits // 64
        if self._auth is not None:
            if refill_words:
                self._auth_pool.refill(self._auth.announced.refill_position,
                                       self._amp.output[:refill_words].astype("<u8").tobytes())
            self.outcome.auth_bits_refilled = self._refill_bits
            self.outcome.auth_bits_consumed = self._auth.consumed_bits
            self.outcome.eps_auth = self._auth.epsilon
            # The budget of the frame's keys: eps_sec (Lim's bound) + eps_cor (verification) + eps_auth (a
            # forged transcript) + eps_sec once more for the pool bits the tags spent, which an earlier frame
            # distilled under the same eps_sec (0 for the pre-shared seed; security of composed protocols
            # adds their epsilons: Mueller-Quade & Renner, New J. Phys. 11, 085006 (2009), Sec. 3; Portmann,
            # IEEE Trans. Inf. Theory 60 (2014) 4383, Sec. 5 for recycled authentication keys).
            self.outcome.eps_total = 2 * self.settings.eps_sec + self.settings.eps_cor + self.outcome.eps_auth
        return self._key_material(seed, count, key_bits, refill_words)

    def _account_auth(self) -> None:
        if self._auth is not None:
            self.outcome.auth_bits_consumed = self._auth.consumed_bits
            self.outcome.eps_auth = self._auth.epsilon

    def _sent(self, record: bytes) -> None:
        if self._auth is not None:
            self._auth.record(self.role, record)

    def _peer_parts_before_abort(self, parts) -> None:
        # The peer may send its last step's message before the ABORT; what it says still counts
        # towards this end's view of the frame (the QBER of an aborted frame is still observed).
        if (self.role, self.state) == (ALICE, AWAIT_ERRORS) and parts[0][0] == Step.ESTIMATE:
            self._observe_peer_estimate(parts[0][1])
        if (self.role, self.state) == (BOB, AWAIT_SEED) and parts[0][0] == Step.VERIFY:
            self._verify.receive(bytes(parts[0][1]))


# Words shifted at a time by _concatenate: its temporaries stay below the C heap's mmap threshold
# (qkdd.malloc_tuning), so they are reused, not mapped and zeroed afresh.
_SHIFT_CHUNK_WORDS = 1 << 14


def _concatenate(groups: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """Bit-packed concatenation of several bit-packed strings, word-wise on the packed words (no unpacked copy):
    each string's words shifted to its bit offset and or-ed in, in chunks of _SHIFT_CHUNK_WORDS."""
    total = sum(n for _, n in groups)
    if total == 0:
        return np.zeros(0, dtype=np.uint64), 0
    out = np.zeros(bitops.words_for_bits(total), dtype=np.uint64)
    scratch = np.empty(_SHIFT_CHUNK_WORDS, dtype=np.uint64)
    at = 0
    for words, n in groups:
        if not n:
            continue
        n_words = bitops.words_for_bits(n)
        src = np.ascontiguousarray(words[:n_words], dtype=np.uint64)
        last = None
        if n % 64:                          # the last word alone, its bits past the string's end cleared
            last = np.array([src[-1] & np.uint64((1 << (n % 64)) - 1)], dtype=np.uint64)
            src = src[:-1]
        word, shift = divmod(at, 64)
        for lo in range(0, src.size, _SHIFT_CHUNK_WORDS):
            _or_shifted(out, word + lo, shift, src[lo:lo + _SHIFT_CHUNK_WORDS], scratch)
        if last is not None:
            _or_shifted(out, word + src.size, shift, last, scratch)
        at += n
    return out, total


def _or_shifted(out: np.ndarray, word: int, shift: int, src: np.ndarray, scratch: np.ndarray) -> None:
    """out's bits from bit 64 * word + shift on |= src's bits (the last word's spill past out's end dropped:
    zero for a string within the total)."""
    if shift == 0:
        np.bitwise_or(out[word:word + src.size], src, out=out[word:word + src.size])
        return
    low = scratch[:src.size]
    np.left_shift(src, np.uint64(shift), out=low)
    np.bitwise_or(out[word:word + src.size], low, out=out[word:word + src.size])
    np.right_shift(src, np.uint64(64 - shift), out=low)
    end = min(word + 1 + src.size, out.size)
    np.bitwise_or(out[word + 1:end], low[:end - word - 1], out=out[word + 1:end])
