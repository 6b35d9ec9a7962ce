"""The simulated devices' frame path without frame-sized temporaries: the frame QBER counted in cache-sized
passes and Alice's and Bob's slots as one column, each checked against the plain way of doing the same."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qkdd.hal.sim import ambient
from qkdd.hal.sim.settings import SimConfig
from qkdd.hal.sim.simulator import Simulator

YUAN = SimConfig(**SimConfig.expand_table({"system": "yuan2018", "distance_km": 10.0}, "sim"))


def plain_qber(f) -> float:
    matched = f.alice.basis == f.bob.basis
    n = int(np.count_nonzero(matched))
    return math.nan if n == 0 else float(np.count_nonzero(f.alice.bit[matched] != f.bob.outcome[matched]) / n)


@pytest.mark.parametrize("protocol", ["bb84", "e91"])
@pytest.mark.parametrize("records", [0, 1, 6, 7, 8, 50_001])
def test_frame_qber_in_passes_equals_the_whole_frame_count(monkeypatch, protocol, records):
    monkeypatch.setattr(ambient, "QBER_CHUNK", 7)
    f = Simulator(YUAN.params(protocol), seed=5).run(1 << 30 if records else 0, max(records, 1))
    expected, got = plain_qber(f), ambient.frame_qber(f)
    assert (math.isnan(expected) and math.isnan(got)) or got == expected
    if records == 0:
        assert math.isnan(got)
    if records == 50_001:
        assert 0.005 < got < 0.1            # yuan2018 at 10 km: a few per cent


def test_one_slot_column_is_the_same_frame_as_two():
    params = YUAN.params("bb84")
    two = Simulator(params, seed=9).run(1 << 30, 20_000)
    one = Simulator(params, seed=9).run(1 << 30, 20_000, copy_slots=False)
    assert one.bob.slot is one.alice.slot and two.bob.slot is not two.alice.slot
    assert (one.first_slot, one.slots, one.pulses_per_class) == (two.first_slot, two.slots, two.pulses_per_class)
    for name in ("slot", "bit", "basis", "intensity"):
        assert np.array_equal(getattr(one.alice, name), getattr(two.alice, name))
    for name in ("slot", "basis", "outcome"):
        assert np.array_equal(getattr(one.bob, name), getattr(two.bob, name))
