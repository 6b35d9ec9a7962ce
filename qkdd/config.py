"""The daemon's configuration: TOML file (default /etc/qkdd/qkdd.toml), then environment overrides,
validated into frozen dataclasses. A problem is one ConfigError naming the dotted key (or variable).

Precedence, lowest to highest: field defaults < TOML file < systemd credential (kms client secret) <
environment. Empty environment variables count as unset. The link variables (QKD_LINK_ID, QKD_DRIVER,
...) override the first entry of `[[links]]`, or create it when the file has none (container style).
To add a setting, add a field to the dataclass below (config_schema reads the fields as the schema).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from qkdd.apps_config import Etsi004Config, SkipConfig, check_app_links
from qkdd.config_schema import (Check, ConfigError, FromEnv, Secret, build, in_range, meta, non_negative,
                                parse_host_port, positive, register_checks, register_parser, register_validator,
                                to_plain)
from qkdd.hal.etsi014.settings import ETSI014_DRIVERS, Etsi014DeviceConfig
from qkdd.hal.sdk.settings import SdkConfig
from qkdd.hal.serial.settings import SerialConfig
from qkdd.hal.sim.settings import SimConfig
from qkdd.http.messages import HTTPLimits, TLSSettings
from qkdd.keystore.capacity import DEFAULT_CACHE_MIB, MAX_CACHE_MIB, MIN_MAX_BYTES, MIN_MAX_KEY_BITS
from qkdd.kme.config import Etsi014Config

__all__ = ["Config", "ConfigError", "DaemonConfig", "KeystoreConfig", "KMSConfig", "LinkConfig", "ListenAddress",
           "NodeConfig", "RelayConfig",
           "WireGuardConfig", "ListenerConfig", "LISTENERS", "Secret", "load_config", "DEFAULT_CONFIG_PATH",
           "ENV_VARIABLES", "KmsPushConfig", "IpsecConfig"]

DEFAULT_CONFIG_PATH = "/etc/qkdd/qkdd.toml"
LISTENERS = ("api", "health")                            # 8071 and 8072
CREDENTIAL_KMS_CLIENT_SECRET = "kms-client-secret"     # credential name under $CREDENTIALS_DIRECTORY
# Credential ids systemd gives it: `LoadCredential=kms-client-secret:PATH` loads it under its own name;
# the packaged unit loads the directory /etc/qkdd/credentials as `LoadCredential=qkdd:DIR`, which
# prefixes each file name with "qkdd_".
CREDENTIAL_KMS_CLIENT_SECRET_IDS = (CREDENTIAL_KMS_CLIENT_SECRET, f"qkdd_{CREDENTIAL_KMS_CLIENT_SECRET}")

# BB84's QBER limit for secure key extraction with one-way post-processing: the key fraction
# 1 - 2 h(Q) (Shor & Preskill, PRL 85, 441 (2000), Eq. 1) reaches zero at Q ≈ 11.0 %.
QBER_LIMIT = 0.11
MIN_ROTATION_INTERVAL_S = 30.0
MIN_STALL_AFTER_S = 10.0             # the key rate is measured over 10 s (qkdd.link.engine RATE_WINDOW_S)
LINK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

Role = Literal["alice", "bob"]
Driver = Literal["sim", "etsi014", "serial", "sdk", "idq", "toshiba", "qlabs"]
Protocol = Literal["bb84", "e91", "cvqkd"]
Reconciliation = Literal["cascade", "ldpc"]
LdpcDecoder = Literal["auto", "min-sum", "sum-product"]     # qkdd.postprocess.ldpc_plan.DECODERS
LogLevel = Literal["debug", "info", "warning", "error"]
AuthMode = Literal["pq", "its", "both"]
AUTH_CHUNK_BITS = 128                # the authentication pool's unit (qkdd.auth.pool)


# ---- addresses ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ListenAddress:
    """`host:port` (IPv6 as `[::1]:8071`); port 0 asks the kernel for a free port (tests)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> "ListenAddress":
        host, port = parse_host_port(text, allow_port_zero=True)
        return cls(host, port)


def _peer_listen_check(value: str) -> str | None:
    if not value:
        return None
    try:
        parse_host_port(value, allow_port_zero=True)
    except ValueError as exc:
        return str(exc)
    return None


def _peer_address_check(value: str) -> str | None:
    if not value:
        return None
    try:
        parse_host_port(value)
    except ValueError as exc:
        return str(exc)
    return None


register_parser(ListenAddress, ListenAddress.parse)


# ---- listeners ------------------------------------------------------------------------------------

def _integer_at_least_one(value: int) -> str | None:
    return None if value >= 1 else f"must be at least 1, got {value}"


