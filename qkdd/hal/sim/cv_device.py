"""The sim driver's GG02 (cvqkd) devices: Alice's runs the CV simulator (qkdd.hal.sim.cv_channel) and
hands Bob's device his detector readings and shot-noise calibration over the simulated quantum channel
(qkdd.hal.sim.cv_wire); each yields its side's RawFrame (cv_alice / cv_bob) once Bob acknowledged it.

Frame ids start at the wall-clock time in microseconds and count up, as the BB84 sim devices' do, so the
link engine pairs the two ends' frames by id; a frame whose hand-over fails is dropped at Alice.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import trio

from qkdd.hal.base import ChannelMetrics, CvAliceSymbols, CvBobSamples, Device, DeviceError, DeviceHealth, RawFrame
from qkdd.hal.sim import cv_wire
from qkdd.hal.sim.channel_ends import DialingEnd, ListeningEnd
from qkdd.hal.sim.cv_channel import CvChannel, CvChannelSettings
from qkdd.hal.sim.pacing import Pacer
from qkdd.hal.sim.stream import ConnectionLost, read_message
from qkdd.peer.backoff import Backoff
from qkdd.thread_cpu import run_sync_counted

log = logging.getLogger("qkdd.hal.sim")

CALIBRATION_SAMPLES = 1_000_000         # per frame: LO-only and LO-off records of the shot-noise calibration


class CvAliceDevice(ListeningEnd, Device):
    def __init__(self, settings: CvChannelSettings, *, symbols_per_frame: int, listen_host: str = "127.0.0.1",
                 listen_port: int = 0, symbol_rate_hz: float = 1e8, realtime: bool = True, seed: int | None = None,
                 hello_timeout_s: float = 5.0, ack_timeout_s: float = 60.0):
        if not 1000 <= symbols_per_frame <= cv_wire.MAX_SYMBOLS:
            raise DeviceError(f"sim: cv_symbols_per_frame must lie in [1000, {cv_wire.MAX_SYMBOLS}]")
        self.settings = settings
        self.symbols_per_frame = int(symbols_per_frame)
        self.listen_host, self.listen_port = listen_host, listen_port
        self.symbol_rate_hz = symbol_rate_hz
        self.hello_timeout_s, self.ack_timeout_s = hello_timeout_s, ack_timeout_s
        self._channel = CvChannel(settings, seed=seed)
        self._pacer = Pacer(symbol_rate_hz, realtime=realtime)
        self._next_frame_id = time.time_ns() // 1000
        self._listener: trio.SocketListener | None = None
        self._stream: trio.SocketStream | None = None
        self._receiver = cv_wire.Receiver("alice")
        self._lock = trio.Lock()
        self._started_s = time.monotonic()
        self._fed_key_rate_bps = 0.0
        self.stats = {"frames": 0, "frames_dropped": 0, "symbols": 0, "connections": 0}

    def set_cloner(self, excess_noise: float) -> None:
        """Eve's entangling cloner from the next frame generated on: extra excess noise (SNU, channel input)."""
        self.settings = dataclasses.replace(self.settings, cloner_excess_noise=excess_noise)
        self._channel.settings = self.settings

    async def next_frame(self) -> RawFrame:
        async with self._lock:
            while True:
                stream = await self._connection()
                frame, calibration = await run_sync_counted(self.count_cpu, self._generate)
                frame_id = self._next_frame_id
                self._next_frame_id += 1
                await trio.sleep_until(self._pacer.frame_done_s(self.symbols_per_frame, trio.current_time()))
                message = cv_wire.CvFrameMessage(frame_id, calibration.lo_variance_v2,
                                                 calibration.electronic_variance_v2, frame.quadrature, frame.bob_v)
                try:
                    await self._hand_over(stream, message)
                except (ConnectionLost, cv_wire.WireError, trio.BrokenResourceError, trio.ClosedResourceError,
                        OSError) as exc:
                    self.stats["frames_dropped"] += 1
                    log.warning("sim: receiver connection lost; frame dropped",
                                extra={"frame_id": frame_id, "reason": str(exc)})
                    await self._drop_connection()
                    continue
                except BaseException:
                    await self._drop_connection()
                    raise
                self.stats["frames"] += 1
                self.stats["symbols"] += self.symbols_per_frame
                return RawFrame(frame_id=frame_id, slot_count=self.symbols_per_frame,
                                cv_alice=CvAliceSymbols(frame.alice, self.settings.params.modulation_variance))

    def _generate(self):
        calibration = self._channel.calibrate(CALIBRATION_SAMPLES)
        return self._channel.frame(self.symbols_per_frame), calibration

    async def _hand_over(self, stream: trio.SocketStream, message: cv_wire.CvFrameMessage) -> None:
        await stream.send_all(cv_wire.encode_frame(message))
        reply = await read_message(stream, self._receiver, idle_timeout_s=self.ack_timeout_s,
                                   message_timeout_s=self.hello_timeout_s)
        if not isinstance(reply, cv_wire.Ack) or reply.frame_id != message.frame_id:
            raise cv_wire.WireError(f"CV quantum channel: expected the ACK of frame {message.frame_id}")

    def _hello_message(self) -> bytes:
        return cv_wire.encode_alice_hello(cv_wire.AliceHello(self.settings.params.detection, self.symbol_rate_hz))

    def update_estimates(self, *, qber: float | None = None, key_rate_bps: float | None = None) -> None:
        if key_rate_bps is not None:
            self._fed_key_rate_bps = float(key_rate_bps)

    async def channel_status(self) -> ChannelMetrics:
        p = self.settings.params
        return ChannelMetrics(qber=0.0, key_rate_bps=self._fed_key_rate_bps, photon_rate_hz=self.symbol_rate_hz,
                              visibility=0.0, link_loss_db=p.alpha_db_per_km * p.distance_km, temperature_c=22.0,
                              uptime_s=time.monotonic() - self._started_s)

    async def health(self) -> DeviceHealth:
        connected = self._stream is not None
        return DeviceHealth(ok=self._listener is not None,
                            detail="receiver connected" if connected else "waiting for the receiver",
                            temperature_c=22.0, uptime_s=time.monotonic() - self._started_s,
                            diagnostics={"role": "alice", "protocol": "cvqkd", "connected": connected, **self.stats})

    def control_status(self) -> dict[str, Any]:
        p = self.settings.params
        return {"role": "alice", "protocol": "cvqkd", "distance_km": p.distance_km,
                "modulation_variance": p.modulation_variance, "cloner_excess_noise": self.settings.cloner_excess_noise,
                **self.stats}


