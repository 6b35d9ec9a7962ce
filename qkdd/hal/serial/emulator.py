"""A serial QKD device pair on two real ptys, played from the simulator: Alice's prepared states on one,
Bob's detections of the same frames on the other, framed as docs/serial-protocol.md says (HELLO,
SETTINGS, DETECTIONS chunks, STATUS). `qkdctl device serve --pty` runs it; the tests run the link
engine over it. Writes block while the reader does not drain the pty: the reader sets the pace."""
from __future__ import annotations

import os
import time
import tty

import trio

from qkdd.hal.serial import frames as wire
from qkdd.hal.sim import SimParams, Simulator
from qkdd.hal.sim.frames import decoy_settings, raw_frames

CHUNK_RECORDS = 60_000                    # records per DETECTIONS frame: 660 kB, under the 1 MiB default bound


class Pty:
    """One pty: the emulator writes to its master side; `path` is the slave side a SerialDevice opens."""

    def __init__(self) -> None:
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)                 # no line discipline: bytes pass unchanged
        self.path = os.ttyname(self.slave_fd)
        self.stream = trio.lowlevel.FdStream(os.dup(self.master_fd))
        self.seq = 0

    async def send(self, frame_type: wire.FrameType, payload: bytes) -> None:
        await self.stream.send_all(wire.encode(frame_type, self.seq, payload))
        self.seq += 1

    async def aclose(self) -> None:
        """Unplug: the reader's next read fails with EIO."""
        await self.stream.aclose()
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def chunks(raw, role: str, chunk_records: int = CHUNK_RECORDS):
    """The DETECTIONS chunks of one RawFrame of `role`."""
    import numpy as np
    side = raw.alice if role == "alice" else raw.bob
    records = np.zeros(side.slots.size, dtype=wire.RECORD)
    records["slot"] = side.slots
    records["basis"] = side.bases
    if role == "alice":
        records["bit"], records["intensity"] = side.bits, side.intensities
    else:
        records["bit"] = side.outcomes
    pulses = tuple(raw.pulses_per_intensity) if raw.pulses_per_intensity else (0, 0, 0)
    count = max(1, -(-records.size // chunk_records))
    for index in range(count):
        part = records[index * chunk_records:(index + 1) * chunk_records]
        yield wire.DetectionsChunk(raw.frame_id, raw.slot_count, pulses, index == count - 1, part, index == 0)


class Emulator:
    """The device pair: `alice` and `bob` ptys, fed by `serve()` until cancelled."""

    def __init__(self, params: SimParams, *, max_detections: int = 250_000, seed: int | None = None,
                 frames: int | None = None) -> None:
        self.params = params
        self.max_detections = max_detections
        self.simulator = Simulator(params, seed=seed)
        self.frames = frames
        self.alice: Pty | None = Pty()
        self.bob: Pty | None = Pty()
        self.frames_sent = 0
        self._started_s = time.monotonic()

    async def hello(self, pty: Pty, role: str) -> None:
        await pty.send(wire.FrameType.HELLO, wire.hello_payload(role, f"qkdd emulator ({role})"))
        if role == "alice":
            settings = decoy_settings(self.params)
            await pty.send(wire.FrameType.SETTINGS, wire.settings_payload(
                (settings.mu_signal, settings.mu_decoy, settings.mu_vacuum, settings.p_signal, settings.p_decoy,
                 settings.q_x)))

    async def status(self, pty: Pty) -> None:
        await pty.send(wire.FrameType.STATUS, wire.status_payload(
            wire.Status(True, 22.0, time.monotonic() - self._started_s, "emulated")))

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        for pty, role in ((self.alice, "alice"), (self.bob, "bob")):
            await self.hello(pty, role)
            await self.status(pty)
        task_status.started()
        frame_id = 0
        while self.frames is None or frame_id < self.frames:
            frame = await trio.to_thread.run_sync(self.simulator.run, 10 ** 13, self.max_detections)
            pair = raw_frames(frame, frame_id)
            async with trio.open_nursery() as nursery:
                for pty, role, raw in ((self.alice, "alice", pair[0]), (self.bob, "bob", pair[1])):
                    nursery.start_soon(self._send_frame, pty, role, raw)
            frame_id += 1
            self.frames_sent = frame_id

    async def _send_frame(self, pty: Pty | None, role: str, raw) -> None:
        if pty is None:                         # unplugged: the frame is lost at this end
            return
        try:
            await self.hello(pty, role)         # repeated before every frame: a late reader learns them
            for chunk in chunks(raw, role):
                await pty.send(wire.FrameType.DETECTIONS, wire.detections_payload(chunk))
            await self.status(pty)
        except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            pass                                # unplugged mid-frame

    async def unplug(self, role: str) -> None:
        """Close one end's pty, as if its cable were pulled (its reader gets EIO)."""
        pty = getattr(self, role)
        setattr(self, role, None)
        if pty is not None:
            await pty.aclose()

    def plug(self, role: str) -> Pty:
        """A new pty for that end (a device plugged back in); its path is new."""
        pty = Pty()
        setattr(self, role, pty)
        return pty

    async def aclose(self) -> None:
        for role in ("alice", "bob"):
            await self.unplug(role)
