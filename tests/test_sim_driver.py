"""The sim driver pair over real TCP sockets on 127.0.0.1: paired frames, Bob restarts, strict checks of
wire data, attacks and drifts switched at run time, calibration, pacing, config, and the defaults."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import trio

from qkdd.hal.base import DeviceError, RawFrame
from qkdd.hal.sim import wire
from qkdd.hal.sim.alice import SimAliceDevice
from qkdd.hal.sim.bob import SimBobDevice
from qkdd.hal.sim.pacing import Pacer
from qkdd.hal.sim.params import Attack, Drift
from qkdd.hal.sim.settings import SimConfig

FRAME_SLOTS = 1_000_000          # ~6000 detections at 25 km with the default (modern) system
TIMEOUT_S = 20


def make_alice(**overrides) -> SimAliceDevice:
    options = dict(listen_port=0, frame_slots=FRAME_SLOTS, realtime=False, seed=7, first_frame_id=1000)
    options.update(overrides)
    params = options.pop("params", SimConfig().params("bb84"))
    return SimAliceDevice(params, **options)


def make_bob(alice: SimAliceDevice, **overrides) -> SimBobDevice:
    host, port = alice.address
    return SimBobDevice(host=host, port=port, backoff_initial_s=0.01, backoff_max_s=0.05, **overrides)


async def one_pair(alice: SimAliceDevice, bob: SimBobDevice) -> tuple[RawFrame, RawFrame]:
    got = {}

    async def take(name, device):
        got[name] = await device.next_frame()

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, "alice", alice)
            nursery.start_soon(take, "bob", bob)
    return got["alice"], got["bob"]


def sifted_qber(alice_frame: RawFrame, bob_frame: RawFrame) -> float:
    """Error rate on matching bases, from what each end's device yielded (as the link engine sees it)."""
    a, b = alice_frame.alice, bob_frame.bob
    assert np.array_equal(a.slots, b.slots)
    matched = a.bases == b.bases
    return float(np.mean(a.bits[matched] != b.outcomes[matched]))


def run(test):
    trio.run(test)


# ---- pairing -------------------------------------------------------------------------------------------

def test_paired_frames_have_equal_ids_and_bob_gets_alices_detected_slots():
    async def main():
        alice = make_alice()
        await alice.init()
        bob = make_bob(alice)
        try:
            pairs = [await one_pair(alice, bob) for _ in range(3)]
        finally:
            await bob.close()
            await alice.close()
        assert [a.frame_id for a, _ in pairs] == [1000, 1001, 1002]
        # Bob's checks of these small frames ran on the event loop (under THREAD_PARSE_BYTES) and still count as
        # his device's CPU
        assert 0 < bob.cpu_s < 0.5
        for a, b in pairs:
            assert a.frame_id == b.frame_id and a.slot_count == b.slot_count == FRAME_SLOTS
            assert a.bob is None and b.alice is None
            assert b.bob.slot_stream is not None and b.bob._slots is None      # Bob's slots kept as they came
            assert np.array_equal(a.alice.slots, b.bob.slots)
            assert a.alice.slots.dtype == np.uint64 and b.bob.slots.dtype == np.uint64
            assert np.all(np.diff(a.alice.slots.astype(np.int64)) > 0) and int(a.alice.slots[-1]) < FRAME_SLOTS
            assert sum(a.pulses_per_intensity) == FRAME_SLOTS
            assert 3000 < a.alice.slots.size < 10000
            assert sifted_qber(a, b) < 0.03          # e_det 0.5 % plus dark counts and afterpulses
            assert not b.monitor_alarm
        status = await bob.channel_status()
        # 25 km at 0.2 dB/km; photon rate = detections per simulated second (1 GHz clock)
        assert status.link_loss_db == pytest.approx(5.0)
        assert status.photon_rate_hz == pytest.approx(pairs[-1][1].bob.slots.size * 1e9 / FRAME_SLOTS)
        assert status.visibility == pytest.approx(1 - 2 * status.qber)
        assert (await alice.health()).diagnostics["frames"] == 3

    run(main)


