"""The device interface every HAL driver implements, and the seed's records (HIP-0071, "Why a HAL").

Two kinds of device sit behind it. Devices that post-process themselves (commercial systems behind an
ETSI 014 KME) hand out finished `KeyBlock`s through `request_key`. Devices whose detections qkdd
post-processes hand out `RawFrame`s through `next_frame`: on the Alice side the prepared states of the
slots Bob detected, on the Bob side his detections. A driver declares which it is with `yields_raw_frames`.

`Device` declares everything the link engine and the API call on a device: a driver overrides what it
supports, and the documented defaults cover the rest (no probing for methods with hasattr).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from qkdd.protocols.bb84_finite import DecoySettings


@dataclass(frozen=True)
class KeyBlock:
    """Finished key material from a device (seed: KeyBlock). `material` is secret and kept out of repr."""

    key_id: str
    material: bytes = field(repr=False)
    bits: int
    qber: float
    key_rate_bps: float
    protocol: str
    timestamp_s: float


@dataclass(frozen=True)
class ChannelMetrics:
    """Channel quality as the device sees it (seed: ChannelMetrics)."""

    qber: float
    key_rate_bps: float
    photon_rate_hz: float
    visibility: float
    link_loss_db: float
    temperature_c: float
    uptime_s: float

    def as_json(self) -> dict[str, float]:
        return {"qber": self.qber, "key_rate": self.key_rate_bps, "photon_rate": self.photon_rate_hz,
                "visibility": self.visibility, "link_loss": self.link_loss_db,
                "temperature": self.temperature_c, "uptime": self.uptime_s}


@dataclass(frozen=True)
class DeviceHealth:
    """Device health and diagnostics (seed: DeviceHealth)."""

    ok: bool
    detail: str
    temperature_c: float
    uptime_s: float
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AliceRecords:
    """Alice's prepared states for the slots of one frame that Bob may have detected (columnar, slot-sorted)."""

    slots: np.ndarray          # uint64, strictly increasing
    bits: np.ndarray           # uint8 0/1
    bases: np.ndarray          # uint8 0 = Z (rectilinear), 1 = X (diagonal)
    intensities: np.ndarray    # uint8 intensity class: 0 signal, 1 decoy, 2 vacuum


class BobDetections:
    """Bob's detections of one frame (columnar, slot-sorted): `slots` (uint64, strictly increasing), `bases`
    (uint8 measurement basis), `outcomes` (uint8 0/1), `count` of them.

    A device that receives the slots as qkd_sift.h's varint stream, already checked (the simulator's wire), builds
    them with `from_slot_stream`: `slot_stream` keeps the stream, which the link sends on as it came, and `slots`
    is decoded only if something reads it (a 2^25-detection frame's 256 MB of uint64 slots at Bob otherwise)."""

    __slots__ = ("bases", "outcomes", "count", "slot_stream", "_slots", "_slot_count")

    def __init__(self, slots: np.ndarray, bases: np.ndarray, outcomes: np.ndarray):
        self._slots, self.bases, self.outcomes = slots, bases, outcomes
        self.count = int(np.size(slots))
        self.slot_stream: np.ndarray | None = None
        self._slot_count = 0

    @classmethod
    def from_slot_stream(cls, slot_stream: np.ndarray, count: int, slot_count: int, bases: np.ndarray,
                         outcomes: np.ndarray) -> "BobDetections":
        """Detections whose slots are `slot_stream` (uint8, checked to hold `count` slots below `slot_count`)."""
        detections = cls(np.empty(0, dtype=np.uint64), bases, outcomes)
        detections._slots, detections.count = None, count
        detections.slot_stream, detections._slot_count = slot_stream, slot_count
        return detections

    @property
    def slots(self) -> np.ndarray:
        if self._slots is None:
            from qkdd.bindings import sift
            self._slots = sift.decode_slots(self.slot_stream, self.count, self._slot_count)
        return self._slots

    def __repr__(self) -> str:
        return f"BobDetections(count={self.count}, from_stream={self.slot_stream is not None})"


