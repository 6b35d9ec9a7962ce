"""The stall watch on trio's MockClock against a real Health: a generating link below its key-rate floor for
stall_after_s is reported "stalled" (unhealthy, one warning line), and the alarm clears by itself."""
from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from qkdd.health import Health
from qkdd.link.stall import BELOW, OK, STALLED, StallDetector, run_stall_watch

LINK = "sim-1"


def test_the_detector_counts_only_time_spent_generating_below_the_floor():
    detector = StallDetector(1000.0, 60.0)
    assert detector.observe(0.0, 5000.0, True) is None and detector.state == OK
    assert detector.observe(10.0, 200.0, True) is None and detector.state == BELOW
    assert detector.observe(69.0, 200.0, True) is None                       # 59 s below
    change = detector.observe(70.0, 0.0, True)
    assert change.stalled and "below the floor of 1000 bit/s for 60 s" in change.detail and detector.state == STALLED
    assert detector.observe(80.0, 0.0, True) is None                         # said once
    change = detector.observe(90.0, 1500.0, True)
    assert not change.stalled and detector.state == OK
    assert detector.observe(100.0, 10.0, True) is None and detector.state == BELOW   # the clock starts afresh
    assert detector.observe(150.0, 10.0, False) is None and detector.state == OK     # not generating: reset
    assert detector.observe(200.0, 10.0, True) is None                              # 0 s below again
    assert detector.observe(259.0, 10.0, True) is None
    assert detector.observe(260.0, 10.0, True).stalled
    assert not detector.observe(261.0, 0.0, False).stalled                          # leaves the running states
    with pytest.raises(ValueError):
        StallDetector(0.0, 60.0)


def test_a_link_below_its_floor_is_reported_stalled_and_recovers_by_itself(caplog):
    caplog.set_level(logging.INFO, "qkdd.link")
    health = Health()
    health.register_link(LINK)
    health.set_daemon_state("serving")
    health.set_link_state(LINK, "running", "generating keys")
    link = {"rate_bps": 2000.0, "generating": True}

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_stall_watch, LINK, health, StallDetector(1000.0, 60.0),
                               lambda: link["rate_bps"], lambda: link["generating"])
            await trio.sleep(30)
            link["rate_bps"] = 150.0                   # 0-2 kbit/s under a long delay: "running" until now
            await trio.sleep(57)
            assert health.link_state(LINK).state == "running" and health.healthy()
            await trio.sleep(6)
            record = health.link_state(LINK)
            assert record.state == "stalled" and "150 bit/s" in record.detail and not health.healthy()
            assert health.report()["links"][0]["alarms"] == ["stalled"]
            await trio.sleep(600)                      # still stalled: no further line
            link["rate_bps"] = 5000.0
            await trio.sleep(3)
            assert health.link_state(LINK).state == "running" and health.healthy()
            link["rate_bps"], link["generating"] = 0.0, False     # e.g. suspended by the QBER gate: not a stall
            await trio.sleep(600)
            assert health.link_state(LINK).state == "running"
            link["rate_bps"], link["generating"] = 0.0, True
            await trio.sleep(70)
            assert health.link_state(LINK).state == "stalled"
            nursery.cancel_scope.cancel()
        assert health.link_state(LINK).state == "running"      # the watch ends: its alarm goes with it

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    warnings = [r.getMessage() for r in caplog.records if r.name == "qkdd.link" and r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(f"link {LINK}: stalled" in line for line in warnings)