class CvBobDevice(DialingEnd, Device):
    def __init__(self, *, host: str, port: int, eta_det: float, idle_timeout_s: float = 120.0,
                 message_timeout_s: float = 30.0, connect_timeout_s: float = 5.0):
        self.host, self.port = host, port
        self.eta_det = eta_det
        self.idle_timeout_s, self.message_timeout_s = idle_timeout_s, message_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._backoff = Backoff(0.05, 5.0)
        self._receiver = cv_wire.Receiver("bob")
        self._stream: trio.SocketStream | None = None
        self._hello: cv_wire.AliceHello | None = None
        self._closed = False
        self._lock = trio.Lock()
        self._started_s = time.monotonic()
        self._fed_key_rate_bps = 0.0
        self.stats = {"frames": 0, "symbols": 0, "connections": 0}

    async def next_frame(self) -> RawFrame:
        async with self._lock:
            message = await self._next_frame_message()
            self.stats["frames"] += 1
            self.stats["symbols"] += int(message.quadrature.size)
            return RawFrame(frame_id=message.frame_id, slot_count=int(message.quadrature.size),
                            cv_bob=CvBobSamples(message.quadrature, message.volts, message.lo_variance_v2,
                                                message.electronic_variance_v2, self._hello.detection, self.eta_det))

    async def _send_ack(self, stream: trio.SocketStream, frame_id: int) -> None:
        await stream.send_all(cv_wire.encode_ack(frame_id))

    def _hello_message(self) -> bytes:
        return cv_wire.encode_bob_hello()

    def update_estimates(self, *, qber: float | None = None, key_rate_bps: float | None = None) -> None:
        if key_rate_bps is not None:
            self._fed_key_rate_bps = float(key_rate_bps)

    async def channel_status(self) -> ChannelMetrics:
        return ChannelMetrics(qber=0.0, key_rate_bps=self._fed_key_rate_bps,
                              photon_rate_hz=self._hello.symbol_rate_hz if self._hello else 0.0, visibility=0.0,
                              link_loss_db=0.0, temperature_c=22.0, uptime_s=time.monotonic() - self._started_s)

    def control_status(self) -> dict[str, Any]:
        return {"role": "bob", "protocol": "cvqkd", "eta_det": self.eta_det, **self.stats}

    async def health(self) -> DeviceHealth:
        connected = self._stream is not None
        return DeviceHealth(ok=True, detail="connected to Alice's device" if connected else "connecting",
                            temperature_c=22.0, uptime_s=time.monotonic() - self._started_s,
                            diagnostics={"role": "bob", "protocol": "cvqkd", "connected": connected, **self.stats})
