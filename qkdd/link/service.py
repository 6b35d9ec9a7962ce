"""Builds the daemon's links from the configuration: one LinkChannel per link (the one owner of its peer
session), the reservation service on it, the link engine (device driver, key store) where the daemon
runs one, and the /v1 key requests; runs them with each link's stall watch. Problems found while
building are StartupErrors naming the key."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from qkdd.config import Config, KeystoreConfig, LinkConfig, parse_host_port
from qkdd.hal.base import DeviceError
from qkdd.hal.drivers import device_for
from qkdd.hal.etsi014.settings import ETSI014_DRIVERS
from qkdd.keystore import KeyStore, kek_for_state_dir
from qkdd.keystore.capacity import StoreCapacity
from qkdd.link.engine import LinkEngine
from qkdd.link.key_requests import KeyRequests
from qkdd.link.pipeline import PipelineSettings
from qkdd.link.protocols import FRAME_PROTOCOLS
from qkdd.link.stall import watch_stall
from qkdd.link_channel import PIPELINE_CHANNEL, LinkChannel
from qkdd.peer import IdentityError, PeerSettings, load_private_key, load_public_key
from qkdd.preflight import StartupError
from qkdd.reservation.service import ReservationService

if TYPE_CHECKING:
    from qkdd.auth.pool import AuthPool
    from qkdd.link.key_relay import KeyRelayEngine

log = logging.getLogger("qkdd.link")

KEYSTORE_FILE = "keys.sqlite3"
AUTH_POOL_FILE = "auth-pool.sqlite3"


@dataclass
class Links:
    """Every link of the daemon, by link id."""

    channels: dict[str, LinkChannel] = field(default_factory=dict)
    reservations: dict[str, ReservationService] = field(default_factory=dict)
    engines: dict[str, LinkEngine] = field(default_factory=dict)
    key_requests: dict[str, KeyRequests] = field(default_factory=dict)

    def add_channel(self, channel: LinkChannel) -> None:
        self.channels[channel.link_id] = channel
        self.reservations[channel.link_id] = ReservationService(channel.link_id, channel)


def open_keystore(state_dir: str, keystore: KeystoreConfig | None = None) -> KeyStore:
    """The key store in the state directory under the KEK from the systemd credential "kek", else (unless
    QKD_KEK_SOURCE=credential) <state_dir>/kek, created 0600 on first start; with the capacity of
    `[keystore]` (none if not given) and its page cache bound."""
    capacity = StoreCapacity(keystore.max_key_bits, keystore.max_bytes) if keystore is not None else StoreCapacity()
    cache = {"cache_mib": keystore.cache_mib} if keystore is not None else {}
    return KeyStore(os.path.join(state_dir, KEYSTORE_FILE), kek_for_state_dir(state_dir), capacity=capacity, **cache)


def not_started_because(link: LinkConfig) -> str | None:
    """Why the daemon will not run `link`'s engine (it stays "configured"), or None if it will."""
    spec = FRAME_PROTOCOLS.get(link.protocol)
    runs = link.driver in ETSI014_DRIVERS or (spec is not None and link.driver in spec.drivers)
    if not runs:
        engines = "; ".join(f'protocol "{name}" with drivers {", ".join(p.drivers)}'
                            for name, p in FRAME_PROTOCOLS.items())
        return (f"driver {link.driver} / protocol {link.protocol} has no link engine yet (the daemon runs "
                f'{engines}; and drivers {", ".join(ETSI014_DRIVERS)})')
    if not link.peer_key_file or not link.peer_public_key:
        return "not started: set peer_key_file and peer_public_key (qkdctl peer-key generate)"
    return None


def build_links(config: Config, store: KeyStore | None, metrics=None, health=None) -> Links:
    """The channel of every link with a peer identity, and the engine of every link the daemon runs."""
    links = Links()
    for index, link in enumerate(config.links):
        if link.peer_key_file and link.peer_public_key:
            links.add_channel(_channel(link, f"links[{index}]"))
    for index, link in enumerate(config.links):
        reason = not_started_because(link)
        if reason is not None:
            log.warning("link %s: %s", link.link_id, reason)
            continue
        assert store is not None
        engine = _engine(link, f"links[{index}]", store, links.channels[link.link_id], metrics, health,
                         _auth_pool(link, f"links[{index}]", config.daemon.state_dir, metrics))
        links.engines[link.link_id] = engine
        links.key_requests[link.link_id] = KeyRequests(link.link_id, store, links.reservations[link.link_id],
                                                       key_bits=link.key_bits)
    return links


def _channel(link: LinkConfig, key: str) -> LinkChannel:
    if bool(link.peer_addr) == bool(link.peer_listen):
        raise StartupError(f"{key}.peer_addr", "set exactly one of peer_addr (dial) and peer_listen (accept)")
    try:
        signing_key = load_private_key(link.peer_key_file)
    except (IdentityError, OSError) as exc:
        raise StartupError(f"{key}.peer_key_file", str(exc)) from None
    try:
        pinned = load_public_key(link.peer_public_key)
    except (IdentityError, OSError) as exc:
        raise StartupError(f"{key}.peer_public_key", str(exc)) from None
    return LinkChannel(link.link_id, peer_settings(link), signing_key, pinned)


