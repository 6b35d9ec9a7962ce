"""One E91 frame's post-processing at one end: the CHSH test and the key from matching settings, then
reconciliation, verification and privacy amplification exactly as BB84 (qkdd.link.pipeline, inherited).

Theory of operation
-------------------
The frame is one block of entangled-pair coincidences: at each detection both ends know only their own
analyser setting and outcome (Alice: 0 or 45 deg; Bob: 22.5, -22.5, 0 or 45 deg; qkdd.protocols.e91 for
the angles). The frame runs in the same states and steps as a BB84 frame (the table in qkdd.link.pipeline);
only the bodies of SIFT and ESTIMATE differ (qkdd.link.e91_messages):
 1. Sifting: Bob sends the detected slots and his settings (SLOTS + SIFT(SETTINGS)), Alice hers
    (SIFT(SETTINGS)); both classify every detection the same way: key (0/0 deg), X test (45/45 deg), the
    four CHSH pairs, or discarded. Bob confirms the class counts (SIFT(REPORT)).
 2. Estimation: Alice reveals her outcomes of all test rounds (X and CHSH) with eps_sec, eps_cor and
    chsh_eps (ESTIMATE(REVEAL)); Bob counts the disagreements per test class (ESTIMATE(ERRORS)). Both
    build the same counts: S = E(A0,B0) + E(A0,B1) + E(A1,B0) - E(A1,B1) (CHSH, PRL 23, 880 (1969)) and
    its lower confidence bound S - delta by Hoeffding's inequality at failure probability chsh_eps
    (qkdd.protocols.e91.chsh_estimate). Either end aborts the frame unless S - delta > 2 (no significant
    Bell violation: the correlations have a local model and nothing certifies the source), or when the
    finite-key bound with the estimated leakage f_EC h(Q_X) leaves no key; the QBER gate sees Q_X.
 3. Cascade or LDPC on the key-round outcomes (the same bits at both ends up to errors: |Phi+> at equal
    angles), verification and amplification exactly as BB84. The key length (Alice, with the actual
    leakage) is the device-independent bound of Acin, Brunner, Gisin, Massar, Pironio, Scarani,
    PRL 98, 230501 (2007): l = n_Z (1 - chi(S - delta)) - leak_EC - log2(2 / (eps_sec^2 eps_cor)),
    chi(S) = h((1 + sqrt((S/2)^2 - 1)) / 2) (qkdd.protocols.e91.e91_key_length, device_independent).
    This is their collective-attack bound with S at its confidence bound, not a general-attack proof.
"""
from __future__ import annotations

import numpy as np

from qkdd.bindings import NativeError
from qkdd.bindings import bits as bitops
from qkdd.link import e91_messages as msg
from qkdd.link import linkmsg
from qkdd.link.envelope import Step
from qkdd.link.linkmsg import AbortReason, LinkMessageError
from qkdd.link.pipeline import (
    AWAIT_ERRORS,
    AWAIT_REPORT,
    AWAIT_REVEAL,
    RECONCILING,
    SIFTING,
    Action,
    FramePipeline,
    PipelineSettings,
)
from qkdd.protocols import e91
from qkdd.protocols.entropy import binary_entropy


