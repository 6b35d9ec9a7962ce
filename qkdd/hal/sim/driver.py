"""The sim driver as a pair of devices: `device_for(link)` builds Alice's (source, fiber, listener on the
device address) or Bob's (receiver, connects to that address) from a link's config.

    SimAliceDevice   qkdd.hal.sim.alice   runs the Simulator; set_attack, set_drift, calibrate (realign)
    SimBobDevice     qkdd.hal.sim.bob     receives its detections; set_monitor, calibrate (asks Alice)
    E91: PairSourceDevice on the end `[links.sim] source_host` names, PairDetectorDevice on the other
    (qkdd.hal.sim.pair_source)

The TCP link between them is the simulated quantum channel (qkdd.hal.sim.wire), not the authenticated
classical channel; see wire.py for what it carries.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from qkdd.config_schema import parse_host_port
from qkdd.hal.base import DeviceError
from qkdd.hal.sim.alice import SimAliceDevice
from qkdd.hal.sim.bob import SimBobDevice
from qkdd.hal.sim.pair_source import PairDetectorDevice, PairSourceDevice, check_attack
from qkdd.hal.sim.cv_device import CvAliceDevice, CvBobDevice
from qkdd.hal.sim.settings import DEFAULT_DEVICE_ADDR, SimConfig

if TYPE_CHECKING:
    from qkdd.config import LinkConfig

__all__ = ["SimAliceDevice", "SimBobDevice", "device_for"]


def _cv_device_for(link: "LinkConfig", sim: SimConfig, host: str, port: int) -> CvAliceDevice | CvBobDevice:
    """The GG02 devices (qkdd.hal.sim.cv_device) of protocol "cvqkd"."""
    try:
        settings = sim.cv_settings()
    except ValueError as exc:
        raise DeviceError(f"link {link.link_id}: [links.sim] cv_*: {exc}") from None
    if link.role == "alice":
        return CvAliceDevice(settings, symbols_per_frame=sim.cv_symbols_per_frame, listen_host=host, listen_port=port,
                             symbol_rate_hz=sim.cv_symbol_rate_hz, realtime=sim.realtime, seed=sim.seed)
    return CvBobDevice(host=host, port=port, eta_det=settings.params.eta_det)


def device_for(link: "LinkConfig") -> SimAliceDevice | SimBobDevice | CvAliceDevice | CvBobDevice:
    """The sim device of this end of `link` (driver "sim"); DeviceError for what the sim cannot run."""
    if link.driver != "sim":
        raise DeviceError(f"link {link.link_id}: driver {link.driver!r} is not the simulator")
    if link.protocol not in ("bb84", "e91", "cvqkd"):
        raise DeviceError(f"link {link.link_id}: the simulator runs bb84, e91 or cvqkd, not {link.protocol!r}")
    sim = link.sim or SimConfig()
    host, port = parse_host_port(link.device_addr or DEFAULT_DEVICE_ADDR, allow_port_zero=True)
    if link.protocol == "e91":
        return _pair_device(link, sim, host, port)
    if link.protocol == "cvqkd":
        return _cv_device_for(link, sim, host, port)
    if link.role == "alice":
        return SimAliceDevice(sim.params(link.protocol), listen_host=host, listen_port=port,
                              frame_slots=sim.frame_slots, max_detections=sim.max_detections_per_frame,
                              realtime=sim.realtime, seed=sim.seed,
                              attack=sim.initial_attack() if link.protocol == "bb84" else None,
                              drift=sim.initial_drift(), temperature_c=sim.temperature_c)
    return SimBobDevice(host=host, port=port, protocol=link.protocol, max_detections=sim.max_detections_per_frame,
                        monitor=sim.monitor, monitor_threshold_w=sim.monitor_threshold_w,
                        temperature_c=sim.temperature_c)


def _pair_device(link: "LinkConfig", sim: SimConfig, host: str, port: int) -> PairSourceDevice | PairDetectorDevice:
    """E91: the pair source on the host of `source_host`'s end, the far end's detectors elsewhere."""
    if link.role != sim.source_host:
        return PairDetectorDevice(side=link.role, host=host, port=port, max_detections=sim.max_detections_per_frame,
                                  temperature_c=sim.temperature_c)
    try:
        attack = check_attack(sim.initial_attack())
    except ValueError as exc:
        raise DeviceError(f"link {link.link_id}: {exc}") from None
    return PairSourceDevice(sim.params(link.protocol), local_side=link.role, dead_time_ns=sim.dead_time_ns,
                            attack=attack, listen_host=host, listen_port=port, frame_slots=sim.frame_slots,
                            max_detections=sim.max_detections_per_frame, realtime=sim.realtime, seed=sim.seed,
                            drift=sim.initial_drift(), temperature_c=sim.temperature_c)
