"""The device of a link end by its `driver`: the simulator, a vendor KME over ETSI 014 (and its vendor
presets), a serial device, or a vendor C SDK. DeviceError naming the link for what cannot be built."""
from __future__ import annotations

from typing import TYPE_CHECKING

from qkdd.hal.base import Device, DeviceError
from qkdd.hal.etsi014.settings import ETSI014_DRIVERS

if TYPE_CHECKING:
    from qkdd.config import LinkConfig

RAW_FRAME_DRIVERS = ("sim", "serial", "sdk")          # drivers whose records the frame path post-processes (BB84)


def device_for(link: "LinkConfig") -> Device:
    if link.driver == "sim":
        from qkdd.hal.sim.driver import device_for as sim_device
        return sim_device(link)
    if link.driver in ETSI014_DRIVERS:
        from qkdd.hal.etsi014.device import Etsi014Device
        from qkdd.hal.etsi014.settings import kme_base_url
        if link.etsi014 is None:
            raise DeviceError(f"link {link.link_id}: driver {link.driver!r} needs [links.etsi014]")
        try:
            base_url = kme_base_url(link.device_addr, link.driver)
        except ValueError as exc:
            raise DeviceError(f"link {link.link_id}: device_addr: {exc}") from None
        return Etsi014Device(base_url, link.etsi014, driver=link.driver, key_bits=link.key_bits)
    if link.driver == "serial":
        from qkdd.hal.serial.device import SerialDevice
        from qkdd.hal.serial.settings import SerialConfig
        return SerialDevice(link.device_addr, link.role, link.serial or SerialConfig(), link_id=link.link_id)
    if link.driver == "sdk":
        from qkdd.hal.sdk.device import SdkDevice
        if link.sdk is None:
            raise DeviceError(f"link {link.link_id}: driver \"sdk\" needs [links.sdk] sdk_library")
        return SdkDevice(link.sdk, link.role, link_id=link.link_id)
    raise DeviceError(f"link {link.link_id}: driver {link.driver!r} has no device yet")