# Every limit must be positive unless listed here (zero body bytes and zero grace are allowed); limits
# the HTTP server adds later are covered without a change here.
_LIMIT_CHECKS = {
    "max_header_bytes": in_range(1024, 1 << 20),
    "max_body_bytes": in_range(0, 1 << 30),
    "max_requests_per_connection": _integer_at_least_one,
    "max_connections": in_range(1, 1 << 20),
    "max_connections_per_source": in_range(1, 1 << 20),
    "authenticated_reserve": in_range(0, 1 << 20),
    "max_buffered_body_bytes": in_range(0, 1 << 34),
    "shutdown_grace_s": non_negative,
}
register_checks(HTTPLimits, **{limit.name: _LIMIT_CHECKS.get(limit.name, positive)
                               for limit in dataclasses.fields(HTTPLimits)})


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


register_checks(TLSSettings, cert_file=_non_empty, key_file=_non_empty)


def _validate_tls(tls: TLSSettings, key: str) -> None:
    if tls.client_cert != "none" and not tls.client_ca_file:
        raise ConfigError(f"{key}.client_ca_file",
                          f'required when client_cert = "{tls.client_cert}" (the CA that signs client certificates)')


register_validator(TLSSettings, _validate_tls)


CLIENT_FINGERPRINT_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")


def _client_list_check(entries: tuple[str, ...]) -> str | None:
    for index, entry in enumerate(entries):
        if CLIENT_FINGERPRINT_PATTERN.fullmatch(entry) or (entry.startswith("cn:") and entry[3:].strip()):
            continue
        return (f"entry {index} must be \"sha256:<64 lowercase hex digits>\" or \"cn:<common name>\", "
                f"got {entry!r}")
    return None


@dataclass(frozen=True)
class ListenerConfig:
    """One HTTP listener: address, optional TLS (client certificates none/optional/required), limits."""

    listen: ListenAddress
    tls: TLSSettings | None = None
    limits: HTTPLimits = field(default_factory=HTTPLimits)


@dataclass(frozen=True)
class ApiListenerConfig(ListenerConfig):
    """Port 8071: /v1, ETSI 014/004; the local host unless configured otherwise. `admin_clients`: the client
    certificates allowed on the routes that change state (calibrate, sim control); `key_clients`: those
    allowed on the /v1 key routes; link reads take either; an empty list stands for loopback clients; each
    "sha256:<hex fingerprint of the DER certificate>" or "cn:<common name>" (qkdd.api.callers)."""

    listen: ListenAddress = ListenAddress("127.0.0.1", 8071)
    admin_clients: tuple[str, ...] = field(default=(), metadata=meta(check=lambda v: _client_list_check(v)))
    key_clients: tuple[str, ...] = field(default=(), metadata=meta(check=lambda v: _client_list_check(v)))


@dataclass(frozen=True)
class HealthListenerConfig(ListenerConfig):
    """Port 8072: /healthz and /metrics for whoever reaches its address (the local host unless configured
    otherwise), plain HTTP unless tls is set."""

    listen: ListenAddress = ListenAddress("127.0.0.1", 8072)


# ---- daemon, links, KMS ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DaemonConfig:
    state_dir: str = field(default="/var/lib/qkdd", metadata=meta(check=_non_empty))
    log_level: LogLevel = "info"


def _zero_or_at_least(low: int) -> Check:
    def check(value: int) -> str | None:
        if value == 0 or low <= value <= 1 << 62:
            return None
        return f"must be 0 (no bound) or in [{low}, 2^62], got {value}"
    return check


@dataclass(frozen=True)
class KeystoreConfig:
    """`[keystore]`: the key store's capacity (qkdd.keystore.capacity). A link stores no further frame
    once it holds `max_key_bits` of key (pending, available, reserved), or once the store's file holds
    `max_bytes` of data (every link, tombstones of delivered keys, the ETSI 014 ledger); generation
    resumes by itself when keys are handed out or expire. 0 lifts a bound."""

    max_key_bits: int = field(default=1 << 28, metadata=meta(check=_zero_or_at_least(MIN_MAX_KEY_BITS)))
    max_bytes: int = field(default=1 << 30, metadata=meta(check=_zero_or_at_least(MIN_MAX_BYTES)))
    # SQLite's page cache of the store's connection, in MiB: memory grows with the file up to about this.
    cache_mib: int = field(default=DEFAULT_CACHE_MIB, metadata=meta(check=in_range(1, MAX_CACHE_MIB)))


# Product names operators try; their devices sit behind an ETSI GS QKD 014 KME (the vendor presets).
_VENDOR_DRIVER_HINTS = {product: f'{name} devices are driven through their ETSI 014 KME: driver = "{preset}"'
                        for product, name, preset in (("cerberis", "IDQ", "idq"), ("idquantique", "IDQ", "idq"),
                                                      ("quintessencelabs", "QuintessenceLabs", "qlabs"),
                                                      ("qoptica", "QuintessenceLabs", "qlabs"))}


