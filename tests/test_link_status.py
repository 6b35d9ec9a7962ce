"""LinkStatus, in process: both ends' key rates agree however their frames' moments differ; a link whose device
is not up yet is "starting", not halted; the QBER gate's DEGRADED is "fallback", apart from "halted"."""
from __future__ import annotations

import pytest
import trio
import trio.testing

from qkdd.hal.sim import SimParams
from qkdd.hal.sim.alice import SimAliceDevice
from qkdd.health import Health
from qkdd.link.pipeline import FrameOutcome
from qkdd.link.status import DEVICE_START_GRACE_S, RATE_WINDOW_S, LinkStatus


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def outcome(frame_id: int, secret_bits: int) -> FrameOutcome:
    return FrameOutcome(frame_id, "alice", sifted_bits=4 * secret_bits, secret_bits=secret_bits, keys=0,
                        qber=0.02)


def test_both_ends_report_the_same_rate_for_the_same_frames_recorded_a_moment_apart():
    """A burst of frames right after the session came up, recorded 0.6 s later at one end: the rate is the
    window's bits over the session's age (at least 1 s), the same at both, not bits over the burst's span."""
    clocks = {"alice": Clock(), "bob": Clock()}
    ends = {role: LinkStatus("l", key_bits=256, clock=clocks[role]) for role in clocks}
    for status in ends.values():
        status.session_up()
    for role, lag_s in (("alice", 0.0), ("bob", 0.6)):
        clock = clocks[role]
        clock.now_s += 4.0 + lag_s                   # four seconds to the burst of three frames
        for frame_id in range(3):
            ends[role].record(outcome(frame_id, 100_000))
            clock.now_s += 0.05
    for clock in clocks.values():
        clock.now_s = 1005.0
    alice, bob = ends["alice"].rates()[0], ends["bob"].rates()[0]
    assert alice == bob == pytest.approx(300_000 / 5.0)
    for clock in clocks.values():                    # past the window the frames drop out
        clock.now_s = 1005.0 + RATE_WINDOW_S
    assert ends["alice"].rates() == (0.0, 0.0)


def test_a_new_session_starts_its_rates_afresh():
    clock = Clock()
    status = LinkStatus("l", key_bits=256, clock=clock)
    status.session_up()
    clock.now_s += 2.0
    status.record(outcome(1, 50_000))
    status.session_down()
    clock.now_s += 1.0
    status.session_up()
    assert status.rates() == (0.0, 0.0)
    clock.now_s += 0.2                               # less than a second: over 1 s, not 0.2 s
    status.record(outcome(2, 10_000))
    assert status.rates()[0] == pytest.approx(10_000)


def test_a_device_not_up_yet_is_starting_then_fallback_after_the_grace():
    """A real simulated Alice device that is not listening yet answers unhealthy: the link says "starting"
    (healthy) for DEVICE_START_GRACE_S, then the gate's DEGRADED, shown as "fallback" (unhealthy)."""
    async def main():
        health = Health(clock=trio.current_time)
        health.register_link("l")
        health.set_daemon_state("serving")
        status = LinkStatus("l", key_bits=256, health=health, clock=trio.current_time)
        device = SimAliceDevice(SimParams(distance_km=10.0), listen_port=0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(status.watch_device, device)
            status.session_up()
            await trio.sleep(DEVICE_START_GRACE_S - 5)
            assert health.link_state("l").state == "starting" and health.healthy()
            assert "waiting for the device" in health.link_state("l").detail
            await trio.sleep(10)
            assert health.link_state("l").state == "fallback" and not health.healthy()
            assert health.report()["links"][0]["detail"].startswith("gate DEGRADED")
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_device_that_comes_up_runs_and_a_compromised_frame_halts_not_fallback():
    async def main():
        health = Health(clock=trio.current_time)
        health.register_link("l")
        health.set_daemon_state("serving")
        status = LinkStatus("l", key_bits=256, health=health, clock=trio.current_time)
        device = SimAliceDevice(SimParams(distance_km=10.0), listen_port=0)
        async with trio.open_nursery() as nursery:
            await device.init()                      # listening: healthy, though no receiver is connected
            nursery.start_soon(status.watch_device, device)
            status.session_up()
            await trio.sleep(1)
            assert health.link_state("l").state == "running"
            status.record(FrameOutcome(1, "alice", qber=0.2))
            status.gate(0.2)                         # one frame at 20 % QBER: compromised
            status.drain_gate()
            assert health.link_state("l").state == "halted"
            assert "11 %" in health.link_state("l").detail
            await device.close()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_halt_drained_before_any_frame_qber_is_recorded_is_reported_and_survives_a_new_session():
    """A restarted end whose first frames meet an attack: the gate's decision (queued from a frame's worker
    thread) is drained before any frame's QBER is in the history. The link reports halted with the gate's
    QBER, and so does the next session, instead of the frame channel failing on the missing QBER (which left
    the link unable to run frames, and so to recover, until the daemon restarted)."""
    async def main():
        health = Health(clock=trio.current_time)
        health.register_link("l")
        health.set_daemon_state("serving")
        status = LinkStatus("l", key_bits=256, health=health, clock=trio.current_time)
        device = SimAliceDevice(SimParams(distance_km=10.0), listen_port=0)
        async with trio.open_nursery() as nursery:
            await device.init()
            nursery.start_soon(status.watch_device, device)
            status.session_up()
            await trio.sleep(1)
            assert status.gate(0.26) is not None and status.last_qber is None      # refused, nothing recorded
            status.drain_gate()
            assert health.link_state("l").state == "halted"
            assert health.link_state("l").detail == "QBER 0.2600 at or above 11 %: key generation halted"
            status.session_down()
            status.session_up()                      # the next session's frame channel starts
            assert health.link_state("l").state == "halted"
            await device.close()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_frame_with_codewords_given_up_is_logged_and_counted_as_kept(caplog):
    """A frame whose LDPC reconciliation gave up codewords still counts its key; the log says how many, with no
    key material, and a frame that gave none up logs nothing."""
    status = LinkStatus("l", key_bits=256, clock=Clock())
    status.session_up()
    with caplog.at_level("INFO", logger="qkdd.link"):
        status.record(outcome(1, 100_000))
        given_up = outcome(2, 90_000)
        given_up.codewords_given_up = 2
        status.record(given_up)
    lines = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert lines == ["link l: frame 2: 2 LDPC codewords given up (their key bits zeroed at both ends and counted as "
                     "disclosed), the rest reconciled"]
    assert status.totals["secret_bits"] == 190_000 and status.frames_aborted == 0
