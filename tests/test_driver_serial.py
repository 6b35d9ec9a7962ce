"""driver = "serial": the framing (docs/serial-protocol.md) in memory, then real ptys (os.openpty) with the
emulator playing the simulator's frames, read by SerialDevice through pyserial, into two link engines
over a real classical channel: the detection records feed the normal BB84 post-processing."""
from __future__ import annotations

import os

import numpy as np
import pytest
import trio

from qkdd.hal.serial import frames as wire
from qkdd.hal.serial.device import SerialDevice
from qkdd.hal.serial.emulator import Emulator, Pty, chunks
from qkdd.hal.serial.records import FrameAssembler
from qkdd.hal.serial.settings import SerialConfig
from qkdd.hal.sim import SimParams
from qkdd.health import Health
from qkdd.keystore import KeyState, KeyStore
from qkdd.peer import generate_identity
from tests.link_support import TEST_SOURCE, LinkEnd, frame_pair, simulator
from tests.peer_harness import fast_settings

LINK = "serial-ab"


def detections(frame_id=3, count=5, last=True, slot_count=100):
    records = np.zeros(count, dtype=wire.RECORD)
    records["slot"] = np.arange(count) * 7
    records["basis"] = np.arange(count) % 2
    records["bit"] = (np.arange(count) // 2) % 2
    records["intensity"] = np.arange(count) % 3
    return wire.DetectionsChunk(frame_id, slot_count, (10, 20, 30), last, records)


def stream_of(*payloads):
    return b"".join(wire.encode(t, seq, p) for seq, (t, p) in enumerate(payloads))


def test_serial_frames_round_trip_byte_by_byte_and_in_one_piece():
    data = stream_of((wire.FrameType.HELLO, wire.hello_payload("alice", "dev")),
                     (wire.FrameType.DETECTIONS, wire.detections_payload(detections())))
    whole = wire.FrameParser().feed(data)
    parser, pieces = wire.FrameParser(), []
    for index in range(len(data)):
        pieces += parser.feed(data[index:index + 1])
    assert whole == pieces and [f.type for f in whole] == [wire.FrameType.HELLO, wire.FrameType.DETECTIONS]
    assert wire.parse_hello(whole[0].payload) == wire.Hello(1, "alice", "dev")
    chunk = wire.parse_detections(whole[1].payload)
    assert chunk.frame_id == 3 and chunk.pulses_per_intensity == (10, 20, 30) and chunk.last
    assert np.array_equal(chunk.records, detections().records)
    assert parser.buffered_bytes == 0


def test_serial_parser_resynchronises_after_garbage_crc_errors_and_oversize_frames():
    good = wire.encode(wire.FrameType.STATUS, 1, wire.status_payload(wire.Status(True, 20.0, 5.0, "fine")))
    broken = bytearray(wire.encode(wire.FrameType.DETECTIONS, 2, wire.detections_payload(detections())))
    broken[30] ^= 0x40                                                  # a payload bit flipped on the line
    huge = wire.encode(wire.FrameType.DETECTIONS, 3, bytes(5000))
    garbage = b"\x00QK\xff" + os.urandom(300).replace(b"QK", b"qk") + b"Q"
    events = wire.FrameParser(max_frame_bytes=4096).feed(garbage + good + bytes(broken) + good + huge + good)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Skipped", "Frame", "CrcError", "Skipped", "Frame", "Oversize", "Skipped", "Frame"], kinds
    assert events[0].count == len(garbage)
    assert [e.seq for e in events if isinstance(e, wire.Frame)] == [1, 1, 1]


def test_serial_unknown_versions_and_malformed_payloads_are_clear_errors():
    frame = bytearray(wire.encode(wire.FrameType.HELLO, 0, wire.hello_payload("bob", "d")))
    frame[2] = 9                                                        # framing version 9, header CRC fixed
    frame[12:16] = wire.CRC.pack(wire.crc32c(bytes(frame[:12])))
    with pytest.raises(wire.VersionError, match="serial framing version 9; qkdd speaks 1"):
        wire.FrameParser().feed(bytes(frame))
    with pytest.raises(wire.VersionError, match="protocol version 7"):
        wire.parse_hello(wire.hello_payload("bob", "d", version=7))
    good = wire.detections_payload(detections())
    for bad, words in ((good[:-1], "carries"), (good[:10], "truncated"),
                       (wire.detections_payload(detections(slot_count=3)), "beyond the frame's slot count")):
        with pytest.raises(wire.SerialProtocolError, match=words):
            wire.parse_detections(bad)
    chunk = detections()
    chunk.records["intensity"][0] = 7
    with pytest.raises(wire.SerialProtocolError, match="out of range"):
        wire.parse_detections(wire.detections_payload(chunk))
    for bad in (b"", b"\x01\x00\x00\x05ab", b"\x01\x00\x03\x00"):
        with pytest.raises(wire.SerialProtocolError):
            wire.parse_hello(bad)


def test_serial_assembler_drops_a_frame_with_a_gap_and_keeps_the_next():
    assembler = FrameAssembler("bob", 1000)
    assert assembler.add(detections(frame_id=1, last=False)) is None
    assembler.lost("sequence gap")
    assert assembler.frames_dropped == 1 and "frame 1 dropped" in assembler.last_drop
    raw = assembler.add(detections(frame_id=2))
    assert raw.frame_id == 2 and raw.bob.slots.tolist() == [0, 7, 14, 21, 28] and raw.alice is None


async def wait_for(predicate, timeout_s=60.0):
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)