@dataclass(frozen=True)
class LinkConfig:
    """One QKD link: this end's role and device, the protocol, the peer's classical channel.

    The link engine extends this with driver and protocol sections (e.g. `[links.sim]`) as fields.
    """

    link_id: str = field(metadata=meta(check=lambda v: None if LINK_ID_PATTERN.fullmatch(v) else
                                       "must be 1-64 characters of A-Z a-z 0-9 . _ - (starting with a "
                                       f"letter or digit), got {v!r}"))
    role: Role
    driver: Driver = field(metadata=meta(hints=_VENDOR_DRIVER_HINTS))
    protocol: Protocol = "bb84"
    device_addr: str = ""            # sim: Alice listens, Bob connects (host:port, default 127.0.0.1:7081);
                                     # etsi014: KME host:port or URL; serial: device path
    peer_addr: str = field(default="", metadata=meta(check=_peer_address_check))   # peer qkdd host:port
    qber_threshold: float = field(default=0.08, metadata=meta(check=in_range(0, QBER_LIMIT, low_open=True)))
    key_rotation_interval_s: float = field(default=3600.0, metadata=meta(
        check=in_range(MIN_ROTATION_INTERVAL_S, 366 * 86400)))
    # Classical channel: this end dials peer_addr, or listens on peer_listen; messages are signed with
    # the ML-DSA-65 key in peer_key_file and checked against the pinned peer_public_key (file or base64).
    peer_listen: str = field(default="", metadata=meta(check=_peer_listen_check))
    peer_key_file: str = ""
    peer_public_key: str = ""
    # The link engine's pipeline: frames post-processed at once (bounds memory), stored key length, expiry.
    frames_in_flight: int = field(default=4, metadata=meta(check=in_range(1, 64)))
    key_bits: int = field(default=256, metadata=meta(check=lambda v: None if v % 64 == 0 and 64 <= v <= 8192
                                                     else f"must be a multiple of 64 in [64, 8192], got {v}"))
    key_expiry_s: float = field(default=86400.0, metadata=meta(check=in_range(1, 366 * 86400)))
    # Health: a running link whose secret key rate stays below min_key_rate_bps for stall_after_s is
    # reported "stalled" (unhealthy); 0 turns the check off.
    min_key_rate_bps: float = field(default=0.0, metadata=meta(check=non_negative))
    stall_after_s: float = field(default=60.0, metadata=meta(check=in_range(MIN_STALL_AFTER_S, 86400)))
    sim: SimConfig | None = None     # [links.sim]: the simulator's physics, frames, attack and drifts
    # Error correction of BB84 frames: Cascade (interactive) or LDPC (syndromes, few round trips); alike at both ends.
    reconciliation: Reconciliation = "cascade"
    # With "ldpc": Bob's decoder, "min-sum" (faster) or "sum-product" (discloses 0.06-0.09 h(Q) less at 2-8 % QBER
    # at 65-100 % of the throughput; README), or "auto": sum-product for frames above 4 % QBER, where it costs no
    # throughput, and from 1.75 % while no device frame waits for post-processing (CPU to spare), min-sum otherwise
    # (qkdd.postprocess.ldpc_plan.decoder_for); Alice follows whatever code Bob's START names.
    ldpc_decoder: LdpcDecoder = "auto"
    etsi014: Etsi014DeviceConfig | None = None   # [links.etsi014]: this end as an SAE of its vendor KME
    serial: SerialConfig | None = None           # [links.serial]: a device streaming records on a tty
    sdk: SdkConfig | None = None                 # [links.sdk]: a vendor C library implementing qkd_device.h
    # Relay network (with [node]): this link carries link-state announcements and relayed keys.
    relay: bool = True
    # Authentication of the frame path (docs/auth-audit.md): "pq" the peer session's ML-DSA-65 handshake and
    # record MACs; "its" and "both" add Wegman-Carter tags on every frame's transcript ("its" then drops the
    # record MAC on the frame records: qkdd.link.service.peer_settings), keyed from the link's
    # authentication pool, seeded once from auth_secret_file (`qkdctl auth secret`, installed at both ends)
    # and refilled with auth_refill_bits of each frame's key (Alice's pool held at most auth_pool_max_bits).
    auth: AuthMode = "pq"
    auth_secret_file: str = ""
    auth_refill_bits: int = field(default=1024, metadata=meta(
        check=lambda v: None if v % AUTH_CHUNK_BITS == 0 and 0 <= v <= 1 << 20
        else f"must be a multiple of {AUTH_CHUNK_BITS} in [0, {1 << 20}], got {v}"))
    auth_pool_max_bits: int = field(default=1 << 20, metadata=meta(check=in_range(4 * AUTH_CHUNK_BITS, 1 << 30)))
    # E91 links: failure probability of the CHSH lower bound (Hoeffding) every frame must pass (S - delta > 2).
    chsh_eps: float = field(default=1e-10, metadata=meta(check=in_range(1e-40, 1, high_open=True)))

    def validate(self, key: str) -> None:
        if self.reconciliation == "ldpc" and self.protocol != "bb84":
            raise ConfigError(f"{key}.reconciliation", f'"ldpc" is for BB84 links, this link runs "{self.protocol}"')
        if self.ldpc_decoder == "sum-product" and self.reconciliation != "ldpc":
            raise ConfigError(f"{key}.ldpc_decoder", f'only with reconciliation = "ldpc", this link uses '
                                                     f'"{self.reconciliation}"')
        if self.driver == "sdk":
            if self.sdk is None:
                raise ConfigError(f"{key}.sdk", 'required for driver "sdk": sdk_library (the vendor library '
                                  "implementing qkd_device.h)")
        elif self.sdk is not None:
            raise ConfigError(f"{key}.sdk", f'only for driver "sdk", this link uses "{self.driver}"')
        if self.driver not in ("sim", "sdk") and not self.device_addr:
            raise ConfigError(f"{key}.device_addr", f'required for driver "{self.driver}"')
        self._validate_drivers(key)
        if self.sim is not None and self.driver != "sim":
            raise ConfigError(f"{key}.sim", f'only for driver "sim", this link uses "{self.driver}"')
        if self.driver == "sim" and self.device_addr:
            try:
                parse_host_port(self.device_addr, allow_port_zero=True)
            except ValueError as exc:
                raise ConfigError(f"{key}.device_addr", str(exc)) from None
        if self.peer_addr and self.peer_listen:
            raise ConfigError(f"{key}.peer_listen", "set peer_addr (this end dials) or peer_listen, not both")
        if self.auth != "pq" and not self.auth_secret_file:
            raise ConfigError(f"{key}.auth_secret_file", f'required for auth "{self.auth}": the pre-shared secret '
                              "that seeds the authentication pool (write one with `qkdctl auth secret`)")

    def _validate_drivers(self, key: str) -> None:
        """Each driver's own section: required for its driver, refused for another."""
        if self.driver in ETSI014_DRIVERS and self.etsi014 is None:
            raise ConfigError(f"{key}.etsi014", f'required for driver "{self.driver}": sae_id, peer_sae_id, '
                              "cert_file, key_file, ca_file")
        if self.etsi014 is not None and self.driver not in ETSI014_DRIVERS:
            raise ConfigError(f"{key}.etsi014", f'only for driver "etsi014" and its presets, this link uses '
                              f'"{self.driver}"')
        if self.serial is not None and self.driver != "serial":
            raise ConfigError(f"{key}.serial", f'only for driver "serial", this link uses "{self.driver}"')
        if self.driver == "serial" and not self.device_addr.startswith("/"):
            raise ConfigError(f"{key}.device_addr", f"driver \"serial\": the device path (/dev/ttyUSB0, "
                              f"/dev/serial/by-id/...), got {self.device_addr!r}")
        if self.driver in ETSI014_DRIVERS and self.device_addr:
            from qkdd.hal.etsi014.settings import kme_base_url
            try:
                kme_base_url(self.device_addr, self.driver)
            except ValueError as exc:
                raise ConfigError(f"{key}.device_addr", str(exc)) from None

    @property
    def has_peer_channel(self) -> bool:
        """Enough is configured for the daemon to run the classical channel itself."""
        return bool((self.peer_addr or self.peer_listen) and self.peer_key_file and self.peer_public_key)