@dataclass(frozen=True)
class CvAliceSymbols:
    """GG02 (cvqkd): Alice's Gaussian-modulated quadratures of one frame, (symbols, 2) in shot-noise units."""

    values: np.ndarray         # float64 (x_q, x_p) per symbol
    modulation_variance: float


@dataclass(frozen=True)
class CvBobSamples:
    """GG02 (cvqkd): Bob's detector readings of one frame and the frame's shot-noise calibration."""

    quadrature: np.ndarray     # uint8 per symbol: homodyne choice 0 q / 1 p (heterodyne: 0)
    volts: np.ndarray          # float64 (symbols, quadratures)
    lo_variance_v2: float      # signal blocked, LO on: shot + electronic noise
    electronic_variance_v2: float
    detection: str             # "homodyne" or "heterodyne"
    eta_det: float             # the detector's calibrated efficiency


@dataclass(frozen=True)
class RawFrame:
    """One frame of raw data: exactly one of `alice` / `bob` is set, by the device's side (cvqkd: one of
    `cv_alice` / `cv_bob`)."""

    frame_id: int
    slot_count: int                                 # pulse slots the frame spans
    alice: AliceRecords | None = None
    bob: BobDetections | None = None
    pulses_per_intensity: tuple[int, ...] = ()      # Alice side: pulses sent per intensity class
    monitor_alarm: bool = False                     # Bob side: photocurrent monitor saw bright light
    cv_alice: CvAliceSymbols | None = None          # cvqkd, Alice side
    cv_bob: CvBobSamples | None = None              # cvqkd, Bob side


class DeviceError(Exception):
    """The device failed or sent data that cannot be used; the message names the problem."""


class Device(abc.ABC):
    """One QKD device end (seed: QKDDevice). Methods are async: drivers do I/O."""

    yields_raw_frames: bool = True
    # Thread CPU seconds the driver's own work took in worker threads since start: a simulated device's
    # physics and checks (the link reports it as cpu_s["device"], apart from post-processing).
    cpu_s: float = 0.0
    # the driver logs its faults itself, once per episode (qkdd.fault_episodes); the link's health watch
    # then only records them in the link's state. Otherwise the health watch logs them, also once per episode.
    reports_own_faults: bool = False

    def count_cpu(self, seconds: float) -> None:
        """Add one worker-thread call's CPU seconds to cpu_s (qkdd.thread_cpu calls it on the event loop)."""
        self.cpu_s += seconds

    @abc.abstractmethod
    async def init(self) -> None:
        """Open the device and check that it answers."""

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Background work the device needs while its link runs; the link engine starts it in the link's
        nursery after init() (`nursery.start`) and cancels it when the link stops. The default has none: it
        reports started and returns."""
        task_status.started()

    async def request_key(self, bits: int) -> KeyBlock:
        """Finished key of `bits` bits, for devices that post-process themselves."""
        raise DeviceError(f"{type(self).__name__} yields raw frames; keys come from the qkdd pipeline")

    async def next_frame(self) -> RawFrame:
        """The next raw frame, for devices whose detections qkdd post-processes."""
        raise DeviceError(f"{type(self).__name__} yields finished keys, not raw frames")

    @abc.abstractmethod
    async def channel_status(self) -> ChannelMetrics:
        """Current channel quality."""

    @abc.abstractmethod
    async def health(self) -> DeviceHealth:
        """Device health and diagnostics."""

    async def calibrate(self) -> dict[str, Any]:
        """Run a calibration (e.g. realign polarisation) and report what changed."""
        raise DeviceError(f"{type(self).__name__} does not support calibration")

    def decoy_settings(self) -> DecoySettings:
        """The source's decoy-state intensities and probabilities (Alice's side of decoy-state BB84), which
        the link engine's estimation uses; DeviceError for a device that has no such source."""
        raise DeviceError(f"{type(self).__name__} has no decoy-state source")

    def update_estimates(self, *, qber: float | None = None, key_rate_bps: float | None = None) -> None:
        """The link engine's measurements after each frame (QBER, secure key rate in bits per second; None:
        not measured this time). A device that reports them in channel_status() keeps them; the default,
        for devices that measure their channel themselves, ignores them."""

    async def close(self) -> None:
        """Release the device."""
