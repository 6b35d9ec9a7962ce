"""The simulator as a pair of devices: Alice's daemon runs the source and the fiber (SimSource); Bob's
daemon's device (SimDetector) connects to it over TCP and receives only what his detectors register.

The TCP connection stands for the quantum channel: it carries, per frame, Bob's detections (slot,
basis, outcome) and nothing of Alice's choices. It is not authenticated, like a fiber; what an
eavesdropper does to it shows up in the QBER. Record layout (little-endian):

    magic b"QSIM" | u64 frame id | u64 slots spanned | u64 detections n | u8 monitor alarm | 7 zero bytes |
    n x u64 slot (from the frame's start) | n x u8 basis | n x u8 outcome

Attacks and drifts are switched at run time (`set_attack`, `set_drift`, `calibrate` clears the
misalignment drift) and take effect from the next frame.
"""
from __future__ import annotations

import logging
import struct
import time
from typing import Any

import numpy as np
import trio

from qkdd.hal.base import BobDetections, ChannelMetrics, Device, DeviceError, DeviceHealth, RawFrame
from qkdd.hal.sim.frames import decoy_settings, raw_frames
from qkdd.hal.sim.montecarlo import MONITOR_THRESHOLD_W
from qkdd.hal.sim.params import Attack, Drift, SimParams
from qkdd.hal.sim.simulator import Simulator
from qkdd.protocols.bb84_finite import DecoySettings

log = logging.getLogger("qkdd.hal.sim")

MAGIC = b"QSIM"
_HEADER = struct.Struct("<4sQQQB7x")
MAX_DETECTIONS = 1 << 24
SIM_TEMPERATURE_C = 21.0           # the simulated device reports a fixed, healthy temperature


class SimSource(Device):
    """Alice's end: source, fiber and (for the physics) Bob's detectors; serves Bob's detections."""

    def __init__(self, params: SimParams, listen: tuple[str, int], *, frame_detections: int = 1 << 20,
                 seed: int | None = None, attack: Attack | None = None, drift: Drift | None = None,
                 realtime: bool = False, monitor: bool = False):
        self.params = params
        self.listen = listen
        self.listen_port: int | None = None
        self.frame_detections = frame_detections
        self.realtime = realtime
        self.monitor = monitor
        self._sim = Simulator(params, seed=seed, attack=attack, drift=drift)
        self._bob: trio.SocketStream | None = None
        self._bob_connected = trio.Event()
        self._started_s = time.monotonic()
        self._next_frame_id = time.time_ns() // 1000      # unique across restarts: microseconds
        self._sim_lock = trio.Lock()
        self._last_rate_hz = 0.0
        self._clock_s = 0.0

    @property
    def decoy(self) -> DecoySettings:
        return decoy_settings(self.params)

    async def init(self) -> None:
        """Nothing to open: the listener runs in `run`."""

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Accept Bob's detector (one at a time; a new connection replaces the old one)."""
        listeners = await trio.open_tcp_listeners(self.listen[1], host=self.listen[0] or None)
        self.listen_port = listeners[0].socket.getsockname()[1]
        log.info("sim source: quantum channel listening", extra={"port": self.listen_port})
        task_status.started(self.listen_port)
        await trio.serve_listeners(self._accept, listeners)

    async def _accept(self, stream: trio.SocketStream) -> None:
        if self._bob is not None:
            await trio.aclose_forcefully(self._bob)
        self._bob = stream
        self._bob_connected.set()
        log.info("sim source: detector connected")
        await trio.sleep_forever()

    def set_attack(self, attack: Attack) -> None:
        self._sim.attack = attack
        log.warning("sim source: attack switched", extra={"attack": attack.kind, "fraction": attack.fraction})

    def set_drift(self, drift: Drift) -> None:
        self._sim.drift = drift
        log.info("sim source: drift set", extra={"extra_loss_db": drift.extra_loss_db,
                                                 "misalignment": drift.misalignment})

    def status(self) -> dict[str, Any]:
        attack, drift = self._sim.attack, self._sim.drift
        return {"attack": attack.kind, "attack_fraction": attack.fraction, "extra_loss_db": drift.extra_loss_db,
                "misalignment_drift": drift.misalignment, "distance_km": self.params.distance_km}

    async def next_frame(self) -> RawFrame:
        """Simulate the next frame, send Bob his detections, return Alice's records."""
        while True:
            while self._bob is None:
                self._bob_connected = trio.Event()
                await self._bob_connected.wait()
            async with self._sim_lock:
                started = time.monotonic()
                frame = await trio.to_thread.run_sync(self._sim.run, 10 ** 15, self.frame_detections)
                frame_id = self._next_frame_id
                self._next_frame_id += 1
            alarm = self.monitor and frame.monitor_power_w > MONITOR_THRESHOLD_W
            alice, bob = raw_frames(frame, frame_id, monitor_alarm=alarm)
            if self.realtime:
                await trio.sleep(max(0.0, frame.slots / self.params.clock_hz - (time.monotonic() - started)))
            self._clock_s += frame.slots / self.params.clock_hz
            self._last_rate_hz = len(frame.alice) / max(frame.slots / self.params.clock_hz, 1e-12)
            stream = self._bob
            try:
                await stream.send_all(encode_detections(bob))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if self._bob is stream:
                    self._bob = None
                log.warning("sim source: detector connection lost")
                continue
            return alice

    async def calibrate(self) -> dict[str, Any]:
        """Realign polarisation: the misalignment drift goes back to zero."""
        before = self._sim.drift
        self._sim.drift = Drift(extra_loss_db=before.extra_loss_db, misalignment=0.0)
        return {"realigned": True, "misalignment_drift_before": before.misalignment,
                "misalignment_drift_after": 0.0}

    async def channel_status(self) -> ChannelMetrics:
        model = self._sim.expected()
        loss_db = self.params.distance_km * self.params.fiber_loss_db_per_km + self._sim.drift.extra_loss_db
        qber = float(model["class_error"][0])
        return ChannelMetrics(qber=qber, key_rate_bps=0.0, photon_rate_hz=self._last_rate_hz,
                              visibility=max(0.0, 1.0 - 2.0 * qber), link_loss_db=loss_db,
                              temperature_c=SIM_TEMPERATURE_C, uptime_s=time.monotonic() - self._started_s)

    async def health(self) -> DeviceHealth:
        connected = self._bob is not None
        return DeviceHealth(ok=True, detail="source running" + ("" if connected else ", no detector connected"),
                            temperature_c=SIM_TEMPERATURE_C, uptime_s=time.monotonic() - self._started_s,
                            diagnostics={"detector_connected": connected, **self.status()})

    async def close(self) -> None:
        if self._bob is not None:
            await trio.aclose_forcefully(self._bob)


