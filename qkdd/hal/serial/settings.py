"""The `[links.serial]` section of a link whose device streams records over a tty (driver "serial");
`device_addr` is the device path."""
from __future__ import annotations

from dataclasses import dataclass, field

from qkdd.config_schema import in_range, meta

BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1000000, 2000000, 3000000, 4000000)


@dataclass(frozen=True)
class SerialConfig:
    baud: int = field(default=921600, metadata=meta(
        check=lambda v: None if v in BAUD_RATES else f"must be one of {', '.join(map(str, BAUD_RATES))}, got {v}"))
    max_frame_bytes: int = field(default=1 << 20, metadata=meta(check=in_range(1024, 1 << 26)))
    max_records_per_frame: int = field(default=1 << 22, metadata=meta(check=in_range(1, 1 << 26)))
    reconnect_s: float = field(default=1.0, metadata=meta(check=in_range(0.05, 600)))
    # no HELLO, STATUS or DETECTIONS for this long: the device counts as silent (unhealthy)
    silence_s: float = field(default=10.0, metadata=meta(check=in_range(0.1, 3600)))
