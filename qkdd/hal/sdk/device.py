"""SdkDevice: a QKD device end driven through its vendor's C library (qkd_device.h via abi.py). Frames
are read in a trio worker thread into numpy buffers; a library that is missing, of another ABI version,
or that returns an error leaves the device unhealthy with a detail naming the cause, retried every
reopen_s, so the link resumes by itself when the device (or a fixed library) is back. Faults are logged
once per episode (qkdd.fault_episodes), which ends when the device delivers a frame again."""
from __future__ import annotations

import logging
import time

import numpy as np
import trio

from qkdd.fault_episodes import FaultEpisodes
from qkdd.hal.base import (
    AliceRecords,
    BobDetections,
    ChannelMetrics,
    Device,
    DeviceError,
    DeviceHealth,
    RawFrame,
)
from qkdd.hal.sdk.abi import E_AGAIN, Handle, Library, SdkError
from qkdd.hal.sdk.settings import SdkConfig
from qkdd.protocols.bb84_finite import DecoySettings

log = logging.getLogger("qkdd.hal")


class SdkDevice(Device):
    reports_own_faults = True

    def __init__(self, config: SdkConfig, role: str, *, link_id: str = "") -> None:
        self.config = config
        self.role = role
        self.link_id = link_id
        self.problem: str | None = "not opened yet"
        self.frames_read = 0
        self._handle: Handle | None = None
        self._decoy: tuple[float, ...] | None = None
        self._status = None
        self._started_s = time.monotonic()
        self._qber: float | None = None
        self._key_rate_bps = 0.0
        self._frames_in, self._frames_out = trio.open_memory_channel[RawFrame](2)
        self._closing = trio.Lock()          # status() never runs on a handle being closed
        self.fault_log = FaultEpisodes(log, f"link {link_id}: SDK device" if link_id else "SDK device")
        self.status_fault_log = FaultEpisodes(log, self.fault_log.prefix)     # its own status saying not ok

    async def init(self) -> None:
        """Nothing before run(): the library is loaded (and reloaded) there."""

    def _set_problem(self, exc: SdkError) -> None:
        # the kind: the loading (code 0: missing, wrong ABI version), a QKD_DEVICE_E_* code, or any other code
        # (a bounded set, whatever the library returns)
        kind = "load" if exc.code == 0 else f"code {exc.code}" if -5 <= exc.code < 0 else "other code"
        self.fault_log.fault(kind, str(exc))
        self.problem = str(exc)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await self._session()
            except SdkError as exc:
                self._set_problem(exc)
            await trio.sleep(self.config.reopen_s)
            self.fault_log.flush()

    async def _session(self) -> None:
        library = await trio.to_thread.run_sync(Library, self.config.sdk_library)
        try:
            handle = await trio.to_thread.run_sync(library.open, self.config.device_config, self.role)
        except SdkError:
            library.close()
            raise
        self._handle = handle
        try:
            if self.role == "alice":
                self._decoy = handle.decoy()
            self.problem = None
            if not self.fault_log.failing:
                log.info("link %s: SDK device open (%s)", self.link_id, self.config.sdk_library)
            capacity = self.config.max_records_per_frame
            while True:
                buffers = (np.empty(capacity, np.uint64), np.empty(capacity, np.uint8), np.empty(capacity, np.uint8),
                           np.empty(capacity, np.uint8))
                try:
                    info = await trio.to_thread.run_sync(handle.read_frame, *buffers)
                except SdkError as exc:
                    if exc.code == E_AGAIN:
                        await trio.sleep(0.01)
                        continue
                    raise
                self.frames_read += 1
                self.problem = None
                self.fault_log.recovered("delivers frames again")
                await self._frames_in.send(self._raw(info, *buffers))
        finally:
            self._handle = None
            with trio.CancelScope(shield=True):
                async with self._closing:
                    await trio.to_thread.run_sync(handle.close)
                    library.close()

    def _raw(self, info, slots, bases, bits, intensities) -> RawFrame:
        n = info.records
        slots, bases, bits = slots[:n].copy(), bases[:n].copy(), bits[:n].copy()
        if self.role == "alice":
            return RawFrame(info.frame_id, info.slot_count,
                            alice=AliceRecords(slots=slots, bits=bits, bases=bases, intensities=intensities[:n].copy()),
                            pulses_per_intensity=info.pulses_per_intensity)
        return RawFrame(info.frame_id, info.slot_count, bob=BobDetections(slots=slots, bases=bases, outcomes=bits))

    async def next_frame(self) -> RawFrame:
        return await self._frames_out.receive()

    def decoy_settings(self) -> DecoySettings:
        if self._decoy is None:
            raise DeviceError(f"SDK device {self.config.sdk_library} is not open yet (no decoy settings)")
        mu1, mu2, mu3, p1, p2, q_x = self._decoy
        return DecoySettings(mu_signal=mu1, mu_decoy=mu2, mu_vacuum=mu3, p_signal=p1, p_decoy=p2, q_x=q_x)

    async def channel_status(self) -> ChannelMetrics:
        return ChannelMetrics(qber=self._qber or 0.0, key_rate_bps=self._key_rate_bps, photon_rate_hz=0.0,
                              visibility=max(0.0, 1 - 2 * self._qber) if self._qber is not None else 0.0,
                              link_loss_db=0.0, temperature_c=self._status.temperature_c if self._status else 0.0,
                              uptime_s=time.monotonic() - self._started_s)

    async def health(self) -> DeviceHealth:
        handle = self._handle
        if handle is not None and self.problem is None:
            try:
                async with self._closing:
                    if self._handle is handle:
                        self._status = await trio.to_thread.run_sync(handle.status)
                        if self._status.ok:
                            self.status_fault_log.recovered("reports ok again")
                        else:
                            self.status_fault_log.fault("status", f"reports: {self._status.detail}")
                        self.status_fault_log.flush()
            except SdkError as exc:
                self._set_problem(exc)
        problem = self.problem or (None if self._status is None or self._status.ok else
                                   f"SDK device reports: {self._status.detail}")
        detail = self._status.detail if self._status else "open"
        return DeviceHealth(problem is None, problem or f"SDK device: {detail}",
                            self._status.temperature_c if self._status else 0.0, time.monotonic() - self._started_s,
                            {"frames_read": self.frames_read})

    def update_estimates(self, *, qber: float | None = None, key_rate_bps: float | None = None) -> None:
        if qber is not None:
            self._qber = qber
        if key_rate_bps is not None:
            self._key_rate_bps = key_rate_bps
