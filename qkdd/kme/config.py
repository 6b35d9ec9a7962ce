"""The `[etsi014]` configuration section: this KME's id, the SAEs and which KME serves each, the peer
KMEs and the link that reaches each, and the limits the Status data format (ETSI GS QKD 014 §6.1) reports.

    [etsi014]
    kme_id = "kme-a"
    sae_id_from = "cn"                 # or "san_uri": the certificate's SAN URI (starting with san_uri_prefix)
    [[etsi014.saes]]
    sae_id = "sae-a"
    kme_id = "kme-a"
    [[etsi014.saes]]
    sae_id = "sae-b"
    kme_id = "kme-b"
    [[etsi014.peers]]
    kme_id = "kme-b"
    link_id = "a-b"
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from qkdd.config_schema import ConfigError, in_range, meta, parse_host_port, positive

# SAE and KME IDs: the spec leaves the format open (§4); ours travel in URL path segments, so no '/'.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:@+=-]{0,127}")


def _id_check(value: str) -> str | None:
    return None if ID_PATTERN.fullmatch(value) else (
        "must be 1-128 characters of A-Z a-z 0-9 . _ ~ : @ + = - starting with a letter or digit, "
        f"got {value!r}")


@dataclass(frozen=True)
class SaeConfig:
    """An SAE of the QKD network and the KME it connects to."""

    sae_id: str = field(metadata=meta(check=_id_check))
    kme_id: str = field(metadata=meta(check=_id_check))


@dataclass(frozen=True)
class ChannelConfig:
    """The KME's own classical channel to a peer KME whose link runs no link engine in this daemon (with
    one, the reservation exchange uses the engine's peer session and this table is not needed): exactly
    one of dial / listen, this end's ML-DSA-65 identity, the peer's pinned public key."""

    identity_key_file: str
    peer_public_key_file: str
    dial: str = ""
    listen: str = ""

    def validate(self, key: str) -> None:
        if bool(self.dial) == bool(self.listen):
            raise ConfigError(key, "set exactly one of dial and listen")
        name = "dial" if self.dial else "listen"
        try:
            parse_host_port(getattr(self, name), allow_port_zero=name == "listen")
        except ValueError as exc:
            raise ConfigError(f"{key}.{name}", str(exc)) from None


@dataclass(frozen=True)
class PeerKmeConfig:
    """Another KME, and the link of this daemon whose classical channel and key store reach it; or, for a
    KME on a node of the relay network with no link to this one, that `node` (keys relayed: docs/relay.md)."""

    kme_id: str = field(metadata=meta(check=_id_check))
    link_id: str = ""
    channel: ChannelConfig | None = None
    node: str = ""

    def validate(self, key: str) -> None:
        if bool(self.link_id) == bool(self.node):
            raise ConfigError(f"{key}.link_id", "set exactly one of link_id (a KME on a link of this daemon) and "
                              "node (a KME on a node of the relay network)")
        if self.node and self.channel is not None:
            raise ConfigError(f"{key}.channel", "only for a peer KME on a link (link_id)")


# Key handed out by one Get key at most (number × size): 1 MiB. It bounds the RESERVE message that records
# the request at the peer KME (qkdd.reservation.protocol MAX_MESSAGE_BYTES) and the memory one request holds.
MAX_REQUEST_KEY_BITS = 1 << 23


@dataclass(frozen=True)
class Etsi014Config:
    kme_id: str = field(metadata=meta(check=_id_check))
    sae_id_from: Literal["cn", "san_uri"] = "cn"
    san_uri_prefix: str = ""
    key_size_bits: int = field(default=256, metadata=meta(check=in_range(8, 1 << 20)))
    min_key_size_bits: int = field(default=64, metadata=meta(check=in_range(8, 1 << 20)))
    max_key_size_bits: int = field(default=8192, metadata=meta(check=in_range(8, 1 << 20)))
    max_key_per_request: int = field(default=128, metadata=meta(check=in_range(1, 4096)))
    max_key_count: int = field(default=100000, metadata=meta(check=in_range(1, 1 << 40)))
    max_sae_id_count: int = field(default=4, metadata=meta(check=in_range(0, 254)))
    reservation_timeout_s: float = field(default=5.0, metadata=meta(check=positive))
    ledger_file: str = ""               # default: tables in the key store's file
    # Both only for a daemon without [[links]]: with links, the KME uses the link engines' key store
    # (<state_dir>/keys.sqlite3, one per daemon).
    key_store_file: str = ""            # default: <state_dir>/keys.db
    kek_file: str = ""                  # default: systemd credential "kek", else <state_dir>/kek
    saes: tuple[SaeConfig, ...] = ()
    peers: tuple[PeerKmeConfig, ...] = ()

    def validate(self, key: str) -> None:
        for name in ("key_size_bits", "min_key_size_bits", "max_key_size_bits"):
            if getattr(self, name) % 8:
                raise ConfigError(f"{key}.{name}", "must be a multiple of 8")
        if not self.min_key_size_bits <= self.key_size_bits <= self.max_key_size_bits:
            raise ConfigError(f"{key}.key_size_bits", "must lie within [min_key_size_bits, max_key_size_bits]")
        if self.max_key_per_request * self.max_key_size_bits > MAX_REQUEST_KEY_BITS:
            raise ConfigError(f"{key}.max_key_per_request",
                              f"times max_key_size_bits is {self.max_key_per_request * self.max_key_size_bits} "
                              f"bits; one request may take at most {MAX_REQUEST_KEY_BITS} (1 MiB of key)")
        seen_saes: set[str] = set()
        for index, sae in enumerate(self.saes):
            if sae.sae_id in seen_saes:
                raise ConfigError(f"{key}.saes[{index}].sae_id", f"duplicate SAE id {sae.sae_id!r}")
            seen_saes.add(sae.sae_id)
        peer_ids = {peer.kme_id for peer in self.peers}
        if len(peer_ids) != len(self.peers):
            raise ConfigError(f"{key}.peers", "a peer KME id appears twice")
        if self.kme_id in peer_ids:
            raise ConfigError(f"{key}.peers", f"this KME ({self.kme_id}) cannot be its own peer")
        for index, sae in enumerate(self.saes):
            if sae.kme_id != self.kme_id and sae.kme_id not in peer_ids:
                raise ConfigError(f"{key}.saes[{index}].kme_id",
                                  f"KME {sae.kme_id!r} is neither this KME nor one of etsi014.peers")
        if self.sae_id_from == "san_uri" and not self.san_uri_prefix:
            raise ConfigError(f"{key}.san_uri_prefix", 'required when sae_id_from = "san_uri"')
