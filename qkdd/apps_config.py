"""`[etsi004]` and `[skip]`: the application interfaces on ports of their own (qkdd.etsi004, qkdd.skip).
Config.validate checks that each names a link with a classical channel (check_app_links)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from qkdd.config_schema import ConfigError, in_range, meta, non_negative, parse_host_port
from qkdd.http.messages import TLSSettings

SYSTEM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
PSK_IDENTITY_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")      # printable ASCII, no spaces (RFC 4279 section 5.1)


def _listen_check(value: str) -> str | None:
    try:
        parse_host_port(value, allow_port_zero=True)
    except ValueError as exc:
        return str(exc)
    return None


def listen_address(value: str) -> tuple[str, int]:
    """(host, port) of a checked `listen` value."""
    return parse_host_port(value, allow_port_zero=True)


def _system_id(value: str) -> str | None:
    return None if SYSTEM_ID_PATTERN.fullmatch(value) else (
        f"must be 1-64 characters of A-Z a-z 0-9 . _ : - (starting with a letter or digit), got {value!r}")


@dataclass(frozen=True)
class Etsi004Config:
    """`[etsi004]`: GS QKD 004 key streams of link `link_id` over TLS with client certificates (required).
    `capacity_bps`: the key rate an OPEN's min_bps is held against; 0 takes the link's measured secret key
    rate. `timeout_ms` and `ttl_s` stand in for QoS fields an application leaves at 0."""

    link_id: str
    tls: TLSSettings
    listen: str = field(default="127.0.0.1:8074", metadata=meta(check=_listen_check))
    capacity_bps: float = field(default=0.0, metadata=meta(check=non_negative))
    timeout_ms: int = field(default=5000, metadata=meta(check=in_range(1, 3_600_000)))
    ttl_s: int = field(default=3600, metadata=meta(check=in_range(1, 366 * 86400)))

    def validate(self, key: str) -> None:
        if self.tls.client_cert != "required":
            raise ConfigError(f"{key}.tls.client_cert", 'must be "required": a key stream belongs to the client '
                                                         "certificate that opened it")


@dataclass(frozen=True)
class SkipRemote:
    """A remote Key Provider (the qkdd at the other end of `link_id`) by its SKIP system id."""

    system_id: str = field(metadata=meta(check=_system_id))
    link_id: str


@dataclass(frozen=True)
class SkipClient:
    """A router: its TLS-PSK identity and the file holding its PSK (hex, 16-64 bytes, mode 0600)."""

    identity: str = field(metadata=meta(check=lambda v: None if PSK_IDENTITY_PATTERN.fullmatch(v) else
                                        f"must be 1-128 printable ASCII characters without spaces, got {v!r}"))
    psk_file: str


@dataclass(frozen=True)
class SkipConfig:
    """`[skip]`: the SKIP server (draft-cisco-skip-02) for routers, over TLS 1.2 with pre-shared keys."""

    local_system_id: str = field(metadata=meta(check=_system_id))
    remotes: tuple[SkipRemote, ...] = ()
    clients: tuple[SkipClient, ...] = ()
    listen: str = field(default="127.0.0.1:8075", metadata=meta(check=_listen_check))

    def validate(self, key: str) -> None:
        if not self.remotes:
            raise ConfigError(f"{key}.remotes", "name at least one remote system ([[skip.remotes]])")
        if not self.clients:
            raise ConfigError(f"{key}.clients", "name at least one router ([[skip.clients]] identity, psk_file)")
        _unique([remote.system_id for remote in self.remotes], f"{key}.remotes", "system_id")
        _unique([client.identity for client in self.clients], f"{key}.clients", "identity")
        if self.local_system_id in {remote.system_id for remote in self.remotes}:
            raise ConfigError(f"{key}.local_system_id", "is also a remote system id")


def _unique(values: list[str], key: str, name: str) -> None:
    seen: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            raise ConfigError(f"{key}[{index}].{name}", f"duplicate {name} {value!r} (also {key}[{seen[value]}])")
        seen[value] = index


def check_app_links(config) -> None:
    """Each link [etsi004] and [skip] name exists in [[links]] with a classical channel, and the two
    listeners do not share a port with each other or with api/health."""
    uses = []
    if config.etsi004 is not None:
        uses.append(("etsi004.link_id", config.etsi004.link_id))
    if config.skip is not None:
        uses += [(f"skip.remotes[{index}].link_id", remote.link_id) for index, remote in enumerate(config.skip.remotes)]
    for key, link_id in uses:
        link = config.link(link_id)
        if link is None or not link.has_peer_channel:
            raise ConfigError(key, f"no link {link_id!r} with a classical channel in [[links]] (peer_addr or "
                                   "peer_listen, peer_key_file and peer_public_key)")
    ports = {"api.listen": config.api.listen.port, "health.listen": config.health.listen.port}
    for name, section in (("etsi004", config.etsi004), ("skip", config.skip)):
        if section is None or listen_address(section.listen)[1] == 0:
            continue
        port = listen_address(section.listen)[1]
        for other, taken in ports.items():
            if port == taken:
                raise ConfigError(f"{name}.listen", f"port {port} is also {other}'s")
        ports[f"{name}.listen"] = port