def test_serial_link_engines_over_two_real_ptys_make_the_same_keys(tmp_path):
    async def main():
        emulator = Emulator(SimParams(distance_km=25.0, **TEST_SOURCE), max_detections=250_000, seed=5)
        alice_id, bob_id = generate_identity(), generate_identity()
        stores = {role: KeyStore(str(tmp_path / f"{role}.db"), bytes(32)) for role in ("alice", "bob")}
        health = Health()
        health.register_link(LINK)
        alice_tty = tmp_path / "ttyALICE"                  # a stable name, as udev gives (/dev/serial/by-id)
        os.symlink(emulator.alice.path, alice_tty)
        async with trio.open_nursery() as nursery:
            await nursery.start(emulator.serve)
            alice_device = SerialDevice(str(alice_tty), "alice", SerialConfig(reconnect_s=0.1), link_id=LINK)
            alice = LinkEnd(LINK, "alice", alice_device, stores["alice"],
                            fast_settings(LINK, listen=("127.0.0.1", 0)), alice_id, bob_id.public_key(),
                            health=health)
            await alice.start(nursery)
            bob = LinkEnd(LINK, "bob", SerialDevice(emulator.bob.path, "bob", link_id=LINK), stores["bob"],
                          fast_settings(LINK, dial=("127.0.0.1", alice.listen_port)), bob_id, alice_id.public_key())
            await bob.start(nursery)
            await wait_for(lambda: alice.status.totals["keys"] >= 50 and bob.status.totals["keys"] >= 50)
            a_inv = stores["alice"].inventory(LINK)
            committed = [k for k, s in a_inv.items() if s is KeyState.AVAILABLE][:40]
            b_inv = stores["bob"].inventory(LINK)
            for key_id in committed:
                if b_inv.get(key_id) in (KeyState.AVAILABLE, KeyState.PENDING):
                    assert stores["alice"].peek(LINK, key_id).material == stores["bob"].peek(LINK, key_id).material
            key = await alice.keys.request_key(256)
            assert (await bob.keys.fetch_key(key.key_id)).material == key.material
            device_health = await alice_device.health()
            assert device_health.ok and "qkdd emulator (alice)" in device_health.detail
            assert device_health.diagnostics["crc_errors"] == 0

            # Alice's device unplugged: the link falls back with a /healthz detail naming the device, the keys
            # both ends hold stay equal, and once it is plugged back in the link resumes by itself
            await emulator.unplug("alice")
            await wait_for(lambda: str(alice_tty) in health.link_state(LINK).detail, 60)
            assert health.link_state(LINK).state == "fallback", health.link_state(LINK)
            alice_tty.unlink()
            os.symlink(emulator.plug("alice").path, alice_tty)
            before = bob.status.totals["keys"]
            await wait_for(lambda: bob.status.totals["keys"] >= before + 20 and health.link_state(LINK).state
                           in ("running", "degraded"), 90)
            key = await bob.keys.request_key(256)
            assert (await alice.keys.fetch_key(key.key_id)).material == key.material
            nursery.cancel_scope.cancel()
        await emulator.aclose()
    trio.run(main)