def test_bob_restart_resumes_with_later_frame_ids_and_alice_keeps_running():
    async def main():
        alice = make_alice()
        await alice.init()
        first = make_bob(alice)
        try:
            before = [await one_pair(alice, first) for _ in range(2)]
            await first.close()                       # Bob's daemon goes away
            second = make_bob(alice)                  # ... and comes back with a fresh device
            after = [await one_pair(alice, second) for _ in range(2)]
            await second.close()
        finally:
            await alice.close()
        last_before = before[-1][0].frame_id
        for a, b in after:
            assert a.frame_id == b.frame_id > last_before
            assert np.array_equal(a.alice.slots, b.bob.slots)
        assert after[1][0].frame_id == after[0][0].frame_id + 1
        assert alice.stats["connections"] == 2

    run(main)


def test_bob_waits_for_alice_that_starts_later():
    async def main():
        with trio.socket.socket() as probe:           # a free port nobody listens on yet
            await probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        bob = SimBobDevice(host="127.0.0.1", port=port, backoff_initial_s=0.01, backoff_max_s=0.05)
        alice = make_alice(listen_port=port)

        async def start_alice_later():
            await trio.sleep(0.2)
            await alice.init()
            await alice.next_frame()

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(start_alice_later)
                frame = await bob.next_frame()
        assert frame.frame_id == 1000
        await bob.close()
        await alice.close()

    run(main)


# ---- strict checks of what arrives ---------------------------------------------------------------------

def frame_bytes(frame_id=5, slot_count=100, slots=(1, 2, 3), bases=(0, 1, 0), outcomes=(1, 0, 1),
                loss_db=5.0, power_w=1e-12, qber=0.01) -> bytes:
    message = wire.FrameMessage(frame_id, slot_count, 0, loss_db, power_w, qber, 0.98,
                                np.array(slots, np.uint64), np.array(bases, np.uint8), np.array(outcomes, np.uint8))
    return b"".join(wire.encode_frame(message))


HELLO = wire.encode_alice_hello(wire.AliceHello("bb84", 1e9, 1 << 40))


def header(kind, body_bytes, version=wire.VERSION, magic=wire.MAGIC):
    return wire.HEADER.pack(magic, version, kind, 0, body_bytes)


def with_slot_count(frame: bytes, slot_count: int) -> bytes:
    """A FRAME with its slot_count field (after the header and frame id) replaced."""
    at = wire.HEADER.size + 8
    return frame[:at] + struct.pack("<Q", slot_count) + frame[at + 8:]


def frame_with_stream(stream: bytes, slot_count=100) -> bytes:
    """A FRAME of three detections whose slot stream is `stream` as given (the encoder writes only valid ones)."""
    head = struct.pack("<QQIIdddd", 5, slot_count, 3, 0, 5.0, 1e-12, 0.01, 0.98)
    body = head + stream + bytes((0, 1, 0)) + bytes((1, 0, 1))
    return header(wire.FRAME, len(body)) + body


