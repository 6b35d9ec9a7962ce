"""Device faults are logged once per episode, not once per retry (qkdd.fault_episodes): the state table on a
controlled clock, then each driver retrying a failing device many times against its real counterpart (a
vendor KME over real mutual TLS, a real pty, the reference SDK library), with the log lines counted."""
from __future__ import annotations

import logging
import os
import shutil

import pytest
import trio

from qkdd import fault_episodes
from qkdd.fault_episodes import FaultEpisodes
from qkdd.hal.etsi014.client import Etsi014Error
from qkdd.hal.sdk.device import SdkDevice
from qkdd.hal.sdk.settings import SdkConfig
from qkdd.hal.serial import frames as wire
from qkdd.hal.serial.device import SerialDevice
from qkdd.hal.serial.emulator import Pty, chunks
from qkdd.hal.serial.settings import SerialConfig
from qkdd.hal.sim.alice import SimAliceDevice
from qkdd.hal.sim.bob import SimBobDevice
from qkdd.hal.sim.settings import SimConfig
from qkdd.health import Health
from qkdd.link import key_relay
from qkdd.link import status as link_status
from qkdd.link.status import LinkStatus
from qkdd.pki import init_pki
from tests.etsi014_support import free_port
from tests.link_support import frame_pair, simulator
from tests.test_driver_etsi014 import relay_pair, scripted, wait_for
from tests.test_driver_sdk import compile_library
from tests.vendor_kme_support import SharedKeys

LINK = "vendor-ab"


def lines(caplog, prefix: str, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith(prefix) and (level is None or r.levelno == level)]


# ---- the state table -----------------------------------------------------------------------------
def test_driver_fault_episodes_one_line_per_episode_kind_and_interval(caplog):
    now = [0.0]
    log = logging.getLogger("qkdd.test.faults")
    faults = FaultEpisodes(log, "dev", summary_interval_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="qkdd.test.faults"):
        assert faults.fault("timeout", "no answer within 3 s")          # the episode's first line
        written = 0
        for _ in range(1000):                                           # 1000 retries, one every 0.5 s
            now[0] += 0.5
            written += faults.fault("timeout", "no answer within 3 s")
        assert written == 8                                             # 500 s: one summary a minute
        assert faults.fault("unreachable", "connection refused")        # a kind new to the episode: its line
        assert not faults.fault("unreachable", "connection refused")
        now[0] += 61
        assert faults.flush() and not faults.flush()                    # a due summary, then nothing
        assert faults.recovered("answers again") and not faults.recovered()
        assert not faults.flush()
        assert faults.fault("timeout", "no answer within 3 s")          # a new episode starts afresh
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 + 8 + 1 + 1 + 1 + 1
    assert messages[0] == "dev: no answer within 3 s"
    assert messages[1] == "dev: 120 more faults since the last line (timeout 120); last: no answer within 3 s"
    assert messages[10] == ("dev: 41 more faults since the last line (timeout 40, unreachable 1); "
                           "last: connection refused")
    assert messages[11] == "dev: answers again after 561.0 s (1003 faults)"
    assert sum(int(m.split()[1]) for m in messages[1:11] if "more faults" in m) + 2 == 1003


def test_driver_fault_episodes_of_a_stream_end_when_quiet(caplog):
    now = [0.0]
    log = logging.getLogger("qkdd.test.stream")
    faults = FaultEpisodes(log, "tty", summary_interval_s=10.0, ends_when_quiet=True, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="qkdd.test.stream"):
        for _ in range(50):                               # a burst of CRC errors within one second
            now[0] += 0.02
            faults.fault("crc", "frame failed its CRC")
        now[0] += 10
        assert faults.flush() and not faults.failing      # quiet for an interval: the count, and the end
        now[0] += 100
        assert faults.fault("crc", "frame failed its CRC")
    assert [r.getMessage() for r in caplog.records] == [
        "tty: frame failed its CRC", "tty: 49 more faults since the last line (crc 49); last: frame failed its CRC",
        "tty: frame failed its CRC"]
    with pytest.raises(ValueError):
        FaultEpisodes(log, "x", summary_interval_s=0)


# ---- etsi014: a vendor KME down for many retries -----------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return init_pki(tmp_path_factory.mktemp("fault-pki"), ["kme-a", "kme-b"], ["sae-a", "sae-b"])


