"""The device interface (qkdd/hal/base.py) declares everything the link engine and the API call on a
device: a driver that implements only the abstract methods gets the documented defaults, and nothing in
qkdd/ probes a device for a method."""
from __future__ import annotations

import pathlib
import re

import pytest
import trio

from qkdd.hal.base import ChannelMetrics, Device, DeviceError, DeviceHealth
from qkdd.hal.sim.driver import SimAliceDevice, SimBobDevice
from qkdd.hal.sim.settings import SimConfig
from qkdd.protocols.bb84_finite import DecoySettings

QKDD = pathlib.Path(__file__).resolve().parents[1] / "qkdd"
STATUS = ChannelMetrics(qber=0.01, key_rate_bps=2000.0, photon_rate_hz=1e6, visibility=0.98, link_loss_db=5.0,
                        temperature_c=22.0, uptime_s=1.0)


class SelfMeasuringDevice(Device):
    """A driver with only what Device makes abstract: it measures its channel itself."""

    async def init(self) -> None:
        pass

    async def channel_status(self) -> ChannelMetrics:
        return STATUS

    async def health(self) -> DeviceHealth:
        return DeviceHealth(ok=True, detail="fine", temperature_c=22.0, uptime_s=1.0)


def test_the_defaults_of_a_driver_that_implements_only_the_abstract_methods():
    device = SelfMeasuringDevice()

    async def main():
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(device.run)          # reports started and returns: no background work
        device.update_estimates(qber=0.2, key_rate_bps=1.0)  # ignored: it measures its channel itself
        return await device.channel_status()

    assert trio.run(main) == STATUS
    with pytest.raises(DeviceError, match="SelfMeasuringDevice has no decoy-state source"):
        device.decoy_settings()
    with pytest.raises(DeviceError, match="does not support calibration"):
        trio.run(device.calibrate)


def test_the_sim_devices_override_what_they_support():
    alice = SimAliceDevice(SimConfig().params("bb84"), listen_port=0, realtime=False)
    bob = SimBobDevice(host="127.0.0.1", port=9)
    assert isinstance(alice.decoy_settings(), DecoySettings)
    for device in (alice, bob):
        assert type(device).update_estimates is not Device.update_estimates
    with pytest.raises(DeviceError):
        bob.decoy_settings()


def test_nothing_probes_a_device_for_a_method():
    probe = re.compile(r"\b(hasattr|getattr)\([^,()]*device")
    found = [f"{path.relative_to(QKDD)}:{number}" for path in QKDD.rglob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1) if probe.search(line)]
    assert found == []