PskPolicy = Literal["clear", "random"]
Hybrid = Literal["none", "mlkem768"]     # "mlkem768": the PSK/PPK is a KDF over the QKD key and an ML-KEM-768 secret


def _public_key_check(value: str) -> str | None:
    from qkdd.consumers.wg_tool import check_public_key
    return check_public_key(value)


def _interface_check(value: str) -> str | None:
    from qkdd.consumers.wg_tool import check_interface
    return check_interface(value)


# The rotation and fallback settings every key consumer ([[wireguard]], [[kms_push]], [[ipsec]]) shares,
# with the same bounds (qkdd.consumers.rotation reads them).
def _rotation_interval_field():
    return field(default=None, metadata=meta(check=in_range(MIN_ROTATION_INTERVAL_S, 366 * 86400)))


def _expiry_field():
    return field(default=86400.0, metadata=meta(check=in_range(1, 366 * 86400)))


def _activation_delay_field():
    return field(default=2.0, metadata=meta(check=in_range(0, 60)))


def _retry_interval_field():
    return field(default=1.0, metadata=meta(check=in_range(0.1, 600)))


@dataclass(frozen=True)
class WireGuardConfig:
    """One WireGuard tunnel whose pre-shared key follows QKD keys of `link_id` (`[[wireguard]]`).

    Both ends name the tunnel alike; the link's alice leads the rotation. `rotation_interval_s` defaults
    to the link's key_rotation_interval_s (QKD_KEY_ROTATION_INTERVAL). When no key came for `expiry_s`,
    `on_exhausted` applies: "clear" removes the PSK (Curve25519 only, the seed's fallback), "random"
    installs a random PSK so the tunnel fails closed.
    """

    name: str = field(metadata=meta(check=lambda v: None if LINK_ID_PATTERN.fullmatch(v) else
                                    f"must be 1-64 characters of A-Z a-z 0-9 . _ -, got {v!r}"))
    link_id: str
    interface: str = field(metadata=meta(check=_interface_check))
    peer_public_key: str = field(metadata=meta(check=_public_key_check))
    rotation_interval_s: float | None = _rotation_interval_field()
    expiry_s: float = _expiry_field()
    on_exhausted: PskPolicy = "clear"
    activation_delay_s: float = _activation_delay_field()
    retry_interval_s: float = _retry_interval_field()
    hybrid: Hybrid = "none"               # "mlkem768": the PSK mixes in an ML-KEM-768 secret (both ends alike)


