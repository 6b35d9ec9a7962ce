"""Counting what the protocols' estimators need from frames of records (pure numpy, no I/O).

BB84: sifted detections and errors per basis (X, Z) and intensity class, detections per class in all
bases, and pulses per class. E91: agreeing and disagreeing outcome pairs per pair of analyser settings.
Errors are counted on every sifted slot: the Monte Carlo knows both sides, which equals the error count
after error correction of the real link.
"""
from __future__ import annotations

import numpy as np

from qkdd.hal.sim.records import Frame
from qkdd.protocols import e91 as e91_protocol
from qkdd.protocols.bb84_finite import DecoyCounts, Tally

CLASSES = 3
BASIS_CODE = {"Z": 0, "X": 1}
E91_ALICE_CODES = (0, 1)          # ALICE_ANGLES_DEG = (0, 45)
E91_BOB_CODES = (2, 3, 0, 1)      # BOB_ANGLES_DEG = (22.5, -22.5, 0, 45)


class Bb84Tally:
    def __init__(self) -> None:
        self.pulses = np.zeros(CLASSES, np.int64)
        self.detections = np.zeros(CLASSES, np.int64)            # all bases
        self.sifted = np.zeros((2, CLASSES), np.int64)           # [basis code, class]
        self.errors = np.zeros((2, CLASSES), np.int64)
        self.slots = 0

    def add(self, frame: Frame) -> None:
        a, b = frame.alice, frame.bob
        self.slots += frame.slots
        self.pulses += np.asarray(frame.pulses_per_class, np.int64)
        self.detections += np.bincount(a.intensity, minlength=CLASSES)[:CLASSES]
        matched = a.basis == b.basis
        index = a.basis[matched].astype(np.int64) * CLASSES + a.intensity[matched]
        wrong = (a.bit[matched] != b.outcome[matched])
        self.sifted += np.bincount(index, minlength=2 * CLASSES).reshape(2, CLASSES)
        self.errors += np.bincount(index[wrong], minlength=2 * CLASSES).reshape(2, CLASSES)

    def decoy_counts(self) -> DecoyCounts:
        def basis(code: int) -> tuple[Tally, Tally, Tally]:
            return tuple(Tally(float(self.sifted[code, k]), float(self.errors[code, k]))  # type: ignore[return-value]
                         for k in range(CLASSES))
        return DecoyCounts(pulses_sent=float(self.slots), x=basis(BASIS_CODE["X"]), z=basis(BASIS_CODE["Z"]))

    def gain(self, cls: int) -> float:
        return float(self.detections[cls] / self.pulses[cls]) if self.pulses[cls] else 0.0

    def error_rate(self, basis: str, cls: int) -> float:
        code = BASIS_CODE[basis]
        n = self.sifted[code, cls]
        return float(self.errors[code, cls] / n) if n else 0.0


class E91Tally:
    def __init__(self) -> None:
        self.agree = np.zeros((4, 4), np.int64)      # [Alice code, Bob code]
        self.disagree = np.zeros((4, 4), np.int64)
        self.slots = 0
        self.coincidences = 0

    def add(self, frame: Frame) -> None:
        a, b = frame.alice, frame.bob
        self.slots += frame.slots
        self.coincidences += len(a)
        index = a.basis.astype(np.int64) * 4 + b.basis
        differ = a.bit != b.outcome
        self.agree += np.bincount(index[~differ], minlength=16).reshape(4, 4)
        self.disagree += np.bincount(index[differ], minlength=16).reshape(4, 4)

    def correlation(self, alice_setting: int, bob_setting: int) -> e91_protocol.Correlation:
        i, j = E91_ALICE_CODES[alice_setting], E91_BOB_CODES[bob_setting]
        return e91_protocol.Correlation(float(self.agree[i, j]), float(self.disagree[i, j]))

    def counts(self, pair_mean: float) -> e91_protocol.E91Counts:
        chsh = tuple(self.correlation(a, b) for a, b, _ in e91_protocol.CHSH_TERMS)
        return e91_protocol.E91Counts(chsh=chsh,  # type: ignore[arg-type]
                                      key_z=self.correlation(*e91_protocol.KEY_PAIRS["z"]),
                                      key_x=self.correlation(*e91_protocol.KEY_PAIRS["x"]),
                                      pairs_emitted=float(self.slots) * pair_mean)
