"""Starts the WireGuard tunnels of the config under the daemon's nursery and rotates on SIGUSR1
("rotate now", leaders only).

Key store and classical channel: the daemon's own (`app.keystore`, and the link engine in `app.links`
with `register_channel(channel, handler)`, whose one peer session carries the WireGuard records); for a
link no engine runs (a driver without one), this module runs the link's classical channel itself
(qkdd.link_channel), and opens the key store (qkdd.link.service.open_keystore) when the daemon
has none. Start-up problems are logged; the daemon stays up.
"""
from __future__ import annotations

import logging
import signal

import trio

from qkdd.app import App
from qkdd.config import Config
from qkdd.consumers.wg_tool import WgTool
from qkdd.consumers.wireguard import TunnelRotation, WireGuardChannel
from qkdd.keystore import KeyStoreError
from qkdd.link.service import open_keystore
from qkdd.link_channel import WIREGUARD_CHANNEL, LinkChannel
from qkdd.peer import IdentityError

log = logging.getLogger("qkdd.wireguard")

async def run_wireguard(app: App) -> None:
    """Run every `[[wireguard]]` tunnel until cancelled."""
    config = app.config
    if not config.wireguard:
        return
    store = getattr(app, "keystore", None)
    own_store = store is None
    if own_store:
        try:
            store = await trio.to_thread.run_sync(open_keystore, config.daemon.state_dir)
        except KeyStoreError as exc:
            log.error("wireguard: cannot open the key store: %s", exc)
            return
    try:
        tunnels: dict[str, list[TunnelRotation]] = {}
        for tunnel_config in config.wireguard:
            link = config.link(tunnel_config.link_id)
            tunnel = await TunnelRotation.open(
                tunnel_config, leader=link.role == "alice", store=store,
                wg=WgTool(tunnel_config.interface, tunnel_config.peer_public_key),
                metrics=app.metrics.tunnel(tunnel_config.name, tunnel_config.interface,
                                           tunnel_config.peer_public_key),
                state_dir=config.daemon.state_dir, rotation_interval_s=config.rotation_interval_s(tunnel_config))
            tunnels.setdefault(link.link_id, []).append(tunnel)
        with trio.open_signal_receiver(signal.SIGUSR1) as rotate_signals:
            async with trio.open_nursery() as nursery:
                for link_id, link_tunnels in tunnels.items():
                    serve = WireGuardChannel(link_tunnels).serve
                    engine = (getattr(app, "links", None) or {}).get(link_id)
                    if engine is not None and hasattr(engine, "register_channel"):
                        engine.register_channel(WIREGUARD_CHANNEL, serve)     # the link engine's session
                    else:
                        channel = LinkChannel(config.link(link_id))
                        channel.register(WIREGUARD_CHANNEL, serve)
                        try:
                            await nursery.start(channel.run)
                        except (IdentityError, OSError) as exc:
                            log.error("wireguard: link %s: cannot run the classical channel: %s", link_id, exc)
                            continue
                    for tunnel in link_tunnels:
                        nursery.start_soon(tunnel.run)
                async for _ in rotate_signals:
                    leaders = [t for ts in tunnels.values() for t in ts if t.leader]
                    log.info("SIGUSR1: rotating %d tunnel(s) now", len(leaders))
                    for tunnel in leaders:
                        tunnel.rotate_now()
    finally:
        if own_store:
            store.close()
