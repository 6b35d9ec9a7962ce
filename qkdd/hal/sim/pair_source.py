"""The E91 link's simulated devices: the entangled-pair source runs on the host of the end that
`[links.sim] source_host` names and sends each pair's photons to both ends' detectors; the other end's
detector receives its detections over the simulated quantum channel (qkdd.hal.sim.wire).

    PairSourceDevice    the source's end: runs the pair source, hands the far detector its detections
                        (the wire's "alice" role: listens on device_addr) and keeps its own end's
    PairDetectorDevice  the far end: connects to device_addr (the wire's "bob" role), yields its detections

Physics: the simulator's E91 kernel (qkdd.hal.sim.simulator; SPDC pairs with thermal or Poisson
statistics, hence multi-pair emission, fiber loss on both arms, detector efficiency and dark counts at
both ends). On each frame of coincidences the source then applies, in this module:
  - the detectors' dead time (`dead_time_ns`, non-paralysable): a coincidence is lost when either end's
    detectors registered a click in the `dead_slots` slots before it. Coincidences are materialised, so
    one within the dead time after the last kept one is dropped exactly; clicks without a partner
    (singles, not materialised) blind the ends with probability 1 - ((1 - (s_A - c))(1 - (s_B - c)))^n,
    s the ends' singles and c the coincidence probability per slot (qkdd.hal.sim.pair_model), drawn per
    coincidence;
  - an intercept-resend attack on Bob's arm (`attack = "intercept-resend[:f]"`): for a fraction f of the
    pairs Eve measures Bob's photon at 0 or 45 deg (at random) and resends her result; both outcomes are
    redrawn from that: Alice's photon is projected onto Eve's result, P(0 at angle a) = cos^2(a - phi),
    Bob's resent photon passes his analyser with the link's misalignment e_d,
    P(0 at angle b) = e_d + (1 - 2 e_d) cos^2(b - phi). This lowers S to sqrt 2 (1 - 2 e_d) at f = 1.
The monitor, blinding and PNS attacks are BB84 models and are refused here.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from qkdd.hal.base import AliceRecords, BobDetections, DeviceError, RawFrame
from qkdd.hal.sim import records, wire
from qkdd.hal.sim.alice import SimAliceDevice
from qkdd.hal.sim.bob import SimBobDevice
from qkdd.hal.sim.pair_model import dead_slots, pair_rates, singles_live_probability
from qkdd.hal.sim.params import Attack, SimParams
from qkdd.hal.sim.records import E91_ANGLES_DEG, Frame
from qkdd.protocols.bb84_finite import DecoySettings
from qkdd.thread_cpu import run_sync_counted

E91_ATTACKS = ("none", "intercept-resend")
SIDES = ("alice", "bob")
_ANGLE_RAD = np.radians(np.asarray(E91_ANGLES_DEG))          # by analyser code


def check_attack(attack: Attack) -> Attack:
    if attack.kind not in E91_ATTACKS:
        raise ValueError(f"attack: the E91 pair source models {' and '.join(E91_ATTACKS)}, not {attack.kind!r}")
    return attack


def apply_dead_time(frame: Frame, blind_slots: int, singles_keep_prob: float, rng: np.random.Generator) -> Frame:
    """The frame's coincidences that find both ends' detectors live (module docstring)."""
    n = len(frame.alice)
    if blind_slots <= 0 or n == 0:
        return frame
    slots = frame.alice.slot
    keep = rng.random(n) < singles_keep_prob
    for i in (np.flatnonzero(np.diff(slots) <= np.uint64(blind_slots)) + 1).tolist():
        previous = i - 1
        while previous >= 0 and not keep[previous]:
            previous -= 1
        if previous >= 0 and int(slots[i]) - int(slots[previous]) <= blind_slots:
            keep[i] = False
    return _select(frame, keep)


def apply_intercept_resend(frame: Frame, fraction: float, misalignment: float, rng: np.random.Generator) -> Frame:
    """The frame with a fraction of its pairs intercepted on Bob's arm and resent (module docstring)."""
    n = len(frame.alice)
    if fraction <= 0 or n == 0:
        return frame
    hit = rng.random(n) < fraction
    m = int(np.count_nonzero(hit))
    phi = np.where(rng.random(m) < 0.5, 0.0, math.pi / 4) + np.where(rng.random(m) < 0.5, 0.0, math.pi / 2)
    alice_zero = rng.random(m) < np.cos(_ANGLE_RAD[frame.alice.basis[hit]] - phi) ** 2
    bob_cos2 = np.cos(_ANGLE_RAD[frame.bob.basis[hit]] - phi) ** 2
    bob_zero = rng.random(m) < misalignment + (1 - 2 * misalignment) * bob_cos2
    alice_bit, bob_outcome = frame.alice.bit.copy(), frame.bob.outcome.copy()
    alice_bit[hit] = (~alice_zero).astype(np.uint8)
    bob_outcome[hit] = (~bob_zero).astype(np.uint8)
    return dataclasses.replace(frame, alice=dataclasses.replace(frame.alice, bit=alice_bit),
                               bob=dataclasses.replace(frame.bob, outcome=bob_outcome))


