"""From a simulated frame to what each end's device hands its link engine: Alice's records of the
detected slots and the pulses she sent, Bob's detections (slot numbers relative to the frame)."""
from __future__ import annotations

import numpy as np

from qkdd.hal.base import AliceRecords, BobDetections, RawFrame
from qkdd.hal.sim.params import SimParams
from qkdd.hal.sim.records import Frame
from qkdd.protocols.bb84_finite import DecoySettings


def decoy_settings(params: SimParams) -> DecoySettings:
    """The three-intensity settings of a BB84 source (Lim et al. 2014 notation)."""
    return DecoySettings(mu_signal=params.mu_signal, mu_decoy=params.mu_decoy, mu_vacuum=params.mu_vacuum,
                         p_signal=params.p_signal, p_decoy=params.p_decoy, q_x=params.q_x)


def raw_frames(frame: Frame, frame_id: int, *, monitor_alarm: bool = False) -> tuple[RawFrame, RawFrame]:
    """(Alice's RawFrame, Bob's RawFrame) of one simulated frame; slots count from the frame's start."""
    slots = (frame.alice.slot - np.uint64(frame.first_slot)).astype(np.uint64)
    alice = RawFrame(frame_id=frame_id, slot_count=frame.slots,
                     alice=AliceRecords(slots=slots, bits=frame.alice.bit, bases=frame.alice.basis,
                                        intensities=frame.alice.intensity),
                     pulses_per_intensity=tuple(int(p) for p in frame.pulses_per_class))
    bob = RawFrame(frame_id=frame_id, slot_count=frame.slots,
                   bob=BobDetections(slots=slots.copy(), bases=frame.bob.basis, outcomes=frame.bob.outcome),
                   monitor_alarm=monitor_alarm)
    return alice, bob
