"""Alice's simulated device: runs the source and the fiber (the Simulator) frame by frame, hands Bob's
device what its detectors register over the simulated quantum channel (qkdd.hal.sim.wire), and yields
Alice's RawFrame of frame N once Bob's device has acknowledged frame N.

Frame ids: they start at the wall-clock time in microseconds when the device is created and count up by
one per frame, so they keep increasing across Bob restarts and Alice restarts alike. Without a connected
Bob no frame is generated. A frame whose hand-over fails (Bob gone, no ACK) is dropped at Alice: its id
is never used again, and the link engine, which pairs frames by id, sees a gap. A frame Bob acknowledged
whose ACK was lost exists only at Bob; the engine drops unpaired frames.

Run-time control (attack, drifts, realignment) takes effect from the next frame generated: changes are
applied between frames, never while the C kernel runs in its worker thread.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

import numpy as np
import trio

from qkdd.hal.base import AliceRecords, ChannelMetrics, Device, DeviceError, DeviceHealth, RawFrame
from qkdd.hal.sim import ambient, wire
from qkdd.hal.sim.channel_ends import ListeningEnd
from qkdd.hal.sim.pacing import Pacer
from qkdd.hal.sim.params import Attack, Drift, SimParams
from qkdd.hal.sim.records import Frame
from qkdd.hal.sim.simulator import Simulator
from qkdd.hal.sim.stream import ConnectionLost, read_message
from qkdd.protocols.bb84_finite import DecoySettings
from qkdd.thread_cpu import run_sync_counted

log = logging.getLogger("qkdd.hal.sim")


class SimAliceDevice(ListeningEnd, Device):
    def __init__(self, params: SimParams, *, listen_host: str = "127.0.0.1", listen_port: int = 0,
                 frame_slots: int = 1 << 28, max_detections: int = 1 << 22, realtime: bool = True,
                 seed: int | bytes | None = None, attack: Attack | None = None, drift: Drift | None = None,
                 temperature_c: float = 22.0, first_frame_id: int | None = None,
                 hello_timeout_s: float = 5.0, ack_timeout_s: float = 60.0, prefetch: bool = True):
        if params.protocol not in wire.PROTOCOL_CODES:
            raise DeviceError(f"sim: protocol {params.protocol!r} is not simulated (bb84 or e91)")
        if not 1 <= frame_slots <= wire.MAX_SLOTS:
            raise DeviceError(f"sim: frame_slots must be in [1, 2^40], got {frame_slots}")
        self.params = params
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.frame_slots = int(frame_slots)
        self.max_detections = int(max_detections)
        self.hello_timeout_s = hello_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self.prefetch = prefetch
        self._prefetched: tuple[Frame, tuple[Attack, Drift, int]] | None = None
        self.temperature_base_c = temperature_c
        self._simulator = Simulator(params, seed=seed, attack=attack, drift=drift)
        self._attack = self._simulator.attack
        self._drift = self._simulator.drift
        self._pacer = Pacer(params.clock_hz, realtime=realtime)
        self._next_frame_id = time.time_ns() // 1000 if first_frame_id is None else int(first_frame_id)
        self._listener: trio.SocketListener | None = None
        self._stream: trio.SocketStream | None = None
        self._receiver = wire.Receiver("alice", protocol=params.protocol)
        self._lock = trio.Lock()
        self._started_s = time.monotonic()
        self._calibration_seq = 0          # last realignment request of Bob's device applied
        self._pending_calibration_seq = 0
        self._fed_qber: float | None = None
        self._fed_key_rate_bps = 0.0
        self.stats = {"frames": 0, "frames_dropped": 0, "slots": 0, "detections": 0, "connections": 0}
        self._last = {"qber": math.nan, "visibility": math.nan, "photon_rate_hz": 0.0, "frame_id": None}

    # ---- setup -------------------------------------------------------------------------------

    # ---- run-time control ---------------------------------------------------------------------

    @property
    def attack(self) -> Attack:
        return self._attack

    @property
    def drift(self) -> Drift:
        return self._drift

    def set_attack(self, attack: Attack) -> None:
        """Eve's action from the next frame on (ValueError for an attack the protocol's model lacks)."""
        if self.params.protocol == "e91" and attack.kind != "none":
            raise ValueError("attack: the E91 simulator models no attacks")
        self._attack = attack

    def set_drift(self, drift: Drift) -> None:
        """Extra loss and misalignment drift from the next frame on."""
        self._drift = drift

    def decoy_settings(self) -> DecoySettings:
        """The source's three-intensity settings (Lim et al. 2014 notation), for the BB84 estimation."""
        p = self.params
        return DecoySettings(mu_signal=p.mu_signal, mu_decoy=p.mu_decoy, mu_vacuum=p.mu_vacuum,
                             p_signal=p.p_signal, p_decoy=p.p_decoy, q_x=p.q_x)

    def expected(self, attack: Attack | None = None, drift: Drift | None = None) -> dict[str, Any]:
        """What the channel model predicts per slot for an attack and drift (default: current)."""
        attack = attack or self._attack
        if self.params.protocol == "e91":
            attack = Attack()
        return Simulator(self.params, seed=bytes(32), attack=attack, drift=drift or self._drift).expected()

    async def calibrate(self) -> dict[str, Any]:
        """Realign the polarisation: the misalignment drift is cleared from the next frame on."""
        return self.realign(requested_by="alice")

    def realign(self, requested_by: str, request_seq: int | None = None) -> dict[str, Any]:
        before = self._drift
        after = Drift(extra_loss_db=before.extra_loss_db)
        self._drift = after
        if request_seq is not None:
            self._pending_calibration_seq = max(self._pending_calibration_seq, request_seq)
        honest = Attack()
        report = {"action": "realign", "requested_by": requested_by,
                  "misalignment_drift_before": before.misalignment, "misalignment_drift_after": after.misalignment,
                  "expected_qber_before": self.expected(honest, before)["class_error"][0],
                  "expected_qber_after": self.expected(honest, after)["class_error"][0],
                  "effective_from_frame": self._next_frame_id}
        log.info("sim: realigned", extra={"requested_by": requested_by,
                                          "misalignment_drift_before": before.misalignment})
        return report

    def update_estimates(self, *, qber: float | None = None, key_rate_bps: float | None = None) -> None:
        """The link engine's measured QBER and secure key rate, reported by channel_status()."""
        if qber is not None:
            self._fed_qber = float(qber)
        if key_rate_bps is not None:
            self._fed_key_rate_bps = float(key_rate_bps)

    # ---- frames -------------------------------------------------------------------------------

    async def next_frame(self) -> RawFrame:
        """Alice's part of the next frame Bob's device acknowledged (waits for Bob when none is connected).

        While frame N is handed over, frame N+1 is simulated in a worker thread (`prefetch`); it is used
        only if no control (attack, drift, realignment) changed meanwhile, else simulated afresh."""
        async with self._lock:
            while True:
                stream = await self._connection()
                frame, controls = await self._take_frame()
                frame_id = self._next_frame_id
                self._next_frame_id += 1
                self._calibration_seq = controls[2]
                await trio.sleep_until(self._pacer.frame_done_s(frame.slots, trio.current_time()))
                message, buffers = await run_sync_counted(self.count_cpu, self._encoded_message, frame, frame_id)
                try:
                    async with trio.open_nursery() as nursery:
                        if self.prefetch:
                            nursery.start_soon(self._prefetch)
                        error = await self._try_hand_over(stream, message, buffers)
                except BaseException:
                    await self._drop_connection()     # cancelled mid-frame: the stream is out of step
                    raise
                if error is not None:
                    self.stats["frames_dropped"] += 1
                    log.warning("sim: receiver connection lost; frame dropped",
                                extra={"frame_id": frame_id, "reason": str(error)})
                    await self._drop_connection()
                    continue
                raw = self._account(frame, frame_id, message)
                simulated = [frame, buffers]    # the simulator's own columns (Bob's side), freed off the loop
                del frame, message, buffers
                await run_sync_counted(self.count_cpu, simulated.clear)
                return raw

    def _controls(self) -> tuple[Attack, Drift, int]:
        return (self._attack, self._drift, self._pending_calibration_seq)

    async def _generate(self) -> tuple[Frame, tuple[Attack, Drift, int]]:
        controls = self._controls()
        if self._simulator.attack != controls[0]:
            self._simulator.attack = controls[0]
        if self._simulator.drift != controls[1]:
            self._simulator.drift = controls[1]
        run = functools.partial(self._simulator.run, self.frame_slots, self.max_detections, copy_slots=False)
        frame = await run_sync_counted(self.count_cpu, run)
        return frame, controls

    async def _prefetch(self) -> None:
        self._prefetched = await self._generate()

    async def _take_frame(self) -> tuple[Frame, tuple[Attack, Drift, int]]:
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[1] == self._controls():
            return prefetched
        return await self._generate()

    async def _try_hand_over(self, stream: trio.SocketStream, message: wire.FrameMessage,
                             buffers: list) -> Exception | None:
        try:
            await self._hand_over(stream, message, buffers)
        except (ConnectionLost, wire.WireError, trio.BrokenResourceError, trio.ClosedResourceError,
                OSError) as exc:
            return exc
        return None

    def _encoded_message(self, frame: Frame, frame_id: int) -> tuple[wire.FrameMessage, list]:
        """The frame's FRAME message and its bytes (wire.encode_frame: a pass over the slots, so in a worker)."""
        message = self._message(frame, frame_id)
        return message, wire.encode_frame(message)

    def _message(self, frame: Frame, frame_id: int) -> wire.FrameMessage:
        qber = ambient.frame_qber(frame)
        # Alice's and Bob's slots are one column (Simulator.run(copy_slots=False)), this device owns the frame and
        # sends it once: number them from the frame's start in place rather than in a fresh array (8 bytes a
        # detection, 256 MB at 2^25); the frame's own slot numbers are not read after this.
        slots = frame.bob.slot
        if slots.dtype != np.uint64 or not slots.flags.writeable:
            slots = slots.astype(np.uint64)
        np.subtract(slots, np.uint64(frame.first_slot), out=slots)
        return wire.FrameMessage(
            frame_id=frame_id, slot_count=frame.slots, calibration_seq=self._calibration_seq,
            link_loss_db=ambient.link_loss_db(self.params, self._simulator.drift),
            monitor_power_w=frame.monitor_power_w, qber=qber, visibility=ambient.frame_visibility(frame, qber),
            slots=slots, bases=frame.bob.basis, outcomes=frame.bob.outcome)

    async def _hand_over(self, stream: trio.SocketStream, message: wire.FrameMessage, buffers: list) -> None:
        for buffer in buffers:
            await stream.send_all(buffer)
        # One deadline for the ACK: REALIGNs from Bob on the way do not extend it (a Bob that sent
        # nothing else would otherwise keep this frame waiting for ever).
        with trio.move_on_after(self.ack_timeout_s):
            while True:
                reply = await read_message(stream, self._receiver, idle_timeout_s=self.ack_timeout_s,
                                           message_timeout_s=self.hello_timeout_s)
                if isinstance(reply, wire.Realign):
                    self.realign("bob", reply.request_seq)
                elif isinstance(reply, wire.Ack):
                    if reply.frame_id != message.frame_id:
                        raise wire.WireError(f"quantum channel: ACK for frame {reply.frame_id}, "
                                             f"expected {message.frame_id}")
                    return
        raise ConnectionLost(f"no ACK for frame {message.frame_id} within {self.ack_timeout_s:g} s")

    def _account(self, frame: Frame, frame_id: int, message: wire.FrameMessage) -> RawFrame:
        self.stats["frames"] += 1
        self.stats["slots"] += frame.slots
        self.stats["detections"] += len(frame.alice)
        seconds = frame.slots / self.params.clock_hz
        self._last = {"qber": message.qber, "visibility": message.visibility, "frame_id": frame_id,
                      "photon_rate_hz": len(frame.alice) / seconds if seconds > 0 else 0.0}
        records = AliceRecords(slots=message.slots, bits=frame.alice.bit, bases=frame.alice.basis,
                               intensities=frame.alice.intensity)
        return RawFrame(frame_id=frame_id, slot_count=frame.slots, alice=records,
                        pulses_per_intensity=tuple(int(p) for p in frame.pulses_per_class))

    @property
    def simulated_time_s(self) -> float:
        """Source time covered by the frames handed over: slots / clock rate."""
        return self.stats["slots"] / self.params.clock_hz

    # ---- the connection to Bob's device (qkdd.hal.sim.channel_ends) -----------------------------------

    def _hello_message(self) -> bytes:
        return wire.encode_alice_hello(wire.AliceHello(self.params.protocol, self.params.clock_hz, wire.MAX_SLOTS))

    def _connected(self) -> None:
        log.info("sim: receiver connected", extra={"next_frame_id": self._next_frame_id})

    # ---- status -------------------------------------------------------------------------------

    def uptime_s(self) -> float:
        return time.monotonic() - self._started_s

    async def channel_status(self) -> ChannelMetrics:
        qber = self._fed_qber if self._fed_qber is not None else self._last["qber"]
        visibility = self._last["visibility"]
        if self._fed_qber is not None and self.params.protocol == "bb84":
            visibility = 1.0 - 2.0 * self._fed_qber
        uptime = self.uptime_s()
        return ChannelMetrics(qber=0.0 if math.isnan(qber) else qber, key_rate_bps=self._fed_key_rate_bps,
                              photon_rate_hz=self._last["photon_rate_hz"],
                              visibility=0.0 if math.isnan(visibility) else visibility,
                              link_loss_db=ambient.link_loss_db(self.params, self._drift),
                              temperature_c=ambient.temperature_c(self.temperature_base_c, uptime), uptime_s=uptime)

    async def health(self) -> DeviceHealth:
        uptime = self.uptime_s()
        listening = self._listener is not None
        connected = self._stream is not None
        detail = ("receiver connected" if connected else "waiting for the receiver") if listening \
            else "not listening"
        return DeviceHealth(ok=listening, detail=detail,
                            temperature_c=ambient.temperature_c(self.temperature_base_c, uptime), uptime_s=uptime,
                            diagnostics={"role": "alice", "connected": connected, **self.stats,
                                         "last_frame_id": self._last["frame_id"],
                                         "simulated_time_s": self.simulated_time_s})

    def control_status(self) -> dict[str, Any]:
        """Attack, drift and source for the admin sim-control route (never in health or metrics)."""
        attack = self._attack
        return {"role": "alice", "attack": attack.kind if attack.kind != "intercept-resend"
                else f"intercept-resend:{attack.fraction:g}", "blinding_power_w": attack.blinding_power_w,
                "drift": {"extra_loss_db": self._drift.extra_loss_db, "misalignment": self._drift.misalignment},
                "distance_km": self.params.distance_km, "clock_hz": self.params.clock_hz,
                "frame_slots": self.frame_slots, "realtime": self._pacer.realtime,
                "next_frame_id": self._next_frame_id, "simulated_time_s": self.simulated_time_s, **self.stats}