def _folder_check(value: str) -> str | None:
    return None if re.fullmatch(r"/([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?/?", value) else \
        f"must be a folder path such as / or /inter-cluster, got {value!r}"


def _consumer_name_check(value: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}", value) else \
        f"must be 1-48 characters of A-Z a-z 0-9 _ - (it names the KMS secrets), got {value!r}"


@dataclass(frozen=True)
class KmsPushConfig:
    """One KMS push consumer (`[[kms_push]]`): each agreed key of `link_id` becomes the secrets
    QKD_<NAME>_AES256_CURRENT/_PREVIOUS/_KEY_ID/_QBER/_GENERATED_AT in `folder` of [kms]'s project and
    environment. Both ends name it alike and agree on every key; `push = false` makes this end agree but
    not write (one end pushes only). The fallback policy is the WireGuard tunnels': after `expiry_s`
    without a fresh key, "clear" deletes the secrets, "random" writes random ones (fail closed)."""

    name: str = field(metadata=meta(check=_consumer_name_check))
    link_id: str
    folder: str = field(default="/", metadata=meta(check=_folder_check))
    push: bool = True
    rotation_interval_s: float | None = _rotation_interval_field()
    expiry_s: float = _expiry_field()
    on_exhausted: PskPolicy = "clear"
    activation_delay_s: float = _activation_delay_field()
    retry_interval_s: float = _retry_interval_field()
    retry_max_s: float = field(default=300.0, metadata=meta(check=in_range(0.1, 3600)))


@dataclass(frozen=True)
class IpsecConfig:
    """One IKEv2 connection whose post-quantum pre-shared key (RFC 8784 PPK) follows QKD keys of
    `link_id` (`[[ipsec]]`): installed into strongSwan's charon over VICI as a PPK named by the key id.
    The initiator loads `connection` from `swanctl_conf` with that ppk_id at each rotation (the
    responder finds the PPK by the id the initiator sends). Same fallback policy as the others: "clear"
    unloads the PPK (with ppk_required the SA fails closed, else IKE goes on without it), "random"
    installs a random PPK (fails closed)."""

    name: str = field(metadata=meta(check=_consumer_name_check))
    link_id: str
    connection: str = field(metadata=meta(check=lambda v: None if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v) else
                                          f"must be a swanctl connection name, got {v!r}"))
    initiator: bool = False
    vici_socket: str = "/var/run/charon.vici"
    swanctl_conf: str = "/etc/swanctl/swanctl.conf"
    rotation_interval_s: float | None = _rotation_interval_field()
    expiry_s: float = _expiry_field()
    on_exhausted: PskPolicy = "clear"
    activation_delay_s: float = _activation_delay_field()
    retry_interval_s: float = _retry_interval_field()
    retry_max_s: float = field(default=60.0, metadata=meta(check=in_range(0.1, 3600)))
    hybrid: Hybrid = "none"


@dataclass(frozen=True)
class KMSConfig:
    """HIP-0027 KMS push (Universal Auth). The client secret may come from the systemd credential
    `kms-client-secret` or KMS_CLIENT_SECRET instead of the file."""

    enabled: bool = False
    url: str = ""
    client_id: str = ""
    client_secret: Secret | None = None
    project: str = "qkd-keys"
    environment: str = "production"

    def validate(self, key: str) -> None:
        if not self.enabled:
            return
        if not re.match(r"https?://[^/\s]+", self.url):
            raise ConfigError(f"{key}.url", f"must be an http(s) URL when kms is enabled, got {self.url!r}")
        if not self.client_id:
            raise ConfigError(f"{key}.client_id", "required when kms is enabled (or set KMS_CLIENT_ID)")
        if not self.client_secret:
            raise ConfigError(f"{key}.client_secret", "required when kms is enabled (or set KMS_CLIENT_SECRET "
                                                      f"or the credential {CREDENTIAL_KMS_CLIENT_SECRET})")


