"""Builds the WireGuard tunnels of the config on the daemon's links and runs them under the daemon's
nursery, rotating on SIGUSR1 ("rotate now", leaders only).

Key store and classical channel are the daemon's own: `app.keystore`, and each tunnel's link channel
(through the link's reservation service), registered before the channels run so that no session start
is missed. A tunnel whose link has no classical channel (no peer identity) is logged and left out; the
daemon stays up.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field

import trio

from qkdd.app import App
from qkdd.consumers.wg_tool import WgTool
from qkdd.consumers.wireguard import TunnelRotation, WireGuardChannel

log = logging.getLogger("qkdd.wireguard")


@dataclass
class Tunnels:
    by_link: dict[str, list[TunnelRotation]] = field(default_factory=dict)

    @property
    def all(self) -> list[TunnelRotation]:
        return [tunnel for tunnels in self.by_link.values() for tunnel in tunnels]


async def build_wireguard(app: App) -> Tunnels:
    """Every `[[wireguard]]` tunnel whose link has a classical channel, registered on it (their state
    files read in worker threads)."""
    config = app.config
    tunnels = Tunnels()
    for tunnel_config in config.wireguard:
        link = config.link(tunnel_config.link_id)
        if link.link_id not in app.reservations:
            log.error("wireguard: tunnel %s: link %s has no classical channel (set peer_key_file, peer_public_key "
                      "and peer_addr or peer_listen); the tunnel is not rotated", tunnel_config.name, link.link_id)
            continue
        tunnel = await TunnelRotation.open(
            tunnel_config, leader=link.role == "alice", store=app.keystore,
            wg=WgTool(tunnel_config.interface, tunnel_config.peer_public_key),
            metrics=app.metrics.tunnel(tunnel_config.name, tunnel_config.interface, tunnel_config.peer_public_key),
            state_dir=config.daemon.state_dir, rotation_interval_s=config.rotation_interval_s(tunnel_config))
        tunnels.by_link.setdefault(link.link_id, []).append(tunnel)
    for link_id, link_tunnels in tunnels.by_link.items():
        WireGuardChannel(link_tunnels).attach_to(app.reservations[link_id])
    return tunnels


async def run_wireguard(tunnels: Tunnels) -> None:
    """Run the tunnels until cancelled; SIGUSR1 rotates the leaders at once."""
    if not tunnels.by_link:
        return
    with trio.open_signal_receiver(signal.SIGUSR1) as rotate_signals:
        async with trio.open_nursery() as nursery:
            for tunnel in tunnels.all:
                nursery.start_soon(tunnel.run)
            async for _ in rotate_signals:
                leaders = [tunnel for tunnel in tunnels.all if tunnel.leader]
                log.info("SIGUSR1: rotating %d tunnel(s) now", len(leaders))
                for tunnel in leaders:
                    tunnel.rotate_now()
