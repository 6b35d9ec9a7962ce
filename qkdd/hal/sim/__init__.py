"""Physics simulator of a QKD link: weak-coherent decoy BB84 or an SPDC entangled-pair source (E91) over
fiber to threshold detectors, with attacks and drifts, sampled in the C kernel at O(detections).

    Simulator(SimParams(...), seed=...)       one link's source, fiber and receiver
        .attack = Attack.parse("pns"); .drift = Drift(extra_loss_db=3)
        .run(n_slots, max_records) -> Frame  Alice's records and Bob's detections, pulses per class
    montecarlo.run(...)                       `qkdctl sim run`: estimation and key length over many frames
    driver.device_for(link_config)            the HAL devices of a simulated link: SimAliceDevice (source,
                                              fiber, listener) and SimBobDevice (receiver), joined by the
                                              simulated quantum channel of wire.py
"""
from qkdd.hal.sim.params import Attack, Drift, SimParams
from qkdd.hal.sim.records import AliceRecords, BobDetections, Frame
from qkdd.hal.sim.simulator import Simulator

__all__ = ["Attack", "Drift", "SimParams", "AliceRecords", "BobDetections", "Frame", "Simulator"]