def test_serial_device_survives_garbage_a_bad_crc_an_unplug_and_resumes(tmp_path):
    async def main():
        alice, bob, _ = frame_pair(simulator(seed=9), 0, detections=20_000)
        link_path = tmp_path / "ttyQKD0"
        pty = Pty()
        os.symlink(pty.path, link_path)
        device = SerialDevice(str(link_path), "bob", SerialConfig(reconnect_s=0.1, max_frame_bytes=1 << 20))
        async with trio.open_nursery() as nursery:
            await nursery.start(device.run)
            await wait_for(lambda: device.problem == "opened; waiting for the device's HELLO", 60)
            await pty.send(wire.FrameType.HELLO, wire.hello_payload("bob", "test detector"))
            await pty.stream.send_all(b"line noise \x00\xff QK garbage")
            frame_chunks = list(chunks(bob, "bob", chunk_records=5000))
            for index, chunk in enumerate(frame_chunks):           # one chunk corrupted: the frame is lost
                data = bytearray(wire.encode(wire.FrameType.DETECTIONS, pty.seq, wire.detections_payload(chunk)))
                if index == 1:
                    data[40] ^= 1
                await pty.stream.send_all(bytes(data))
                pty.seq += 1
            for chunk in chunks(bob, "bob", chunk_records=5000):   # the same frame again, whole
                await pty.send(wire.FrameType.DETECTIONS, wire.detections_payload(chunk))
            with trio.fail_after(60):
                raw = await device.next_frame()
            assert np.array_equal(raw.bob.slots, bob.bob.slots) and np.array_equal(raw.bob.outcomes, bob.bob.outcomes)
            assert device.crc_errors == 1 and device.skipped_bytes >= 20
            assert (await device.health()).ok

            # unplugged mid-frame: EIO; health names the device; nothing half-assembled comes out
            await pty.stream.send_all(wire.encode(wire.FrameType.DETECTIONS, pty.seq,
                                                  wire.detections_payload(next(chunks(bob, "bob", 5000))))[:500])
            await pty.aclose()
            await wait_for(lambda: device.problem is not None and "serial device" in device.problem, 60)
            health = await device.health()
            assert not health.ok and str(link_path) in health.detail

            # plugged back in (a new tty behind the same path): the device resumes by itself
            pty = Pty()
            os.unlink(link_path)
            os.symlink(pty.path, link_path)
            await wait_for(lambda: device.problem == "opened; waiting for the device's HELLO", 60)
            await pty.send(wire.FrameType.HELLO, wire.hello_payload("bob", "test detector"))
            for chunk in chunks(bob, "bob", chunk_records=5000):
                await pty.send(wire.FrameType.DETECTIONS, wire.detections_payload(chunk))
            with trio.fail_after(60):
                raw = await device.next_frame()
            assert raw.frame_id == 0 and (await device.health()).ok
            # a HELLO of an unknown protocol version: a clear problem, and no frame is taken
            await pty.send(wire.FrameType.HELLO, wire.hello_payload("bob", "future", version=9))
            await wait_for(lambda: device.problem is not None and "protocol version 9" in device.problem, 60)
            nursery.cancel_scope.cancel()
        await pty.aclose()
    trio.run(main)


def test_serial_qkdctl_device_serve_pty_plays_matching_frames_to_two_readers():
    import subprocess
    import sys
    process = subprocess.Popen([sys.executable, "-m", "qkdd.ctl", "device", "serve", "--pty", "--detections", "20000",
                                "--seed", "4"], stdout=subprocess.PIPE, text=True)
    try:
        paths = dict(process.stdout.readline().split() for _ in range(2))
        assert set(paths) == {"alice", "bob"} and all(p.startswith("/dev/pts/") for p in paths.values())

        async def main():
            devices = {role: SerialDevice(path, role, SerialConfig(reconnect_s=0.1)) for role, path in paths.items()}
            got = {"alice": {}, "bob": {}}
            async with trio.open_nursery() as nursery:
                for role, device in devices.items():
                    await nursery.start(device.run)

                    async def collect(role=role, device=device):
                        while True:
                            raw = await device.next_frame()
                            got[role][raw.frame_id] = raw
                    nursery.start_soon(collect)
                await wait_for(lambda: set(got["alice"]) & set(got["bob"]), 60)
                frame_id = min(set(got["alice"]) & set(got["bob"]))
                alice, bob = got["alice"][frame_id], got["bob"][frame_id]
                assert np.array_equal(alice.alice.slots, bob.bob.slots) and alice.alice.slots.size > 1000
                assert devices["alice"].decoy_settings().mu_signal == pytest.approx(0.43)
                same = alice.alice.bases == bob.bob.bases
                assert float(np.mean(alice.alice.bits[same] != bob.bob.outcomes[same])) < 0.05
                nursery.cancel_scope.cancel()
        trio.run(main)
    finally:
        process.terminate()
        process.wait(timeout=10)