def test_driver_etsi014_kme_down_is_one_line_per_episode(tmp_path, pki, caplog, monkeypatch):
    monkeypatch.setattr(key_relay, "RETRY_MAX_S", 0.05)          # retry fast: many retries in a few seconds
    monkeypatch.setattr(key_relay, "HEALTH_POLL_S", 0.1)
    monkeypatch.setattr(fault_episodes, "SUMMARY_INTERVAL_S", 2.0)
    caplog.set_level(logging.INFO, logger="qkdd")

    async def main():
        shared = SharedKeys()
        kme_a, kme_b = scripted(pki, "kme-a", shared), scripted(pki, "kme-b", shared)
        async with trio.open_nursery() as nursery:
            await nursery.start(kme_a.serve)
            await nursery.start(kme_b.serve)
            alice, bob, health = await relay_pair(nursery, tmp_path, pki, kme_a.url, kme_b.url)
            engine = alice.engine
            await wait_for(lambda: len(bob.available()) >= 8)
            enc_before = sum(t.endswith("/enc_keys") for t in kme_a.requests)
            kme_a.fault, started_s = "down", trio.current_time()
            await wait_for(lambda: engine.key_fault_log.faults >= 25 and engine.status_fault_log.faults >= 10)
            await trio.sleep(2.2)                                          # at least one summary interval
            retries = sum(t.endswith("/enc_keys") for t in kme_a.requests) - enc_before
            assert "RemoteProtocolError" in health["alice"].link_state(LINK).detail
            kme_a.fault = None
            await wait_for(lambda: not engine.key_fault_log.failing and not engine.status_fault_log.failing)
            nursery.cancel_scope.cancel()
        return retries, trio.current_time() - started_s, engine

    retries, lasted_s, engine = trio.run(main)
    # a key call the shutdown overtakes fails on the closed device ("device not initialised"): no fault of the KME
    logged = len(lines(caplog, f"link {LINK}: vendor KME: "))
    engine._device_failed(Etsi014Error("unreachable", "KME https://kme: device not initialised"))
    assert len(lines(caplog, f"link {LINK}: vendor KME: ")) == logged and engine.device_error is None
    key_lines = lines(caplog, f"link {LINK}: vendor KME: ")
    status_lines = lines(caplog, f"link {LINK}: vendor KME status: ")
    assert retries >= 25
    for found in (key_lines, status_lines):
        first, *summaries, end = found
        assert "RemoteProtocolError" in first
        assert summaries and all("more faults since the last line (unreachable " in s for s in summaries)
        assert len(summaries) <= lasted_s / 2.0 + 1                         # one per interval, not one per retry
        assert end.startswith(f"link {LINK}: vendor KME") and "answers again after" in end
    # the key episode's count is every enc_keys the KME refused (the one in flight at the switch may go either way)
    faults = int(key_lines[-1].rsplit("(", 1)[1].split()[0])
    assert retries - 1 <= faults <= retries + 1


# ---- serial: missing tty, then a HELLO of an unknown version, then a burst of CRC errors --------------------
def test_driver_serial_faults_over_many_reopens_are_one_line_each(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="qkdd")
    link_path = tmp_path / "ttyQKD0"
    waiting = "opened; waiting for the device's HELLO"

    async def main():
        _, bob, _ = frame_pair(simulator(seed=9), 0, detections=5_000)
        device = SerialDevice(str(link_path), "bob", SerialConfig(reconnect_s=0.05, max_frame_bytes=1 << 16),
                              link_id="s-1")
        async with trio.open_nursery() as nursery:
            await nursery.start(device.run)
            await wait_for(lambda: device.fault_log.faults >= 20)            # 20 reopens of a missing path
            pty = Pty()
            os.symlink(pty.path, link_path)
            for _ in range(5):                                                # a device of a future version,
                await wait_for(lambda: device.problem == waiting)             # refused at every reopen
                before = device.fault_log.faults
                await pty.send(wire.FrameType.HELLO, wire.hello_payload("bob", "future", version=9))
                await wait_for(lambda before=before: device.fault_log.faults > before)
            faults = device.fault_log.faults
            await wait_for(lambda: device.problem == waiting)
            await pty.send(wire.FrameType.HELLO, wire.hello_payload("bob", "test detector"))
            frame_chunks = list(chunks(bob, "bob", chunk_records=2500))
            data = wire.encode(wire.FrameType.DETECTIONS, pty.seq, wire.detections_payload(frame_chunks[0]))
            pty.seq += 1
            for _ in range(40):                                               # 40 copies with a flipped bit
                broken = bytearray(data)
                broken[40] ^= 1
                await pty.stream.send_all(bytes(broken))
            for chunk in frame_chunks:                                        # then the frame, whole
                await pty.send(wire.FrameType.DETECTIONS, wire.detections_payload(chunk))
            with trio.fail_after(60):
                await device.next_frame()
            for _ in range(5):                                                # frames beyond max_frame_bytes
                await pty.send(wire.FrameType.DETECTIONS, bytes(100_000))
            for _ in range(10):                                               # the device's own STATUS: not ok
                await pty.send(wire.FrameType.STATUS, wire.status_payload(wire.Status(False, 31.0, 6.0, "laser off")))
            await wait_for(lambda: device.status is not None and device.status.detail == "laser off")
            assert not (await device.health()).ok
            await pty.send(wire.FrameType.STATUS, wire.status_payload(wire.Status(True, 20.0, 5.0, "fine")))
            await wait_for(lambda: device.status.ok and device.oversize_frames == 5)
            assert faults >= 25 and device.crc_errors >= 40 and not device.fault_log.failing
            nursery.cancel_scope.cancel()
        await pty.aclose()

    trio.run(main)
    device_lines = lines(caplog, f"link s-1: serial device {link_path}")
    assert [m for m in device_lines if "could not open port" in m] == device_lines[:1], device_lines
    assert sum("protocol version 9" in m for m in device_lines) == 1, device_lines
    assert sum("failed its CRC" in m for m in device_lines) == 1, device_lines
    assert sum("exceeds max_frame_bytes 65536" in m for m in device_lines) == 1, device_lines
    assert sum("garbage skipped" in m for m in device_lines) <= 1, device_lines
    assert sum("test detector delivers frames again after" in m for m in device_lines) == 1, device_lines
    assert sum(m.endswith("reports: laser off") for m in device_lines) == 1, device_lines
    assert sum("reports ok again after" in m for m in device_lines) == 1, device_lines
    assert len(device_lines) <= 8, device_lines


