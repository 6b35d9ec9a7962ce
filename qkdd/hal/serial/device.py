"""SerialDevice: a QKD device end on a tty. A worker thread reads with pyserial; the trio side parses
the frames (qkdd.hal.serial.frames), assembles DETECTIONS into RawFrames and keeps HELLO, SETTINGS and
STATUS. Unplugged (EIO), missing or silent: the device is unhealthy with a detail naming the cause, and
reopens the path every reconnect_s until it answers again. Faults are logged once per episode
(qkdd.fault_episodes): the device's (unplugged, silent, refused HELLO) until it delivers a frame again, and
the stream's (CRC errors, garbage, oversize or refused frames) until none came for a summary interval."""
from __future__ import annotations

import logging
import time

import serial
import trio

from qkdd.fault_episodes import FaultEpisodes
from qkdd.hal.base import ChannelMetrics, Device, DeviceError, DeviceHealth, RawFrame
from qkdd.hal.serial import frames as wire
from qkdd.hal.serial.records import FrameAssembler
from qkdd.hal.serial.settings import SerialConfig
from qkdd.protocols.bb84_finite import DecoySettings

log = logging.getLogger("qkdd.hal")

READ_BYTES = 1 << 16
FRAME_QUEUE = 2


class SerialDevice(Device):
    reports_own_faults = True

    def __init__(self, path: str, role: str, config: SerialConfig = SerialConfig(), *, link_id: str = "") -> None:
        self.path = path
        self.role = role
        self.config = config
        self.link_id = link_id
        self.hello: wire.Hello | None = None
        self.status: wire.Status | None = None
        self.problem: str | None = "not opened yet"
        self.crc_errors = 0
        self.skipped_bytes = 0
        self.oversize_frames = 0
        self._settings: tuple[float, ...] | None = None
        self._last_seen_s = 0.0
        self._started_s = time.monotonic()
        self._qber: float | None = None
        self._key_rate_bps = 0.0
        self._frames_in, self._frames_out = trio.open_memory_channel[RawFrame](FRAME_QUEUE)
        where = f"link {link_id}: serial device {path}" if link_id else f"serial device {path}"
        self.fault_log = FaultEpisodes(log, where)
        self.stream_fault_log = FaultEpisodes(log, where, ends_when_quiet=True)
        self.status_fault_log = FaultEpisodes(log, where)          # the device's own STATUS saying not ok

    async def init(self) -> None:
        """Nothing to do before run(): the tty is opened (and reopened) there."""

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self._session()
            except (OSError, serial.SerialException) as exc:
                self._set_problem("io", f"serial device {self.path}: {exc}")
            except wire.VersionError as exc:
                self._set_problem("refused", f"serial device {self.path}: {exc}")
            await trio.sleep(self.config.reconnect_s)
            self._flush_fault_logs()

    def _set_problem(self, kind: str, problem: str) -> None:
        self.fault_log.fault(kind, problem.removeprefix(f"serial device {self.path}: "))
        self.problem = problem

    def _flush_fault_logs(self) -> None:
        for faults in (self.fault_log, self.stream_fault_log, self.status_fault_log):
            faults.flush()

    async def _session(self) -> None:
        port = await trio.to_thread.run_sync(lambda: serial.Serial(self.path, self.config.baud, timeout=0.2))
        parser = wire.FrameParser(self.config.max_frame_bytes)
        assembler = FrameAssembler(self.role, self.config.max_records_per_frame)
        expected_seq: int | None = None
        try:
            self.hello = None
            self.problem = "opened; waiting for the device's HELLO"
            while True:
                data = await trio.to_thread.run_sync(port.read, READ_BYTES, abandon_on_cancel=True)
                self._flush_fault_logs()
                if not data:
                    if time.monotonic() - self._last_seen_s > self.config.silence_s:
                        self._set_problem("silent", f"serial device {self.path}: silent for "
                                                    f"{self.config.silence_s:g} s")
                    continue
                for event in parser.feed(data):
                    if isinstance(event, wire.Frame):
                        if expected_seq is not None and event.seq != expected_seq:
                            assembler.lost(f"sequence gap ({expected_seq} expected, {event.seq} came)")
                        expected_seq = (event.seq + 1) & 0xFFFFFFFF
                        await self._handle(event, assembler)
                    else:
                        self._count(event, assembler)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(port.close)

    def _count(self, event: wire.Event, assembler: FrameAssembler) -> None:
        if isinstance(event, wire.CrcError):
            self.crc_errors += 1
            assembler.lost("CRC error")
            self.stream_fault_log.fault("crc", f"frame {event.seq} failed its CRC")
        elif isinstance(event, wire.Oversize):
            self.oversize_frames += 1
            assembler.lost("oversize frame")
            self.stream_fault_log.fault("oversize", f"frame of {event.length} bytes exceeds max_frame_bytes "
                                                  f"{self.config.max_frame_bytes}")
        elif isinstance(event, wire.Skipped):
            self.skipped_bytes += event.count
            self.stream_fault_log.fault("garbage", f"{event.count} bytes of garbage skipped", logging.INFO)

    async def _handle(self, frame: wire.Frame, assembler: FrameAssembler) -> None:
        self._last_seen_s = time.monotonic()
        try:
            if frame.type is wire.FrameType.HELLO:
                self.hello = wire.parse_hello(frame.payload)
                if self.hello.role != self.role:
                    raise wire.VersionError(f"device is a {self.hello.role} device; this end is {self.role}")
                self.problem = None
                if not self.fault_log.failing:
                    log.info("link %s: serial device %s: %s", self.link_id, self.path, self.hello.name)
            elif self.hello is None:
                return                                  # nothing counts before the HELLO
            elif frame.type is wire.FrameType.SETTINGS:
                self._settings = wire.parse_settings(frame.payload)
            elif frame.type is wire.FrameType.STATUS:
                self.status = wire.parse_status(frame.payload)
                if self.status.ok:
                    self.status_fault_log.recovered("reports ok again")
                else:
                    self.status_fault_log.fault("status", f"reports: {self.status.detail}")
                self.problem = None
            elif frame.type is wire.FrameType.DETECTIONS:
                raw = assembler.add(wire.parse_detections(frame.payload))
                if raw is not None:
                    self.problem = None
                    self.fault_log.recovered(f"{self.hello.name} delivers frames again")
                    await self._frames_in.send(raw)
        except wire.VersionError:
            raise
        except wire.SerialProtocolError as exc:
            assembler.lost(str(exc))
            self.stream_fault_log.fault("refused", f"{frame.type.name} frame refused: {exc}")

    async def next_frame(self) -> RawFrame:
        return await self._frames_out.receive()

    def decoy_settings(self) -> DecoySettings:
        if self._settings is None:
            raise DeviceError(f"serial device {self.path} has sent no SETTINGS (decoy intensities) yet")
        mu1, mu2, mu3, p1, p2, q_x = self._settings
        return DecoySettings(mu_signal=mu1, mu_decoy=mu2, mu_vacuum=mu3, p_signal=p1, p_decoy=p2, q_x=q_x)

    async def wait_settings(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            while self._settings is None:
                await trio.sleep(0.05)

    async def channel_status(self) -> ChannelMetrics:
        return ChannelMetrics(qber=self._qber or 0.0, key_rate_bps=self._key_rate_bps, photon_rate_hz=0.0,
                              visibility=max(0.0, 1 - 2 * self._qber) if self._qber is not None else 0.0,
                              link_loss_db=0.0, temperature_c=self.status.temperature_c if self.status else 0.0,
                              uptime_s=self.status.uptime_s if self.status else 0.0)

    async def health(self) -> DeviceHealth:
        problem = self.problem or (None if self.status is None or self.status.ok else
                                   f"serial device {self.path} reports: {self.status.detail}")
        diagnostics = {"crc_errors": self.crc_errors, "skipped_bytes": self.skipped_bytes,
                       "oversize_frames": self.oversize_frames}
        name = self.hello.name if self.hello else "?"
        return DeviceHealth(problem is None, problem or f"serial device {self.path} ({name}) streaming",
                            self.status.temperature_c if self.status else 0.0, time.monotonic() - self._started_s,
                            diagnostics)

    def update_estimates(self, *, qber: float | None = None, key_rate_bps: float | None = None) -> None:
        if qber is not None:
            self._qber = qber
        if key_rate_bps is not None:
            self._key_rate_bps = key_rate_bps