class E91FramePipeline(FramePipeline):
    """One end of one E91 frame (Alice needs no decoy settings)."""

    NEEDS_DECOY = False

    def __init__(self, role, frame, settings: PipelineSettings = PipelineSettings(), **kwargs):
        kwargs.pop("decoy", None)
        super().__init__(role, frame, settings, **kwargs)
        self._classes: np.ndarray | None = None
        self._own_outcomes: np.ndarray | None = None     # this end's outcomes in detection order
        self._e91_counts: e91.E91Counts | None = None

    # -- Bob ------------------------------------------------------------------------------------
    def start(self) -> list[Action]:
        if self.role != "bob" or self.state != "START":
            raise RuntimeError(f"start() not allowed for {self.role} in state {self.state}")
        det = self.frame.bob
        self.outcome.detections = det.count
        self.outcome.pulses_sent = int(self.frame.slot_count)
        bases = np.ascontiguousarray(det.bases, dtype=np.uint8)
        outcomes = np.ascontiguousarray(det.outcomes, dtype=np.uint8)
        if bases.size != det.count or outcomes.size != det.count or \
                (bases.size and (int(bases.max()) >= msg.BOB_CODES or int(outcomes.max()) > 1)):
            return self._abort(AbortReason.PROTOCOL, "device frame refused: E91 detections out of range")
        self._own_codes, self._own_outcomes = bases, outcomes
        self.state = SIFTING
        return [self._send((Step.SLOTS, linkmsg.detections_slots_part(det)),
                           (Step.SIFT, msg.encode_settings(bases)))]

    def _bob_sifting(self, alice_settings) -> list[Action]:
        alice_codes = msg.decode_settings(alice_settings, self._own_codes.size, msg.ALICE_CODES)
        self._classes = msg.classify(alice_codes, self._own_codes)
        self.state = AWAIT_REVEAL
        return [self._send((Step.SIFT, msg.encode_report(msg.class_counts(self._classes))))]

    def _bob_await_reveal(self, reveal) -> list[Action]:
        test = np.isin(self._classes, msg.TEST_CLASSES)
        eps_sec, eps_cor, chsh_eps, alice_test = msg.decode_reveal(reveal, int(np.count_nonzero(test)))
        self.settings = PipelineSettings(**{**self.settings.__dict__, "eps_sec": eps_sec, "eps_cor": eps_cor,
                                            "chsh_eps": chsh_eps})
        differ = alice_test != self._own_outcomes[test]
        test_classes = self._classes[test]
        errors = [int(np.count_nonzero(differ[test_classes == c])) for c in msg.TEST_CLASSES]
        self._estimate_e91(errors)
        parts: list[tuple[Step, bytes]] = [(Step.ESTIMATE, msg.encode_errors(errors))]
        if self._refusal is not None:
            return self._abort(*self._refusal, before=parts)
        parts.append((self._recon_step, self._start_reconciliation_bob()))
        self.state = RECONCILING
        return [self._send(*parts)]

    # -- Alice ----------------------------------------------------------------------------------
    def _alice_await_detect(self, slots_part, bob_settings) -> list[Action]:
        records = self.frame.alice
        slots = linkmsg.decode_slots(slots_part, records.slots.size)
        if np.array_equal(records.slots, slots):
            positions = np.arange(slots.size)
        else:
            positions = np.searchsorted(records.slots, slots)
            if not bool(np.all(positions < records.slots.size)) or \
                    not np.array_equal(records.slots[positions], slots):
                raise LinkMessageError("SLOTS names a slot this end has no detection in")
        self.outcome.detections = int(slots.size)
        self.outcome.pulses_sent = int(self.frame.slot_count)
        own_codes = np.ascontiguousarray(records.bases[positions], dtype=np.uint8)
        self._own_outcomes = np.ascontiguousarray(records.bits[positions], dtype=np.uint8)
        if own_codes.size and (int(own_codes.max()) >= msg.ALICE_CODES or int(self._own_outcomes.max()) > 1):
            return self._abort(AbortReason.PROTOCOL, "device frame refused: E91 records out of range")
        bob_codes = msg.decode_settings(bob_settings, slots.size, msg.BOB_CODES)
        self._classes = msg.classify(own_codes, bob_codes)
        self.state = AWAIT_REPORT
        return [self._send((Step.SIFT, msg.encode_settings(own_codes)))]

    def _alice_await_report(self, report) -> list[Action]:
        theirs, ours = msg.decode_report(report), msg.class_counts(self._classes)
        if theirs != ours:
            raise LinkMessageError(f"REPORT: Bob's class counts {theirs} differ from this end's {ours}")
        test = np.isin(self._classes, msg.TEST_CLASSES)
        reveal = msg.encode_reveal(self.settings.eps_sec, self.settings.eps_cor, self.settings.chsh_eps,
                                   self._own_outcomes[test])
        self.state = AWAIT_ERRORS
        return [self._send((Step.ESTIMATE, reveal))]

    def _alice_await_errors(self, errors_part, cascade_start) -> list[Action]:
        self._estimate_e91(msg.decode_errors(errors_part, self._test_rounds()))
        if self._refusal is not None:
            return self._abort(*self._refusal)
        return self._start_reconciliation_alice(cascade_start)

    def _observe_peer_estimate(self, body) -> None:
        self._estimate_e91(msg.decode_errors(body, self._test_rounds()))

    # -- shared ---------------------------------------------------------------------------------
    def _test_rounds(self) -> list[int]:
        counts = msg.class_counts(self._classes)
        return [counts[c] for c in msg.TEST_CLASSES]

    def _counts_of(self, errors: list[int], key_errors: int = 0) -> e91.E91Counts:
        counts = msg.class_counts(self._classes)
        rounds = dict(zip(msg.TEST_CLASSES, errors))

        def corr(c: int, wrong: int) -> e91.Correlation:
            return e91.Correlation(float(counts[c] - wrong), float(wrong))

        return e91.E91Counts(chsh=tuple(corr(c, rounds[c]) for c in msg.CHSH_CLASSES),  # type: ignore[arg-type]
                             key_z=corr(msg.KEY_Z, key_errors), key_x=corr(msg.TEST_X, rounds[msg.TEST_X]))

    def _estimate_e91(self, errors: list[int]) -> None:
        """CHSH from the test rounds, the gate on Q_X, the early abort decision; the key bits."""
        counts = self._counts_of(errors)
        self._e91_counts = counts
        n_z, n_x = int(counts.key_z.total), int(counts.key_x.total)
        self.outcome.sifted_key_bits = n_z
        self.outcome.sifted_bits = n_z + sum(int(c.total) for c in (counts.key_x, *counts.chsh))
        chsh = e91.chsh_estimate(counts, self.settings.chsh_eps)
        if np.isfinite(chsh.sigma):
            self.outcome.chsh_s = chsh.s
        if n_z == 0 or n_x == 0:
            self._refusal = (AbortReason.ESTIMATION, "no coincidences in the key or the X test rounds")
            return
        qber = counts.key_x.error_rate
        self.outcome.qber_estimate = qber
        refusal = self._gate(qber)                  # the gate sees every frame's QBER, the CHSH test decides first
        if chsh.s_lower <= e91.LOCAL_BOUND:
            self._refusal = (AbortReason.ESTIMATION, f"CHSH S = {chsh.s:.4f} is not above 2 at confidence "
                             f"1 - {self.settings.chsh_eps:g} (lower bound {chsh.s_lower:.4f})")
            return
        if refusal is not None:
            self.outcome.gate_refused = True
            self._refusal = (AbortReason.QBER, refusal)
            return
        f_ec = self.settings.early_abort_efficiency(n_z, qber)
        estimate = e91.e91_key_length(counts, eps_sec=self.settings.eps_sec, eps_cor=self.settings.eps_cor,
                                      eps_pe=self.settings.chsh_eps,
                                      ec_leak_bits=f_ec * n_z * binary_entropy(min(qber, 0.5)),
                                      device_independent=True)
        if estimate.abort:
            self._refusal = (AbortReason.ESTIMATION, estimate.abort_reason or "E91 bound aborts")
            return
        try:
            self._key = bitops.pack(np.ascontiguousarray(self._own_outcomes[self._classes == msg.KEY_Z]))
        except NativeError as exc:
            raise LinkMessageError(f"key bits: {exc}") from None
        self._n_key_bits = n_z

    def _key_length_bound(self, leak_bits: float) -> e91.E91Result:
        """Acin et al.'s bound with the CHSH value of this frame and the reconciliation's actual leakage
        (the exact key-round error count, now known, enters only the report)."""
        counts = self._e91_counts
        corrected = round((self.outcome.qber or 0.0) * self._n_key_bits)
        counts = e91.E91Counts(chsh=counts.chsh, key_z=e91.Correlation(float(self._n_key_bits - corrected),
                                                                       float(corrected)), key_x=counts.key_x)
        return e91.e91_key_length(counts, eps_sec=self.settings.eps_sec, eps_cor=self.settings.eps_cor,
                                  eps_pe=self.settings.chsh_eps, ec_leak_bits=leak_bits, device_independent=True)