@dataclass(frozen=True)
class NodeConfig:
    """`[node]`: this daemon as a node of the trusted-relay network (docs/relay.md). Its identity is the
    ML-DSA-65 key of its links (peer_key_file, the same for every relay link); `trust_level` (0-255) is
    announced with its links, and routes that require more never pass through it."""

    id: str = field(metadata=meta(check=lambda v: None if LINK_ID_PATTERN.fullmatch(v) else
                                  f"must be 1-64 characters of A-Z a-z 0-9 . _ - (starting with a letter or "
                                  f"digit), got {v!r}"))
    trust_level: int = field(default=100, metadata=meta(check=in_range(0, 255)))


@dataclass(frozen=True)
class RelayConfig:
    """`[relay]`: routes and requests of the relay network (used only with `[node]`)."""

    hop_limit: int = field(default=8, metadata=meta(check=in_range(1, 32)))
    min_trust: int = field(default=0, metadata=meta(check=in_range(0, 255)))
    announce_interval_s: float = field(default=10.0, metadata=meta(check=in_range(0.5, 3600)))
    max_age_s: float = field(default=60.0, metadata=meta(check=in_range(2, 86400)))
    request_timeout_s: float = field(default=10.0, metadata=meta(check=in_range(0.5, 300)))
    key_expiry_s: float = field(default=3600.0, metadata=meta(check=in_range(1, 366 * 86400)))
    # link-state announcements of one origin accepted per second (after a burst; qkdd/relay/flood_limit.py)
    max_announcements_per_s: float = field(default=1.0, metadata=meta(check=in_range(0.01, 1000)))

    def validate(self, key: str) -> None:
        if self.max_age_s < 2 * self.announce_interval_s:
            raise ConfigError(f"{key}.max_age_s", f"must be at least twice announce_interval_s "
                              f"({self.announce_interval_s}), or announcements age out between refreshes")
        if self.max_announcements_per_s * self.announce_interval_s < 2:
            raise ConfigError(f"{key}.max_announcements_per_s", f"must be at least 2 / announce_interval_s "
                              f"({2 / self.announce_interval_s:g}): a node originates below the rate its "
                              "neighbours accept, and its periodic refresh must fit well in that")