# ---- sdk: a library missing for many reopens, then one whose reads all fail ------------------------------
def test_driver_sdk_faults_over_many_reopens_are_one_line_each(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="qkdd")
    good = compile_library(tmp_path / "libqkd_ref.so")

    async def main():
        path = tmp_path / "libvendor.so"
        device = SdkDevice(SdkConfig(str(path), "seed=3,detections=5000", reopen_s=0.05), "alice", link_id="k-1")
        failing = SdkDevice(SdkConfig(str(good), "seed=3,detections=5000,fail_after=0", reopen_s=0.05), "alice",
                            link_id="k-2")
        async with trio.open_nursery() as nursery:
            await nursery.start(device.run)
            await nursery.start(failing.run)
            await wait_for(lambda: device.fault_log.faults >= 20 and failing.fault_log.faults >= 20)
            shutil.copy(good, path)
            with trio.fail_after(60):
                await device.next_frame()
            assert not device.fault_log.failing and failing.fault_log.failing
            nursery.cancel_scope.cancel()

    trio.run(main)
    missing = lines(caplog, "link k-1: SDK device: ")
    assert len(missing) == 2 and "cannot load" in missing[0] and "delivers frames again after" in missing[1]
    assert int(missing[1].rsplit("(", 1)[1].split()[0]) >= 20                   # "... (N faults)"
    failing = lines(caplog, "link k-2: ")
    # the library opens every time; its first open and its first failed read are logged, the retries are not
    assert len(failing) == 2, failing
    assert "SDK device open" in failing[0] and "read_frame: device input/output error" in failing[1]


# ---- the link's health watch, for a driver that does not log its faults itself (sim) --------------------
def test_driver_link_health_watch_logs_an_unhealthy_device_once_per_episode(caplog, monkeypatch):
    monkeypatch.setattr(link_status, "HEALTH_POLL_S", 0.05)
    monkeypatch.setattr(link_status, "DEVICE_START_GRACE_S", 0.0)
    caplog.set_level(logging.INFO, logger="qkdd.link")
    port = free_port()

    async def main():
        alice = SimAliceDevice(SimConfig().params("bb84"), listen_port=port, frame_slots=100_000, realtime=False)
        bob = SimBobDevice(host="127.0.0.1", port=port, backoff_initial_s=0.01, backoff_max_s=0.05)
        health = Health()
        health.register_link("sim-x")
        status = LinkStatus("sim-x", key_bits=256, health=health)
        await bob.init()

        async def pull(device):
            while True:
                await device.next_frame()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pull, bob)
            nursery.start_soon(status.watch_device, bob)              # Alice's device not there: ~20 polls
            await wait_for(lambda: "cannot reach Alice's device" in (status.device_problem or ""))
            await trio.sleep(1.0)
            await alice.init()
            nursery.start_soon(pull, alice)
            await wait_for(lambda: status.device_problem is None and bob.stats["frames"] > 0)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
        await alice.close()

    trio.run(main)
    found = lines(caplog, "link sim-x: device: ")
    assert len(found) == 2, found
    assert "unhealthy: cannot reach Alice's device at 127.0.0.1:" in found[0]
    assert "healthy again after" in found[1] and int(found[1].rsplit("(", 1)[1].split()[0]) >= 5
