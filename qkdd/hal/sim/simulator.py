"""One simulated link: parameters, attack and drift (switchable between frames), and the C kernel."""
from __future__ import annotations

import os

from qkdd.bindings.sim import SEED_BYTES, Kernel
from qkdd.hal.sim.params import Attack, Drift, SimParams
from qkdd.hal.sim.records import AliceRecords, BobDetections, Frame


def seed_bytes(seed: int | bytes | None) -> bytes:
    """32 key bytes for the ChaCha20 streams: from os.urandom, or reproducibly from an integer seed."""
    if seed is None:
        return os.urandom(SEED_BYTES)
    if isinstance(seed, (bytes, bytearray)):
        if len(seed) != SEED_BYTES:
            raise ValueError(f"seed: need {SEED_BYTES} bytes, got {len(seed)}")
        return bytes(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 256:
        raise ValueError(f"seed: must be an integer in [0, 2^256), got {seed!r}")
    return seed.to_bytes(SEED_BYTES, "little")


class Simulator:
    def __init__(self, params: SimParams, *, seed: int | bytes | None = None,
                 attack: Attack | None = None, drift: Drift | None = None):
        if params.protocol == "e91" and attack is not None and attack.kind != "none":
            raise ValueError("attack: the E91 simulator models no attacks")
        self._params = params
        self._attack = attack or Attack()
        self._drift = drift or Drift()
        self._kernel = Kernel(params.native(self._attack, self._drift), seed_bytes(seed))

    @property
    def params(self) -> SimParams:
        return self._params

    @property
    def attack(self) -> Attack:
        return self._attack

    @attack.setter
    def attack(self, attack: Attack) -> None:
        if self._params.protocol == "e91" and attack.kind != "none":
            raise ValueError("attack: the E91 simulator models no attacks")
        self._kernel.configure(self._params.native(attack, self._drift))
        self._attack = attack

    @property
    def drift(self) -> Drift:
        return self._drift

    @drift.setter
    def drift(self, drift: Drift) -> None:
        self._kernel.configure(self._params.native(self._attack, drift))
        self._drift = drift

    def realign(self) -> Drift:
        """Calibration: the polarisation controller removes the misalignment drift; extra loss stays."""
        self.drift = Drift(extra_loss_db=self._drift.extra_loss_db)
        return self._drift

    @property
    def position(self) -> int:
        """Next slot number."""
        return self._kernel.position

    def expected(self) -> dict:
        """Per-slot predictions of the channel model for the current attack and drift."""
        return self._kernel.model()

    def run(self, n_slots: int, max_records: int = 1 << 20, *, copy_slots: bool = True) -> Frame:
        """The next `n_slots` slots, or fewer if `max_records` detections fill the frame first.

        Alice's and Bob's slot columns are separate arrays; with `copy_slots=False` they are one array (no
        8-byte-a-detection copy), for a caller that owns the frame and treats them as one column."""
        first = self._kernel.position
        cols, done, pulses = self._kernel.run(int(n_slots), int(max_records))
        slot = cols["slot"]
        alice = AliceRecords(slot=slot, bit=cols["alice_bit"], basis=cols["alice_basis"],
                             intensity=cols["intensity"])
        bob = BobDetections(slot=slot.copy() if copy_slots else slot, basis=cols["bob_basis"],
                            outcome=cols["bob_outcome"])
        return Frame(protocol=self._params.protocol, first_slot=first, slots=done, alice=alice, bob=bob,
                     pulses_per_class=tuple(int(p) for p in pulses),  # type: ignore[arg-type]
                     monitor_power_w=float(self._kernel.model()["monitor_power_w"]))

    def frames(self, total_slots: int, max_records: int = 1 << 20):
        """Frames covering exactly `total_slots` slots."""
        left = int(total_slots)
        while left > 0:
            frame = self.run(left, max_records)
            left -= frame.slots
            yield frame


__all__ = ["Simulator", "seed_bytes"]