@dataclass(frozen=True)
class AuditConfig:
    """[audit]: the append-only, hash-chained log of key lifecycle events (qkdd/audit, docs/auth-audit.md)."""

    enabled: bool = False
    path: str = ""                   # default <state_dir>/audit.log
    sign_every_records: int = field(default=256, metadata=meta(check=in_range(1, 1 << 20)))
    key_file: str = ""               # the ML-DSA-65 key that signs the heads; default the first link's peer_key_file


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    api: ApiListenerConfig = field(default_factory=ApiListenerConfig)
    health: HealthListenerConfig = field(default_factory=HealthListenerConfig)
    kms: KMSConfig = field(default_factory=KMSConfig)
    keystore: KeystoreConfig = field(default_factory=KeystoreConfig)
    links: tuple[LinkConfig, ...] = ()
    etsi014: Etsi014Config | None = None      # the ETSI GS QKD 014 KME (qkdd/kme/config.py)
    wireguard: tuple[WireGuardConfig, ...] = ()
    etsi004: Etsi004Config | None = None      # GS QKD 004 key streams (qkdd/apps_config.py)
    skip: SkipConfig | None = None            # the SKIP server for routers (qkdd/apps_config.py)
    kms_push: tuple[KmsPushConfig, ...] = ()
    ipsec: tuple[IpsecConfig, ...] = ()
    node: NodeConfig | None = None            # the relay network (qkdd/relay, docs/relay.md)
    relay: RelayConfig = field(default_factory=RelayConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)

    def validate(self, key: str) -> None:
        self._validate_relay()
        seen: dict[str, int] = {}
        for index, link in enumerate(self.links):
            if link.link_id in seen:
                raise ConfigError(f"links[{index}].link_id",
                                  f"duplicate link_id {link.link_id!r} (also links[{seen[link.link_id]}])")
            seen[link.link_id] = index
        names: dict[str, int] = {}
        peers: dict[tuple[str, str], int] = {}
        def require_channel(key: str, link_id: str, why: str = "") -> None:
            """A consumer's link exists and has a classical channel (its ends agree on keys over it)."""
            if link_id not in seen:
                raise ConfigError(key, f"no link {link_id!r} in [[links]]")
            if not self.links[seen[link_id]].has_peer_channel:
                raise ConfigError(key, f"link {link_id!r} has no classical channel (peer_addr or peer_listen, "
                                       f"peer_key_file and peer_public_key){why}")

        for index, tunnel in enumerate(self.wireguard):
            require_channel(f"wireguard[{index}].link_id", tunnel.link_id)
            if tunnel.name in names:
                raise ConfigError(f"wireguard[{index}].name", f"duplicate tunnel name {tunnel.name!r}")
            names[tunnel.name] = index
            if (tunnel.interface, tunnel.peer_public_key) in peers:
                raise ConfigError(f"wireguard[{index}].peer_public_key",
                                  f"this peer of {tunnel.interface} is already driven by wireguard"
                                  f"[{peers[(tunnel.interface, tunnel.peer_public_key)]}]")
            peers[(tunnel.interface, tunnel.peer_public_key)] = index
        for kind, consumers in (("kms_push", self.kms_push), ("ipsec", self.ipsec)):
            kind_names: dict[str, int] = {}
            for index, consumer in enumerate(consumers):
                require_channel(f"{kind}[{index}].link_id", consumer.link_id, ": both ends must agree on every key")
                if consumer.name in kind_names:
                    raise ConfigError(f"{kind}[{index}].name", f"duplicate {kind} name {consumer.name!r}")
                kind_names[consumer.name] = index
                if kind == "kms_push" and consumer.push and not self.kms.enabled:
                    raise ConfigError(f"{kind}[{index}].push", "needs [kms] enabled = true (or push = false: this "
                                                               "end agrees on keys, the other end pushes)")
        for kind, consumers in (("wireguard", self.wireguard), ("kms_push", self.kms_push), ("ipsec", self.ipsec)):
            for index, consumer in enumerate(consumers):
                interval_s = self.rotation_interval_s(consumer)
                if consumer.expiry_s < interval_s:
                    raise ConfigError(f"{kind}[{index}].expiry_s",
                                      f"{consumer.expiry_s:g} s is shorter than the rotation interval of "
                                      f"{interval_s:g} s: every key would expire before the next one comes")
        for index, peer in enumerate(self.etsi014.peers if self.etsi014 else ()):
            if peer.node:
                if self.node is None:
                    raise ConfigError(f"etsi014.peers[{index}].node", "needs this daemon to be a relay node ([node])")
                continue
            link = self.links[seen[peer.link_id]] if peer.link_id in seen else None
            if peer.channel is None and (link is None or not link.has_peer_channel):
                raise ConfigError(f"etsi014.peers[{index}].link_id",
                                  f"no link {peer.link_id!r} with a classical channel in [[links]] (peer_addr or "
                                  "peer_listen, peer_key_file and peer_public_key), and no [etsi014.peers.channel]")
        if self.etsi014 is not None and (self.api.tls is None or self.api.tls.client_cert == "none"):
            # ETSI GS QKD 014 §5.1: the KME identifies each SAE by its TLS client certificate.
            raise ConfigError("etsi014", 'needs [api.tls] with client_cert = "optional" or "required": the KME '
                              "knows each SAE by its client certificate")
        api, health = self.api.listen, self.health.listen
        if api.port != 0 and api.port == health.port and (
                api.host == health.host or "0.0.0.0" in (api.host, health.host) or "::" in (api.host, health.host)):
            raise ConfigError("health.listen", f"{health} overlaps api.listen {api}")
        check_app_links(self)

    def relay_links(self) -> list[LinkConfig]:
        """The links that carry the relay network (with [node]): relay = true and a classical channel."""
        return [link for link in self.links if link.relay and link.has_peer_channel] if self.node else []

    def _validate_relay(self) -> None:
        if self.node is None:
            return
        links = self.relay_links()
        if not links:
            raise ConfigError("node", "a relay node needs at least one [[links]] entry with relay = true and a "
                              "classical channel (peer_addr or peer_listen, peer_key_file, peer_public_key)")
        first = links[0]
        for link in links[1:]:
            if link.peer_key_file != first.peer_key_file:
                index = self.links.index(link)
                raise ConfigError(f"links[{index}].peer_key_file", f"a relay node has one identity: every relay "
                                  f"link uses the same peer_key_file ({first.peer_key_file!r} on link "
                                  f"{first.link_id!r}), or set relay = false on this link")

    def listener(self, name: str) -> ListenerConfig:
        """The listener named in LISTENERS ("api" or "health")."""
        if name not in LISTENERS:
            raise KeyError(name)
        return getattr(self, name)

    def rotation_interval_s(self, tunnel: "WireGuardConfig | KmsPushConfig | IpsecConfig") -> float:
        """The tunnel's own interval, else its link's key_rotation_interval_s."""
        if tunnel.rotation_interval_s is not None:
            return tunnel.rotation_interval_s
        link = self.link(tunnel.link_id)
        return link.key_rotation_interval_s if link else 3600.0

    def link(self, link_id: str) -> LinkConfig | None:
        return next((link for link in self.links if link.link_id == link_id), None)

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        return to_plain(self, redact=redact)


