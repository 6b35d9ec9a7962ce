"""Builds the daemon's link engines from the configuration (device driver, key store, peer channel) and
runs them in the daemon's nursery. Problems found while building are StartupErrors naming the key."""
from __future__ import annotations

import logging
import os

import trio

from qkdd.config import Config, LinkConfig
from qkdd.hal.base import DeviceError
from qkdd.hal.sim.driver import device_for
from qkdd.keystore import KeyStore, create_kek, kek_from_credentials, load_kek
from qkdd.link.engine import LinkEngine
from qkdd.link.pipeline import PipelineSettings
from qkdd.link_channel import peer_settings
from qkdd.peer import IdentityError, PeerConnector, load_private_key, load_public_key
from qkdd.preflight import StartupError

log = logging.getLogger("qkdd.link")

KEYSTORE_FILE = "keys.sqlite3"
KEK_FILE = "kek"


def open_keystore(state_dir: str) -> KeyStore:
    """The key store in the state directory under the KEK from the systemd credential "kek", else
    <state_dir>/kek (created 0600 on first start)."""
    kek = kek_from_credentials()
    if kek is None:
        path = os.path.join(state_dir, KEK_FILE)
        kek = load_kek(path) if os.path.exists(path) else create_kek(path)
    return KeyStore(os.path.join(state_dir, KEYSTORE_FILE), kek)


def not_started_because(link: LinkConfig) -> str | None:
    """Why the daemon will not run `link`'s engine (it stays "configured"), or None if it will."""
    if link.driver != "sim" or link.protocol != "bb84":
        return (f"driver {link.driver} / protocol {link.protocol} has no link engine yet (the daemon runs "
                'driver "sim" with protocol "bb84")')
    if not link.peer_key_file or not link.peer_public_key:
        return "not started: set peer_key_file and peer_public_key (qkdctl peer-key generate)"
    return None


def build_engines(config: Config, store: KeyStore, metrics=None, health=None) -> dict[str, LinkEngine]:
    engines = {}
    for index, link in enumerate(config.links):
        reason = not_started_because(link)
        if reason is not None:
            log.warning("link %s: %s", link.link_id, reason)
            continue
        engines[link.link_id] = _build(link, f"links[{index}]", store, metrics, health)
    return engines


def _build(link: LinkConfig, key: str, store: KeyStore, metrics, health) -> LinkEngine:
    try:
        signing_key = load_private_key(link.peer_key_file)
    except (IdentityError, OSError) as exc:
        raise StartupError(f"{key}.peer_key_file", str(exc)) from None
    try:
        pinned = load_public_key(link.peer_public_key)
    except (IdentityError, OSError) as exc:
        raise StartupError(f"{key}.peer_public_key", str(exc)) from None
    if bool(link.peer_addr) == bool(link.peer_listen):
        raise StartupError(f"{key}.peer_addr", "set exactly one of peer_addr (dial) and peer_listen (accept)")
    try:
        device = device_for(link)
    except (DeviceError, ValueError) as exc:
        raise StartupError(f"{key}.sim", str(exc)) from None
    peer = peer_settings(link)

    def connector(on_session):
        return PeerConnector(peer, signing_key, pinned, on_session)

    return LinkEngine(link.link_id, link.role, device, store, connector_factory=connector,
                      settings=PipelineSettings(key_bits=link.key_bits), frames_in_flight=link.frames_in_flight,
                      key_expiry_s=link.key_expiry_s, qber_threshold=link.qber_threshold,
                      metrics=metrics.link(link.link_id, link.protocol) if metrics is not None else None,
                      health=health, protocol=link.protocol)


async def run_engines(engines: dict[str, LinkEngine]) -> None:
    async with trio.open_nursery() as nursery:
        for engine in engines.values():
            await nursery.start(engine.run)
