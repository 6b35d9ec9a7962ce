"""The `[links.etsi014]` section of a link whose device is a vendor KME (driver "etsi014" or a vendor
preset), and the presets: each is the etsi014 driver with that vendor's defaults filled in."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from qkdd.config_schema import ConfigError, in_range, meta

ETSI014_DRIVERS = ("etsi014", "idq", "toshiba", "qlabs")
SAE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
DEFAULT_PATH_PREFIX = "/api/v1/keys"         # ETSI GS QKD 014 V1.1.1 clause 5.1: https://{KME_hostname}/api/v1/keys

# What each preset changes from the plain etsi014 driver. ETSI 014 fixes the API paths and the JSON
# model, so the presets differ only in the port the vendor KME serves on when `device_addr` names no port
# and in the product name shown in status and logs. Toshiba's own key-delivery protocol is not spoken:
# its systems are reached through their ETSI 014 interface like the others. No vendor publishes other
# ETSI 014 defaults (key sizes and request limits come from each KME's Get status at run time, see
# Etsi014Device); README "Drivers" lists the sources searched. A value added here cites its source.
PRESETS: dict[str, dict[str, object]] = {
    "etsi014": {"vendor": "ETSI GS QKD 014 KME", "default_port": 443},
    "idq": {"vendor": "IDQ Cerberis XGR (ETSI 014 KME)", "default_port": 443},
    "toshiba": {"vendor": "Toshiba QKD (ETSI 014 interface)", "default_port": 443},
    "qlabs": {"vendor": "QuintessenceLabs qOptica (ETSI 014 KME)", "default_port": 443},
}


def _sae_check(value: str) -> str | None:
    if SAE_ID_PATTERN.fullmatch(value):
        return None
    return f"must be 1-128 characters of A-Z a-z 0-9 . _ : @ -, got {value!r}"


@dataclass(frozen=True)
class Etsi014DeviceConfig:
    """This end as an SAE of its own vendor KME (`device_addr` names the KME: host:port or https URL)."""

    sae_id: str = field(metadata=meta(check=_sae_check))          # this end's SAE id at its KME
    peer_sae_id: str = field(metadata=meta(check=_sae_check))     # the other end's SAE id (at its own KME)
    cert_file: str                      # this SAE's client certificate (PEM) for the KME's mTLS
    key_file: str                       # its private key (PEM)
    ca_file: str                        # the CA that signs the KME's server certificate
    keys_per_request: int = field(default=16, metadata=meta(check=in_range(1, 1024)))
    request_interval_s: float = field(default=1.0, metadata=meta(check=in_range(0.01, 3600)))
    timeout_s: float = field(default=10.0, metadata=meta(check=in_range(0.1, 300)))
    # the slave end retries a dec_keys that fails for a passing reason (KME down, 5xx) this long before
    # it refuses the batch (the master then discards its copies: no key is usable at one end only)
    fetch_retry_s: float = field(default=30.0, metadata=meta(check=in_range(0, 3600)))
    path_prefix: str = DEFAULT_PATH_PREFIX

    def validate(self, key: str) -> None:
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", self.path_prefix):
            raise ConfigError(f"{key}.path_prefix", f"must be a URL path like {DEFAULT_PATH_PREFIX!r}, "
                              f"got {self.path_prefix!r}")
        if self.sae_id == self.peer_sae_id:
            raise ConfigError(f"{key}.peer_sae_id", "must differ from sae_id (the other end is another SAE)")
        for name in ("cert_file", "key_file", "ca_file"):
            if not getattr(self, name):
                raise ConfigError(f"{key}.{name}", "required: the KME identifies this SAE by its client "
                                  "certificate (ETSI GS QKD 014 clause 4)")


def kme_base_url(device_addr: str, driver: str) -> str:
    """The KME's base URL from `device_addr` (host, host:port or an https URL); the preset's port when none
    is given. ValueError naming the problem otherwise."""
    text = device_addr.strip().rstrip("/")
    if text.startswith("http://"):
        raise ValueError("the KME must be reached over https (ETSI GS QKD 014 clause 4: mutual TLS)")
    host_part = text[len("https://"):] if text.startswith("https://") else text
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?", host_part)
    if not match:
        raise ValueError(f"expected a KME host, host:port or https://host[:port], got {device_addr!r}")
    port = int(match.group(2)) if match.group(2) else int(PRESETS[driver]["default_port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in [1, 65535], got {port}")
    return f"https://{match.group(1)}:{port}"