MALFORMED = {
    "truncated": (HELLO + frame_bytes()[:-5], "closed mid-message"),
    "oversized length": (HELLO + header(wire.FRAME, 1 << 31), "cap"),
    "slot beyond frame": (HELLO + with_slot_count(frame_bytes(slots=(1, 2, 3)), 3),
                          "slot of detection 2 is outside the frame of 3 slots"),
    "unterminated slot varint": (HELLO + frame_with_stream(b"\x81\x82\x83"), "truncated or with an overlong varint"),
    "slot stream past its detections": (HELLO + frame_with_stream(b"\x01\x01\x01\x01"),
                                        "bytes after the last of its 3 detections"),
    "bad basis": (HELLO + frame_bytes(bases=(0, 2, 0)), "basis code 2 out of range"),
    "bad outcome": (HELLO + frame_bytes(outcomes=(0, 1, 7)), "outcome 7 is not a bit"),
    "bad qber": (HELLO + frame_bytes(qber=1.5), "qber"),
    "negative loss": (HELLO + frame_bytes(loss_db=-1.0), "link_loss_db"),
    "wrong version": (header(wire.ALICE_HELLO, 24, version=9), "unsupported wire version 9"),
    "wrong magic": (b"HTTP/1.1 200 OK\r\n\r\n", "not a simulator stream"),
    "frame before hello": (frame_bytes(), "FRAME not allowed in state HELLO"),
    "decreasing frame id": (HELLO + frame_bytes(frame_id=10) + frame_bytes(frame_id=9), "not increasing"),
    "protocol mismatch": (wire.encode_alice_hello(wire.AliceHello("e91", 1e9, 1 << 40)), "configured for bb84"),
    "count disagrees with length": (HELLO + header(wire.FRAME, 56 + 5) +
                                    struct.pack("<QQIIdddd", 1, 10, 2, 0, 0.0, 0.0, 0.0, 0.0) + bytes(5),
                                    "does not hold 2 detections"),
    "stalled mid-frame": (HELLO + frame_bytes()[:-5], "stalled"),
    "frame shorter than its fixed part": (HELLO + header(wire.FRAME, 3) + b"abc", "FRAME body of 3 bytes"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_wire_data_is_a_clear_device_error(case):
    data, expected = MALFORMED[case]

    async def fake_alice(listener, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        stream = await listener.accept()
        async with stream:
            received = b""
            while len(received) < wire.HEADER.size:       # Bob's hello
                received += await stream.receive_some(64)
            await stream.send_all(data)
            if case == "truncated":
                return                                    # close mid-frame
            await trio.sleep_forever()                    # keep the connection open: no hang at Bob

    async def main():
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listener.socket.getsockname()[1]
        bob = SimBobDevice(host="127.0.0.1", port=port, message_timeout_s=1.0, idle_timeout_s=5.0)
        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(fake_alice, listener)
                if case == "decreasing frame id":
                    assert (await bob.next_frame()).frame_id == 10
                with pytest.raises(DeviceError, match=expected) as caught:
                    await bob.next_frame()
                nursery.cancel_scope.cancel()
        assert str(caught.value).startswith("quantum channel")
        health = await bob.health()
        assert not health.ok and expected.split()[0] in health.detail
        await listener.aclose()

    run(main)


def test_receiver_refuses_an_oversized_frame_before_buffering_its_body():
    receiver = wire.Receiver("bob", max_detections=100)
    receiver.receive_data(HELLO)
    assert isinstance(receiver.next_message(), wire.AliceHello)
    cap = 56 + 100 * (wire.native_sift.MAX_VARINT_BYTES + wire.COLUMN_BYTES_PER_DETECTION)
    receiver.receive_data(header(wire.FRAME, cap + 1))
    with pytest.raises(wire.WireError, match=f"cap {cap}"):
        receiver.next_message()


@pytest.mark.parametrize("slots, slot_count", [((1, 3, 2), 100), ((1, 2, 2), 100), ((1, 2, 3), 3)])
def test_the_encoder_refuses_slots_the_wire_cannot_carry(slots, slot_count):
    with pytest.raises(ValueError, match="frame 5"):
        frame_bytes(slots=slots, slot_count=slot_count)


def test_a_frame_of_record_system_gaps_crosses_in_about_three_bytes_a_detection():
    rng = np.random.default_rng(3)
    slots = np.cumsum(rng.geometric(1 / 30, 100_000)).astype(np.uint64)   # yuan2018 at 10 km: ~1 in 30 slots
    data = frame_bytes(slot_count=int(slots[-1]) + 1, slots=slots, bases=slots % 2, outcomes=slots % 3 == 0)
    assert 3.0 < (len(data) - wire.HEADER.size - 56) / slots.size < 3.1
    receiver = wire.Receiver("bob", max_detections=slots.size)
    receiver.receive_data(HELLO + data)
    assert isinstance(receiver.next_message(), wire.AliceHello)
    got = receiver.next_message()
    assert np.array_equal(got.slots_array(), slots) and np.array_equal(got.bases, slots % 2)
    assert np.array_equal(got.outcomes, slots % 3 == 0)


def test_receiver_refuses_a_frame_too_short_for_its_fixed_part_before_parsing_it():
    receiver = wire.Receiver("bob")
    receiver.receive_data(HELLO)
    assert isinstance(receiver.next_message(), wire.AliceHello)
    receiver.receive_data(header(wire.FRAME, 55))
    with pytest.raises(wire.WireError, match="FRAME body of 55 bytes"):
        receiver.next_message()


# ---- run-time control ------------------------------------------------------------------------------------

def test_attack_switched_at_run_time_changes_the_qber_of_later_frames():
    async def main():
        alice = make_alice()
        await alice.init()
        bob = make_bob(alice)
        try:
            honest = await one_pair(alice, bob)
            alice.set_attack(Attack.parse("intercept-resend:1"))
            attacked = await one_pair(alice, bob)
            alice.set_attack(Attack())
            recovered = await one_pair(alice, bob)
            status = await bob.channel_status()
        finally:
            await bob.close()
            await alice.close()
        assert sifted_qber(*honest) < 0.03
        # full intercept-resend in random bases: 25 % errors (Bennett, Brassard, IEEE ICCSSP 1984)
        assert sifted_qber(*attacked) == pytest.approx(0.25, abs=0.03)
        assert sifted_qber(*recovered) < 0.03
        assert status.qber < 0.03

    run(main)


def test_pns_and_blinding_switch_and_bob_monitor_alarms_on_blinding():
    async def main():
        alice = make_alice()
        await alice.init()
        bob = make_bob(alice, monitor=True)
        try:
            _, quiet = await one_pair(alice, bob)
            alice.set_attack(Attack.parse("blinding"))
            _, blinded = await one_pair(alice, bob)
            bob.set_monitor(False)
            _, unmonitored = await one_pair(alice, bob)
        finally:
            await bob.close()
            await alice.close()
        assert not quiet.monitor_alarm and blinded.monitor_alarm and not unmonitored.monitor_alarm
        assert bob.stats["monitor_alarms"] == 1
        with pytest.raises(ValueError, match="E91"):
            make_alice(params=SimConfig().params("e91")).set_attack(Attack.parse("pns"))

    run(main)


def test_calibrate_clears_misalignment_drift_from_either_end():
    async def main():
        alice = make_alice()
        await alice.init()
        bob = make_bob(alice)
        try:
            alice.set_drift(Drift(extra_loss_db=1.0, misalignment=0.1))
            drifted = await one_pair(alice, bob)
            assert (await alice.channel_status()).link_loss_db == pytest.approx(6.0)
            report = await alice.calibrate()
            realigned = await one_pair(alice, bob)

            alice.set_drift(Drift(misalignment=0.1))
            await one_pair(alice, bob)
            async with trio.open_nursery() as nursery:      # Bob's calibrate waits for a confirming frame
                async def keep_frames_flowing():
                    while True:
                        await one_pair(alice, bob)
                nursery.start_soon(keep_frames_flowing)
                with trio.fail_after(TIMEOUT_S):
                    bob_report = await bob.calibrate()
                nursery.cancel_scope.cancel()
            after_bob = await one_pair(alice, bob)
        finally:
            await bob.close()
            await alice.close()
        assert sifted_qber(*drifted) == pytest.approx(0.105, abs=0.03)
        assert report["misalignment_drift_before"] == 0.1 and report["misalignment_drift_after"] == 0.0
        assert report["expected_qber_before"] > 0.09 > 0.02 > report["expected_qber_after"]
        assert alice.drift == Drift(extra_loss_db=0.0) or alice.drift.misalignment == 0.0
        assert sifted_qber(*realigned) < 0.03
        assert bob_report["confirmed"] and bob_report["request_seq"] == 1
        assert sifted_qber(*after_bob) < 0.03

    run(main)


# ---- pacing ----------------------------------------------------------------------------------------------

def test_pacer_timeline_follows_the_clock_and_restarts_instead_of_bursting():
    pacer = Pacer(1e6)
    pacer.restart(100.0)
    assert pacer.frame_done_s(500_000, 100.0) == pytest.approx(100.5)
    assert pacer.frame_done_s(500_000, 100.2) == pytest.approx(101.0)     # the next frame follows on
    assert pacer.frame_done_s(1_000_000, 105.0) == pytest.approx(106.0)   # 4 s behind: restart now
    assert Pacer(1e6, realtime=False).frame_done_s(10 ** 9, 7.0) == 7.0


def test_realtime_alice_does_not_outrun_its_clock():
    async def main():
        # 10 MHz clock, 200 000 slots per frame: 20 ms of source time per frame
        params = SimConfig(clock_hz=1e7).params("bb84")
        alice = make_alice(params=params, frame_slots=200_000, realtime=True)
        await alice.init()
        bob = make_bob(alice)
        try:
            await one_pair(alice, bob)                       # connection set up; timeline starts
            started = trio.current_time()
            for _ in range(5):
                await one_pair(alice, bob)
            elapsed_s = trio.current_time() - started
        finally:
            await bob.close()
            await alice.close()
        assert alice.simulated_time_s == pytest.approx(6 * 0.02)
        assert elapsed_s >= 5 * 0.02 * 0.9                   # never faster than the clock (upper bound: none)

    run(main)


# ---- config and defaults -------------------------------------------------------------------------------------

def test_device_for_builds_both_ends_from_the_link_config(tmp_path):
    from qkdd.config import load_config
    from qkdd.hal.sim.driver import device_for

    path = tmp_path / "qkdd.toml"
    path.write_text('[[links]]\nlink_id = "a"\nrole = "alice"\ndriver = "sim"\ndevice_addr = "127.0.0.1:0"\n'
                    '[links.sim]\ndistance_km = 10\nframe_slots = 100000\nrealtime = false\nseed = 3\n'
                    'allow_insecure_seed = true\n'
                    'attack = "intercept-resend:0.5"\nmisalignment_drift = 0.02\n'
                    '[[links]]\nlink_id = "b"\nrole = "bob"\ndriver = "sim"\ndevice_addr = "127.0.0.1:7081"\n'
                    '[links.sim]\nmonitor = true\n')
    config = load_config(str(path), {})
    alice, bob = device_for(config.link("a")), device_for(config.link("b"))
    assert isinstance(alice, SimAliceDevice) and isinstance(bob, SimBobDevice)
    assert alice.params.distance_km == 10 and alice.frame_slots == 100_000
    assert alice.attack == Attack("intercept-resend", 0.5) and alice.drift.misalignment == 0.02
    assert (bob.host, bob.port, bob.monitor_enabled) == ("127.0.0.1", 7081, True)


@pytest.mark.parametrize("toml, key", [
    ('[links.sim]\nattack = "eavesdrop"\n', "links[0].sim.attack"),
    ('[links.sim]\nseed = 3\n', "links[0].sim.seed"),              # predictable keys unless allowed
    ('[links.sim]\nseed = 3\nallow_insecure_seed = false\n', "links[0].sim.seed"),
    ('[links.sim]\nmu_signal = 0.1\nmu_decoy = 0.2\n', "links[0].sim.mu_signal"),
    ('[links.sim]\nframe_slots = 0\n', "links[0].sim.frame_slots"),
    ('[links.sim]\ndistnce_km = 3\n', "links[0].sim.distnce_km"),
])
def test_bad_sim_config_names_the_key(tmp_path, toml, key):
    from qkdd.config import ConfigError, load_config

    path = tmp_path / "qkdd.toml"
    path.write_text('[[links]]\nlink_id = "a"\nrole = "alice"\ndriver = "sim"\n' + toml)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert caught.value.key == key


@pytest.mark.parametrize("distance_km, at_least", [(10, 3_000_000), (20, 2_000_000)])
def test_default_frames_are_at_least_as_large_as_the_bench_frames(distance_km, at_least):
    """bench.link measured more secret rate with 2 M-detection frames than with 1 M (1.15e6 vs 7.9e5 bit/s
    at 10 km). The daemon's defaults already give frames of that size up to 20 km: a frame ends at
    frame_slots (2^28) long before the 4 M max_detections_per_frame cap, which only bites below ~5 km."""
    from qkdd.hal.sim.simulator import Simulator

    config = SimConfig(distance_km=distance_km)
    expected = Simulator(config.params("bb84"), seed=bytes(32)).expected()
    detections = expected["click_prob"] * config.frame_slots
    assert at_least <= detections < config.max_detections_per_frame
    assert config.max_detections_per_frame >= 2 * (1 << 21)       # the bench's frames fit twice


def test_default_system_yields_finite_key_at_25_km_where_gys_yields_none():
    from qkdd.hal.sim.simulator import Simulator
    from qkdd.hal.sim.tally import Bb84Tally
    from qkdd.protocols.bb84_finite import DecoySettings, expected_counts, finite_key_length
    from qkdd.protocols.channel import ChannelParams

    config = SimConfig()
    params = config.params("bb84")
    settings = DecoySettings(mu_signal=params.mu_signal, mu_decoy=params.mu_decoy, mu_vacuum=params.mu_vacuum,
                             p_signal=params.p_signal, p_decoy=params.p_decoy, q_x=params.q_x)
    # one default frame (2^28 slots) of the simulator at 25 km, estimated with Lim et al. (2014)
    tally = Bb84Tally()
    tally.add(Simulator(params, seed=11).run(config.frame_slots, config.max_detections_per_frame))
    result = finite_key_length(tally.decoy_counts(), settings, eps_sec=1e-10, eps_cor=1e-15, f_ec=1.16)
    assert not result.abort and result.key_length_bits > 150_000
    # GYS (Ma, Qi, Zhao, Lo 2005, Table I) at 25 km: not even 10^9 pulses leave a finite key
    gys = ChannelParams(distance_km=25.0, f_ec=1.16)
    gys_settings = DecoySettings(mu_signal=0.5, mu_decoy=0.1, p_signal=0.8, p_decoy=0.1, q_x=0.9)
    gys_result = finite_key_length(expected_counts(gys, gys_settings, 1e9), gys_settings, eps_sec=1e-10,
                                   eps_cor=1e-15, f_ec=1.16)
    assert gys_result.key_length_bits == 0
    assert math.isfinite(tally.error_rate("X", 0)) and tally.error_rate("X", 0) < 0.02


def test_alice_refuses_a_stray_connection_and_serves_the_real_receiver():
    async def main():
        alice = make_alice(hello_timeout_s=0.5)
        await alice.init()
        stray = await trio.open_tcp_stream(*alice.address)
        await stray.send_all(b"GET / HTTP/1.1\r\n\r\n")
        silent = await trio.open_tcp_stream(*alice.address)          # says nothing: hello timeout
        bob = make_bob(alice)
        try:
            a, b = await one_pair(alice, bob)
        finally:
            await stray.aclose()
            await silent.aclose()
            await bob.close()
            await alice.close()
        assert a.frame_id == b.frame_id == 1000 and alice.stats["connections"] == 1

    run(main)


def test_e91_pair_carries_bob_analyser_codes_and_visibility_from_chsh():
    async def main():
        params = SimConfig(distance_km=10, pair_mean=0.05).params("e91")
        alice = make_alice(params=params, frame_slots=20_000_000)
        await alice.init()
        host, port = alice.address
        bob = SimBobDevice(host=host, port=port, protocol="e91")
        try:
            a, b = await one_pair(alice, bob)
        finally:
            await bob.close()
            await alice.close()
        assert a.frame_id == b.frame_id and np.array_equal(a.alice.slots, b.bob.slots)
        assert set(np.unique(a.alice.bases)) <= {0, 1} and set(np.unique(b.bob.bases)) == {0, 1, 2, 3}
        status = await bob.channel_status()
        # Werner state: S = 2 sqrt(2) V (qkdd.protocols.e91); multi-pair emission lowers V below 1
        assert 0.7 < status.visibility < 1.0

    run(main)


def test_close_ends_a_waiting_next_frame_with_a_device_error():
    async def main():
        alice = make_alice()
        await alice.init()
        host, port = alice.address
        errors = []

        async def wait_for_frame(device):
            try:
                await device.next_frame()
            except DeviceError as exc:
                errors.append(str(exc))

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_frame, alice)          # no Bob: waits in accept
                await trio.sleep(0.05)
                await alice.close()
            bob = SimBobDevice(host=host, port=port, backoff_initial_s=0.01, backoff_max_s=0.02)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_frame, bob)            # no Alice: retries with backoff
                await trio.sleep(0.05)
                await bob.close()
        assert errors == ["sim: device closed", "sim: device closed"]

    run(main)


def test_bob_process_killed_and_restarted_resumes_with_later_frame_ids():
    import os
    import signal
    import subprocess
    import sys

    helper = os.path.join(os.path.dirname(__file__), "sim_bob_process.py")

    async def read_lines(process, into, count):
        buffer = b""
        while len(into) < count:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            into.extend(tuple(int(x) for x in line.split()) for line in lines)

    async def main():
        alice = make_alice()
        await alice.init()
        host, port = alice.address
        yielded = []
        seen = [[], []]
        try:
            for generation in range(2):
                process = await trio.lowlevel.open_process([sys.executable, helper, host, str(port)],
                                                           stdout=subprocess.PIPE)
                with trio.fail_after(TIMEOUT_S):
                    for _ in range(3):
                        yielded.append((generation, (await alice.next_frame()).frame_id))
                    await read_lines(process, seen[generation], 3)
                os.kill(process.pid, signal.SIGKILL)            # Bob's daemon dies without a word
                await process.wait()
                await process.stdout.aclose()
        finally:
            await alice.close()
        first = [frame_id for g, frame_id in yielded if g == 0]
        second = [frame_id for g, frame_id in yielded if g == 1]
        assert [frame_id for frame_id, _ in seen[0][:3]] == first
        assert [frame_id for frame_id, _ in seen[1][:3]] == second
        assert min(second) > max(first)
        assert alice.stats["connections"] == 2

    run(main)


def test_alice_restart_keeps_frame_ids_increasing_at_bob():
    async def main():
        first = make_alice(first_frame_id=None)              # ids from the wall clock in microseconds
        await first.init()
        host, port = first.address
        bob = SimBobDevice(host=host, port=port, backoff_initial_s=0.01, backoff_max_s=0.05)
        try:
            before, _ = await one_pair(first, bob)
            await first.close()
            second = make_alice(first_frame_id=None, listen_port=port, seed=8)
            await second.init()
            after, after_bob = await one_pair(second, bob)
            await second.close()
        finally:
            await bob.close()
        assert after.frame_id == after_bob.frame_id > before.frame_id

    run(main)


def test_channel_status_takes_the_engines_qber_and_the_temperature_drifts_slowly():
    from qkdd.hal.sim import ambient

    async def main():
        alice = make_alice()
        await alice.init()
        bob = make_bob(alice)
        try:
            await one_pair(alice, bob)
            measured = (await alice.channel_status()).qber
            for device in (alice, bob):
                device.update_estimates(qber=0.042, key_rate_bps=1.5e5)
                status = await device.channel_status()
                assert (status.qber, status.key_rate_bps) == (0.042, 1.5e5)
                assert status.visibility == pytest.approx(1 - 2 * 0.042)
                assert status.uptime_s > 0 and abs(status.temperature_c - 22.0) <= ambient.TEMPERATURE_SWING_C
        finally:
            await bob.close()
            await alice.close()
        assert 0 < measured < 0.03
        assert status.as_json()["link_loss"] == pytest.approx(5.0)

    run(main)
    samples = [ambient.temperature_c(22.0, t) for t in range(0, 7200, 60)]
    assert max(samples) - min(samples) == pytest.approx(2 * ambient.TEMPERATURE_SWING_C, abs=0.01)
    assert max(abs(a - b) for a, b in zip(samples, samples[1:])) < 0.06     # < 0.06 degC per minute


def test_a_receiver_that_only_realigns_cannot_keep_alice_waiting_for_an_ack():
    """A receiver that answers each frame with REALIGNs and never an ACK: Alice drops the frame and the
    connection once ack_timeout_s has passed since she handed the frame over, then serves a real Bob.
    (Real time: the quantum channel here is a real TCP connection.)"""
    async def main():
        alice = make_alice(ack_timeout_s=0.5)
        await alice.init()
        stalling = await trio.open_tcp_stream(*alice.address)
        await stalling.send_all(wire.encode_bob_hello())

        async def realign_for_ever():
            seq = 0
            while True:
                with trio.move_on_after(0.02):
                    try:
                        if not await stalling.receive_some(1 << 16):
                            return                                    # Alice hung up
                    except trio.BrokenResourceError:
                        return                                        # ... with a reset
                seq += 1
                try:
                    await stalling.send_all(wire.encode_realign(seq))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(realign_for_ever)
            taken = trio.Event()

            async def take():
                await alice.next_frame()
                taken.set()

            nursery.start_soon(take)
            with trio.fail_after(TIMEOUT_S):
                while alice.stats["frames_dropped"] == 0:
                    await trio.sleep(0.05)
            bob = make_bob(alice)
            try:
                with trio.fail_after(TIMEOUT_S):
                    await bob.next_frame()
                    await taken.wait()
            finally:
                await bob.close()
                await stalling.aclose()
                await alice.close()
        assert alice.stats["frames_dropped"] >= 1

    run(main)