class SimDetector(Device):
    """Bob's end: connects to the source's quantum channel and yields what the detectors registered."""

    def __init__(self, address: tuple[str, int], *, reconnect_s: float = 0.5, params: SimParams | None = None):
        self.address = address
        self.reconnect_s = reconnect_s
        self.params = params or SimParams()
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()
        self._started_s = time.monotonic()
        self._last_rate_hz = 0.0

    async def init(self) -> None:
        """The connection is made lazily by next_frame (and remade after a loss)."""

    async def _connect(self) -> trio.SocketStream:
        while self._stream is None:
            try:
                self._stream = await trio.open_tcp_stream(*self.address)
                self._buffer.clear()
                log.info("sim detector: connected to the source")
            except OSError:
                await trio.sleep(self.reconnect_s)
        return self._stream

    async def _read_exactly(self, n_bytes: int) -> bytes:
        while len(self._buffer) < n_bytes:
            stream = await self._connect()
            try:
                data = await stream.receive_some(max(1 << 20, n_bytes - len(self._buffer)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                await trio.aclose_forcefully(stream)
                self._stream = None
                raise DeviceError("quantum channel connection lost")
            self._buffer += data
        out = bytes(self._buffer[:n_bytes])
        del self._buffer[:n_bytes]
        return out

    async def next_frame(self) -> RawFrame:
        while True:
            try:
                header = await self._read_exactly(_HEADER.size)
                magic, frame_id, slot_count, count, alarm = _HEADER.unpack(header)
                if magic != MAGIC or count > MAX_DETECTIONS or alarm > 1:
                    raise DeviceError("malformed frame on the quantum channel")
                body = await self._read_exactly(10 * count)
            except DeviceError as exc:
                log.warning("sim detector: %s; reconnecting", exc)
                await self._drop()
                await trio.sleep(self.reconnect_s)
                continue
            frame = decode_detections(frame_id, slot_count, count, alarm, body)
            self._last_rate_hz = count / max(slot_count / self.params.clock_hz, 1e-12)
            return frame

    async def _drop(self) -> None:
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)
        self._stream = None
        self._buffer.clear()

    async def channel_status(self) -> ChannelMetrics:
        loss_db = self.params.distance_km * self.params.fiber_loss_db_per_km
        return ChannelMetrics(qber=0.0, key_rate_bps=0.0, photon_rate_hz=self._last_rate_hz, visibility=1.0,
                              link_loss_db=loss_db, temperature_c=SIM_TEMPERATURE_C,
                              uptime_s=time.monotonic() - self._started_s)

    async def health(self) -> DeviceHealth:
        return DeviceHealth(ok=True, detail="detector " + ("connected" if self._stream else "connecting"),
                            temperature_c=SIM_TEMPERATURE_C, uptime_s=time.monotonic() - self._started_s)

    async def calibrate(self) -> dict[str, Any]:
        return {"realigned": False, "detail": "the sim detector has nothing to align; calibrate on the source end"}

    async def close(self) -> None:
        await self._drop()


def encode_detections(frame: RawFrame) -> bytes:
    det = frame.bob
    n = int(det.slots.size)
    return b"".join([_HEADER.pack(MAGIC, frame.frame_id, frame.slot_count, n, int(frame.monitor_alarm)),
                     det.slots.astype("<u8").tobytes(), det.bases.astype(np.uint8).tobytes(),
                     det.outcomes.astype(np.uint8).tobytes()])


def decode_detections(frame_id: int, slot_count: int, count: int, alarm: int, body: bytes) -> RawFrame:
    slots = np.frombuffer(body, dtype="<u8", count=count).astype(np.uint64)
    bases = np.frombuffer(body, dtype=np.uint8, count=count, offset=8 * count).copy()
    outcomes = np.frombuffer(body, dtype=np.uint8, count=count, offset=9 * count).copy()
    if count and (int(bases.max()) > 1 or int(outcomes.max()) > 1):
        raise DeviceError("quantum channel frame has a basis or outcome other than 0/1")
    return RawFrame(frame_id=frame_id, slot_count=slot_count,
                    bob=BobDetections(slots=slots, bases=bases, outcomes=outcomes), monitor_alarm=bool(alarm))