def _auth_pool(link: LinkConfig, key: str, state_dir: str, metrics) -> AuthPool | None:
    """The link's authentication pool (auth "its"/"both"), seeded from its secret file on first start."""
    if link.auth == "pq":
        return None
    from qkdd.auth import secret as auth_secret         # (imported only where a link uses them: start-up time)
    from qkdd.auth.pool import AuthPool, AuthPoolError
    try:
        secret = auth_secret.load(link.auth_secret_file)
    except auth_secret.AuthSecretError as exc:
        raise StartupError(f"{key}.auth_secret_file", str(exc)) from None
    try:
        pool = AuthPool(os.path.join(state_dir, AUTH_POOL_FILE), kek_for_state_dir(state_dir), link.link_id,
                        metrics=metrics.link(link.link_id, link.protocol) if metrics is not None else None)
        if pool.seed(secret):
            log.info("link %s: authentication pool seeded with %d bits from %s", link.link_id, secret.bits,
                     link.auth_secret_file)
    except AuthPoolError as exc:
        raise StartupError(f"{key}.auth_secret_file", str(exc)) from None
    return pool


def _engine(link: LinkConfig, key: str, store: KeyStore, channel: LinkChannel, metrics, health,
            auth_pool: AuthPool | None = None) -> LinkEngine | KeyRelayEngine:
    try:
        device = device_for(link)
    except (DeviceError, ValueError) as exc:
        raise StartupError(f"{key}.{link.driver if link.driver in ('sim', 'serial', 'sdk') else 'etsi014'}",
                           str(exc)) from None
    settings = PipelineSettings(key_bits=link.key_bits, key_expiry_s=link.key_expiry_s,
                                reconciliation=link.reconciliation, ldpc_decoder=link.ldpc_decoder, auth=link.auth,
                                auth_refill_bits=link.auth_refill_bits, auth_pool_max_bits=link.auth_pool_max_bits,
                                chsh_eps=link.chsh_eps)
    if link.protocol == "cvqkd" and auth_pool is not None:
        raise StartupError(f"{key}.auth", f'auth "{link.auth}" tags BB84 transcripts; protocol "cvqkd" links use '
                                          'auth = "pq"')
    if not device.yields_raw_frames:          # a vendor KME: finished keys relayed by ID (qkdd.link.key_relay)
        if auth_pool is not None:
            raise StartupError(f"{key}.auth", f'auth "{link.auth}" authenticates post-processing, and driver '
                                              f'{link.driver} delivers finished keys: use auth = "pq"')
        from qkdd.link.key_relay import KeyRelayEngine     # (and its HTTP client: only for these drivers)
        return KeyRelayEngine(link.link_id, link.role, device, store, channel, settings=settings,
                              metrics=metrics.link(link.link_id, link.protocol) if metrics is not None else None,
                              health=health)
    return LinkEngine(link.link_id, link.role, device, store, channel,
                      settings=settings, auth_pool=auth_pool,
                      frames_in_flight=link.frames_in_flight, qber_threshold=link.qber_threshold,
                      metrics=metrics.link(link.link_id, link.protocol) if metrics is not None else None,
                      health=health, protocol=link.protocol)


# A link's record cap: Bob's first record of a frame carries SLOTS and the sifting detections, about 2.1 bytes
# a detection (the varint slot streams of both, and the bases); at the largest frame a sim may configure (2^26
# detections, [links.sim] max_detections_per_frame) that is about 143 MB. Both ends must allow it.
LINK_MAX_RECORD_BYTES = 256 * 1024 * 1024


def peer_settings(link: LinkConfig) -> PeerSettings:
    # auth "its": the frame records carry no session MAC, only the Wegman-Carter transcript tags (docs/auth-audit.md)
    transcript = frozenset({PIPELINE_CHANNEL}) if link.auth == "its" else frozenset()
    common = dict(transcript_channels=transcript, max_record_bytes=LINK_MAX_RECORD_BYTES)
    if link.peer_addr:
        return PeerSettings(link.link_id, dial=parse_host_port(link.peer_addr), **common)
    return PeerSettings(link.link_id, listen=parse_host_port(link.peer_listen, allow_port_zero=True), **common)


async def run_links(links: Links, config: Config | None = None, health=None) -> None:
    """The engines' devices first, then every link's classical channel, until cancelled; with `config`
    and `health`, also the stall watch of each engine's link that sets min_key_rate_bps."""
    async with trio.open_nursery() as nursery:
        for engine in links.engines.values():
            await nursery.start(engine.run)
        for channel in links.channels.values():
            await nursery.start(channel.run)
        for engine in links.engines.values():
            link = config.link(engine.link_id) if config is not None else None
            if link is not None and health is not None and link.min_key_rate_bps > 0:
                nursery.start_soon(watch_stall, engine, health, link.min_key_rate_bps, link.stall_after_s)