# ---- loading ---------------------------------------------------------------------------------------

# variable -> path into the raw TOML tree; "links.0" is the first link.
ENV_VARIABLES: dict[str, tuple[str, ...]] = {
    "QKD_API_LISTEN": ("api", "listen"),
    "QKD_HEALTH_LISTEN": ("health", "listen"),
    "QKD_STATE_DIR": ("daemon", "state_dir"),
    "QKD_LOG_LEVEL": ("daemon", "log_level"),
    "KMS_CLIENT_ID": ("kms", "client_id"),
    "KMS_CLIENT_SECRET": ("kms", "client_secret"),
    "QKD_LINK_ID": ("links", "0", "link_id"),
    "QKD_LINK_ROLE": ("links", "0", "role"),
    "QKD_DRIVER": ("links", "0", "driver"),
    "QKD_DEVICE_ADDR": ("links", "0", "device_addr"),
    "QKD_PROTOCOL": ("links", "0", "protocol"),
    "QKD_QBER_THRESHOLD": ("links", "0", "qber_threshold"),
    "QKD_KEY_ROTATION_INTERVAL": ("links", "0", "key_rotation_interval_s"),
}


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read `path` (or the default file, which may be absent), apply credentials and environment."""
    environ = os.environ if environ is None else environ
    raw = read_toml(path or DEFAULT_CONFIG_PATH, required=path is not None)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        secret = read_credential(credentials, CREDENTIAL_KMS_CLIENT_SECRET_IDS)
        if secret is not None:
            _put(raw, ("kms", "client_secret"), FromEnv(secret, f"credential {CREDENTIAL_KMS_CLIENT_SECRET}"))
    for variable, target in ENV_VARIABLES.items():
        value = environ.get(variable, "")
        if value != "":
            _put(raw, target, FromEnv(value, variable))
    return build(Config, raw, "")


def read_credential(directory: str, ids: tuple[str, ...]) -> str | None:
    """The first credential of `ids` present in `directory` (trailing newline removed), or None."""
    for credential_id in ids:
        path = os.path.join(directory, credential_id)
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().rstrip("\r\n")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, f"cannot read credential: {type(exc).__name__}") from None
    return None


def read_toml(path: str, *, required: bool) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if required:
            raise ConfigError(path, "no such file") from None
        return {}
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(path, "permission denied") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"invalid TOML: {exc}") from None
    except RecursionError:      # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(path, "invalid TOML: arrays or inline tables nested too deeply") from None


def _put(raw: dict[str, Any], target: tuple[str, ...], value: FromEnv) -> None:
    """Place an override into the raw tree, creating tables on the way; leaves malformed trees alone
    (build() then reports the malformed key)."""
    node: Any = raw
    for part in target[:-1]:
        if part.isdigit():
            if not isinstance(node, list):
                return
            if not node:
                node.append({})
            node = node[int(part)]
        else:
            if not isinstance(node, dict):
                return
            node = node.setdefault(part, [] if part == "links" else {})
    if isinstance(node, dict):
        node[target[-1]] = value


# ---- printing ---------------------------------------------------------------------------------------

def to_toml(config: Config) -> str:
    """The effective config as TOML, secrets as "***"; unset optional keys appear as comments."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'

    def table(name: str, data: dict[str, Any], header: str) -> None:
        lines.append(f"\n{header}")
        nested = []
        arrays = []
        for key, value in data.items():
            if isinstance(value, dict):
                nested.append((key, value))
            elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
                arrays.append((key, value))
            elif value is None:
                lines.append(f"# {key} = (unset)")
            elif isinstance(value, list):
                lines.append(f"{key} = [{', '.join(scalar(v) for v in value)}]")
            else:
                lines.append(f"{key} = {scalar(value)}")
        for key, value in nested:
            table(f"{name}.{key}", value, f"[{name}.{key}]")
        for key, items in arrays:
            for item in items:
                table(f"{name}.{key}", item, f"[[{name}.{key}]]")

    plain = config.to_dict(redact=True)
    for name, value in plain.items():
        if value is None:
            lines.append(f"\n# [{name}] (unset)")
        elif name in ("links", "wireguard", "kms_push", "ipsec"):
            for link in value:
                table(name, link, f"[[{name}]]")
        else:
            table(name, value, f"[{name}]")
    return "\n".join(lines).lstrip("\n") + "\n"
