"""The `[links.sdk]` section of a link whose device is driven through a vendor C SDK (driver "sdk")."""
from __future__ import annotations

from dataclasses import dataclass, field

from qkdd.config_schema import ConfigError, in_range, meta


@dataclass(frozen=True)
class SdkConfig:
    sdk_library: str                    # the vendor's shared library implementing qkd_device.h (absolute path)
    device_config: str = ""             # passed to qkd_device_open as is (the vendor's own syntax)
    max_records_per_frame: int = field(default=1 << 22, metadata=meta(check=in_range(1, 1 << 28)))
    reopen_s: float = field(default=1.0, metadata=meta(check=in_range(0.05, 600)))

    def validate(self, key: str) -> None:
        if not self.sdk_library.startswith("/"):
            raise ConfigError(f"{key}.sdk_library", f"must be an absolute path to a shared library, got "
                              f"{self.sdk_library!r}")
