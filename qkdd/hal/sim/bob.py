"""Bob's simulated device: connects to Alice's device over the simulated quantum channel (reconnecting
with backoff), receives only what its detectors register, checks every frame strictly
(qkdd.hal.sim.wire) and yields Bob's RawFrame. Its photocurrent monitor compares the optical power at the
detectors with a threshold and raises `monitor_alarm` (bright-light blinding, Lydersen et al., Nature
Photonics 4, 686 (2010)).

Bad data from Alice's side is a DeviceError naming the problem; the connection is dropped and the next
call reconnects. Frame ids must increase, also across reconnections.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio

from qkdd.hal.base import BobDetections, ChannelMetrics, Device, DeviceError, DeviceHealth, RawFrame
from qkdd.hal.sim import ambient, wire
from qkdd.hal.sim.channel_ends import DialingEnd
from qkdd.hal.sim.settings import DEFAULT_MONITOR_THRESHOLD_W
from qkdd.peer.backoff import Backoff

log = logging.getLogger("qkdd.hal.sim")


class SimBobDevice(DialingEnd, Device):
    def __init__(self, *, host: str, port: int, protocol: str = "bb84", max_detections: int = 1 << 22,
                 monitor: bool = False, monitor_threshold_w: float = DEFAULT_MONITOR_THRESHOLD_W,
                 temperature_c: float = 22.0, idle_timeout_s: float = 120.0, message_timeout_s: float = 30.0,
                 backoff_initial_s: float = 0.05, backoff_max_s: float = 5.0, connect_timeout_s: float = 5.0):
        if protocol not in wire.PROTOCOL_CODES:
            raise DeviceError(f"sim: protocol {protocol!r} is not simulated (bb84 or e91)")
        if not monitor_threshold_w > 0:
            raise DeviceError(f"sim: monitor_threshold_w must be > 0, got {monitor_threshold_w!r}")
        self.host, self.port = host, port
        self.protocol = protocol
        self.monitor_enabled = monitor
        self.monitor_threshold_w = monitor_threshold_w
        self.temperature_base_c = temperature_c
        self.idle_timeout_s = idle_timeout_s
        self.message_timeout_s = message_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._receiver = wire.Receiver("bob", protocol=protocol, max_detections=max_detections)
        self._stream: trio.SocketStream | None = None
        self._hello: wire.AliceHello | None = None
        self._closed = False
        self._lock = trio.Lock()
        self._send_lock = trio.Lock()
        self._started_s = time.monotonic()
        self._realign_seq = 0
        self._calibration_seen = trio.Condition()
        self._last_error: str | None = None
        self._fed_qber: float | None = None
        self._fed_key_rate_bps = 0.0
        self.stats = {"frames": 0, "slots": 0, "detections": 0, "connections": 0, "monitor_alarms": 0}
        self._last: dict[str, Any] = {"qber": math.nan, "visibility": math.nan, "photon_rate_hz": 0.0,
                                      "link_loss_db": 0.0, "monitor_power_w": 0.0, "monitor_alarm": False,
                                      "frame_id": None, "calibration_seq": 0}

    def set_monitor(self, enabled: bool, threshold_w: float | None = None) -> None:
        """Switch the photocurrent monitor on or off (and set its alarm threshold)."""
        if threshold_w is not None:
            if not (math.isfinite(threshold_w) and threshold_w > 0):
                raise ValueError(f"monitor threshold: must be > 0 W, got {threshold_w!r}")
            self.monitor_threshold_w = float(threshold_w)
        self.monitor_enabled = bool(enabled)

    def update_estimates(self, *, qber: float | None = None, key_rate_bps: float | None = None) -> None:
        """The link engine's measured QBER and secure key rate, reported by channel_status()."""
        if qber is not None:
            self._fed_qber = float(qber)
        if key_rate_bps is not None:
            self._fed_key_rate_bps = float(key_rate_bps)

    # ---- frames -------------------------------------------------------------------------------

    async def next_frame(self) -> RawFrame:
        async with self._lock:
            message = await self._next_frame_message()
            self._last_error = None
            return await self._account(message)

    async def _send_ack(self, stream: trio.SocketStream, frame_id: int) -> None:
        async with self._send_lock:
            await stream.send_all(wire.encode_ack(frame_id))

    async def _account(self, message: wire.FrameMessage) -> RawFrame:
        alarm = self.monitor_enabled and message.monitor_power_w > self.monitor_threshold_w
        n = message.detections
        self.stats["frames"] += 1
        self.stats["slots"] += message.slot_count
        self.stats["detections"] += n
        self.stats["monitor_alarms"] += int(alarm)
        clock_hz = self._hello.clock_hz if self._hello else 1.0
        self._last = {"qber": message.qber, "visibility": message.visibility,
                      "photon_rate_hz": n * clock_hz / message.slot_count, "link_loss_db": message.link_loss_db,
                      "monitor_power_w": message.monitor_power_w, "monitor_alarm": alarm,
                      "frame_id": message.frame_id, "calibration_seq": message.calibration_seq}
        async with self._calibration_seen:
            self._calibration_seen.notify_all()
        return RawFrame(frame_id=message.frame_id, slot_count=message.slot_count,
                        bob=BobDetections.from_slot_stream(message.slot_stream, n, message.slot_count,
                                                           message.bases, message.outcomes),
                        monitor_alarm=alarm)

    # ---- connection (qkdd.hal.sim.channel_ends) -----------------------------------------------------

    def _hello_message(self) -> bytes:
        return wire.encode_bob_hello()

    def _retrying(self, stage: str, exc: BaseException, delay_s: float) -> None:
        if stage == "connect":
            self._last_error = f"cannot reach Alice's device at {self.host}:{self.port}: {exc}"
            log.info("sim: Alice's device unreachable; retrying", extra={"retry_in_s": round(delay_s, 3)})
        else:
            log.info("sim: handshake with Alice's device failed", extra={"reason": str(exc)})

    def _refused(self, stage: str, exc: wire.WireError) -> None:
        self._last_error = str(exc)
        what = "bad hello" if stage == "hello" else "bad data"
        log.error(f"sim: {what} on the quantum channel", extra={"reason": str(exc)})

    def _connected(self) -> None:
        self._last_error = None             # reached: the first frame may take a while (large frames, loaded host)
        log.info("sim: connected to Alice's device", extra={"address": f"{self.host}:{self.port}"})

    # ---- calibration and status -------------------------------------------------------------------

    async def calibrate(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Ask Alice's simulator (the fiber's polarisation controller) to realign; wait until a frame
        confirms it (frames must be flowing through next_frame meanwhile)."""
        stream = self._stream
        if stream is None:
            raise DeviceError("sim: not connected to Alice's device; cannot realign")
        self._realign_seq += 1
        seq = self._realign_seq
        qber_before = self._last["qber"]
        try:
            async with self._send_lock:
                await stream.send_all(wire.encode_realign(seq))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise DeviceError(f"sim: realignment request not sent: {exc}") from None
        confirmed = False
        with trio.move_on_after(timeout_s):
            async with self._calibration_seen:
                while self._last["calibration_seq"] < seq:
                    await self._calibration_seen.wait()
            confirmed = True
        return {"action": "realign", "requested_by": "bob", "request_seq": seq, "confirmed": confirmed,
                "qber_before": None if math.isnan(qber_before) else qber_before,
                "confirmed_by_frame": self._last["frame_id"] if confirmed else None}

    def uptime_s(self) -> float:
        return time.monotonic() - self._started_s

    async def channel_status(self) -> ChannelMetrics:
        qber = self._fed_qber if self._fed_qber is not None else self._last["qber"]
        visibility = self._last["visibility"]
        if self._fed_qber is not None and self.protocol == "bb84":
            visibility = 1.0 - 2.0 * self._fed_qber
        uptime = self.uptime_s()
        return ChannelMetrics(qber=0.0 if math.isnan(qber) else qber, key_rate_bps=self._fed_key_rate_bps,
                              photon_rate_hz=self._last["photon_rate_hz"],
                              visibility=0.0 if math.isnan(visibility) else visibility,
                              link_loss_db=self._last["link_loss_db"],
                              temperature_c=ambient.temperature_c(self.temperature_base_c, uptime), uptime_s=uptime)

    async def health(self) -> DeviceHealth:
        uptime = self.uptime_s()
        connected = self._stream is not None
        alarm = self._last["monitor_alarm"]
        if alarm:
            ok, detail = False, "photocurrent monitor alarm: bright light at the detectors"
        elif self._last_error:
            ok, detail = False, self._last_error
        else:
            ok, detail = True, "connected to Alice's device" if connected else "connecting to Alice's device"
        return DeviceHealth(ok=ok, detail=detail, temperature_c=ambient.temperature_c(self.temperature_base_c, uptime),
                            uptime_s=uptime, diagnostics={"role": "bob", "connected": connected, **self.stats,
                                                          "last_frame_id": self._last["frame_id"],
                                                          "monitor": self.monitor_enabled})

    def control_status(self) -> dict[str, Any]:
        return {"role": "bob", "monitor": {"enabled": self.monitor_enabled, "threshold_w": self.monitor_threshold_w,
                                           "last_power_w": self._last["monitor_power_w"],
                                           "last_alarm": self._last["monitor_alarm"]},
                "alice_address": f"{self.host}:{self.port}", **self.stats}
