"""What one simulated frame hands to each side: Alice's records and Bob's detections as numpy columns.

Layout (shared with the sifting kernel): one row per detected slot, `slot` uint64 strictly increasing
(slot numbers count from the start of the run), `bit`, `basis`, `outcome`, `intensity` uint8. Basis codes:
BB84 0 = Z, 1 = X; E91 analyser angles 0 = 0 deg, 1 = 45 deg, 2 = 22.5 deg, 3 = -22.5 deg (equal codes are
key pairs). Intensity classes 0 = signal, 1 = decoy, 2 = vacuum (E91: always 0). Slots without a
detection are not materialised: Alice's choices there are never revealed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qkdd.bindings import bits

INTENSITY_CLASSES = ("signal", "decoy", "vacuum")
BB84_BASES = ("Z", "X")
E91_ANGLES_DEG = (0.0, 45.0, 22.5, -22.5)


@dataclass(frozen=True)
class AliceRecords:
    slot: np.ndarray        # uint64
    bit: np.ndarray         # uint8 (E91: Alice's outcome)
    basis: np.ndarray       # uint8
    intensity: np.ndarray   # uint8 class index

    def __len__(self) -> int:
        return int(self.slot.size)

    def packed_bits(self) -> np.ndarray:
        """Alice's bits in the bit-packed layout of qkdd.bindings.bits."""
        return bits.pack(self.bit)


@dataclass(frozen=True)
class BobDetections:
    slot: np.ndarray        # uint64
    basis: np.ndarray       # uint8
    outcome: np.ndarray     # uint8 (double clicks already squashed to a random bit)

    def __len__(self) -> int:
        return int(self.slot.size)


@dataclass(frozen=True)
class Frame:
    """Slots [first_slot, first_slot + slots) of one run."""

    protocol: str
    first_slot: int
    slots: int
    alice: AliceRecords
    bob: BobDetections
    pulses_per_class: tuple[int, int, int]
    monitor_power_w: float              # mean optical power at Bob's detectors (photocurrent monitor)