def _select(frame: Frame, keep: np.ndarray) -> Frame:
    a, b = frame.alice, frame.bob
    return dataclasses.replace(
        frame, alice=records.AliceRecords(slot=a.slot[keep], bit=a.bit[keep], basis=a.basis[keep],
                                          intensity=a.intensity[keep]),
        bob=records.BobDetections(slot=b.slot[keep], basis=b.basis[keep], outcome=b.outcome[keep]))


def side_records(side: str, slots: np.ndarray, bases: np.ndarray, outcomes: np.ndarray, frame_id: int,
                 slot_count: int, **extra) -> RawFrame:
    """One end's RawFrame from its detections: Alice's as the records the frame pipeline's Alice takes
    (her outcome in `bits`, her analyser code in `bases`), Bob's as detections."""
    if side == "alice":
        records = AliceRecords(slots=slots, bits=outcomes, bases=bases, intensities=np.zeros(slots.size, np.uint8))
        return RawFrame(frame_id=frame_id, slot_count=slot_count, alice=records,
                        pulses_per_intensity=(slot_count,), **extra)
    return RawFrame(frame_id=frame_id, slot_count=slot_count,
                    bob=BobDetections(slots=slots, bases=bases, outcomes=outcomes), **extra)


class PairSourceDevice(SimAliceDevice):
    """The end hosting the pair source (`local_side`: which end of the link this host is)."""

    def __init__(self, params: SimParams, *, local_side: str, dead_time_ns: float = 0.0,
                 attack: Attack | None = None, seed: int | bytes | None = None, **kwargs):
        if params.protocol != "e91":
            raise DeviceError("sim: the pair source runs protocol e91")
        if local_side not in SIDES:
            raise DeviceError(f"sim: local_side must be alice or bob, got {local_side!r}")
        super().__init__(params, seed=seed, **kwargs)
        self.local_side = local_side
        self._attack = check_attack(attack or Attack())
        self._blind_slots = dead_slots(dead_time_ns, params.clock_hz)
        self._singles_keep_prob = singles_live_probability(pair_rates(params), self._blind_slots)
        self._rng = np.random.default_rng(seed if isinstance(seed, int) else None)

    def set_attack(self, attack: Attack) -> None:
        self._attack = check_attack(attack)

    def decoy_settings(self) -> DecoySettings:
        raise DeviceError("sim: the E91 pair source has no decoy states")

    async def _generate(self):
        controls = self._controls()
        if self._simulator.drift != controls[1]:
            self._simulator.drift = controls[1]
        frame = await run_sync_counted(self.count_cpu, self._run_frame, controls[0])
        return frame, controls

    def _run_frame(self, attack: Attack) -> Frame:
        frame = self._simulator.run(self.frame_slots, self.max_detections)
        frame = apply_dead_time(frame, self._blind_slots, self._singles_keep_prob, self._rng)
        if attack.kind == "intercept-resend":
            misalignment = min(self.params.misalignment + self._simulator.drift.misalignment, 0.5)
            frame = apply_intercept_resend(frame, attack.fraction, misalignment, self._rng)
        return frame

    def _message(self, frame: Frame, frame_id: int) -> wire.FrameMessage:
        message = super()._message(frame, frame_id)          # the far end's detections: Bob's by default
        if self.local_side == "bob":
            message = dataclasses.replace(message, bases=frame.alice.basis, outcomes=frame.alice.bit)
        return message

    def control_status(self) -> dict:
        return {**super().control_status(), "role": self.local_side, "pair_source": True,
                "dead_time_slots": self._blind_slots}

    async def health(self):
        report = await super().health()
        return dataclasses.replace(report, diagnostics={**report.diagnostics, "role": self.local_side,
                                                        "pair_source": True})

    def _account(self, frame: Frame, frame_id: int, message: wire.FrameMessage) -> RawFrame:
        super()._account(frame, frame_id, message)           # statistics
        own = frame.alice if self.local_side == "alice" else frame.bob
        outcomes = own.bit if self.local_side == "alice" else own.outcome
        return side_records(self.local_side, message.slots, own.basis, outcomes, frame_id, frame.slots)


class PairDetectorDevice(SimBobDevice):
    """The far end's detectors: `side` is which end of the link they are."""

    def __init__(self, *, side: str, **kwargs):
        if side not in SIDES:
            raise DeviceError(f"sim: side must be alice or bob, got {side!r}")
        super().__init__(protocol="e91", **kwargs)
        self.side = side

    async def _account(self, message: wire.FrameMessage) -> RawFrame:
        frame = await super()._account(message)
        if self.side == "bob":
            return frame
        return side_records("alice", message.slots_array(), message.bases, message.outcomes, message.frame_id,
                            message.slot_count)
