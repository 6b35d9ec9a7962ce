"""Builds the key consumers of the config (WireGuard tunnels, KMS pushes, IKEv2 PPKs) on the daemon's links
and runs them under the daemon's nursery, rotating on SIGUSR1 ("rotate now", leaders only).

Key store and classical channel are the daemon's own: `app.keystore`, and each consumer's link channel
(through the link's reservation service, one epoch purpose per link for every consumer kind), registered
before the channels run so that no session start is missed. A consumer whose link has no classical
channel (no peer identity) is logged and left out; the daemon stays up.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from qkdd.app import App

if TYPE_CHECKING:
    from qkdd.consumers.rotation import KeyRotation

log = logging.getLogger("qkdd.consumers")


@dataclass
class Tunnels:
    """Every consumer's rotation by link (the name is WireGuard's, the first consumer), and what must be
    closed at the end (the KMS client)."""

    by_link: dict[str, list[KeyRotation]] = field(default_factory=dict)
    closers: list = field(default_factory=list)

    @property
    def all(self) -> list[KeyRotation]:
        return [tunnel for tunnels in self.by_link.values() for tunnel in tunnels]


Consumers = Tunnels


async def build_wireguard(app: App) -> Tunnels:
    """Every consumer (`[[wireguard]]`, `[[kms_push]]`, `[[ipsec]]`) whose link has a classical channel,
    registered on it (their state files read in worker threads)."""
    config = app.config
    tunnels = Tunnels()
    if not (config.wireguard or config.kms_push or config.ipsec):
        app.consumers = tunnels.all
        return tunnels              # (the consumer modules are imported only where consumers are configured)
    from qkdd.consumers.rotation import EpochChannel, KeyRotation
    from qkdd.consumers.wg_epoch import consumer_tag
    from qkdd.consumers.wg_tool import WgTool
    from qkdd.consumers.wireguard import TunnelRotation

    def reachable(kind: str, name: str, link_id: str) -> bool:
        if link_id in app.reservations:
            return True
        log.error("%s: %s: link %s has no classical channel (set peer_key_file, peer_public_key and peer_addr or "
                  "peer_listen); it gets no keys", kind, name, link_id)
        return False

    for tunnel_config in config.wireguard:
        link = config.link(tunnel_config.link_id)
        if not reachable("wireguard", tunnel_config.name, link.link_id):
            continue
        tunnel = await TunnelRotation.open(
            tunnel_config, leader=link.role == "alice", store=app.keystore,
            wg=WgTool(tunnel_config.interface, tunnel_config.peer_public_key),
            metrics=app.metrics.tunnel(tunnel_config.name, tunnel_config.interface, tunnel_config.peer_public_key),
            state_dir=config.daemon.state_dir, rotation_interval_s=config.rotation_interval_s(tunnel_config))
        tunnels.by_link.setdefault(link.link_id, []).append(tunnel)
    kms_client = None
    for push in config.kms_push:
        link = config.link(push.link_id)
        if not reachable("kms_push", push.name, link.link_id):
            continue
        from qkdd.consumers.kms import KmsSink
        from qkdd.consumers.kms_client import KmsClient
        if kms_client is None and push.push:
            kms = config.kms
            kms_client = KmsClient(kms.url, kms.client_id, kms.client_secret, project=kms.project,
                                   environment=kms.environment)
            tunnels.closers.append(kms_client.aclose)
        sink = KmsSink(kms_client, name=push.name, folder=push.folder, push=push.push and kms_client is not None,
                       metrics=app.metrics.link(link.link_id, link.protocol, kms=True))
        rotation = await KeyRotation.open(
            push, kind="kms", tag=consumer_tag("kms", push.name), sink=sink, leader=link.role == "alice",
            store=app.keystore, metrics=app.metrics.consumer("kms", push.name), state_dir=config.daemon.state_dir,
            rotation_interval_s=config.rotation_interval_s(push), retry_max_s=push.retry_max_s, what="kms push")
        tunnels.by_link.setdefault(link.link_id, []).append(rotation)
    for ipsec in config.ipsec:
        link = config.link(ipsec.link_id)
        if not reachable("ipsec", ipsec.name, link.link_id):
            continue
        from qkdd.consumers.ipsec import PpkSink
        rotation = await KeyRotation.open(
            ipsec, kind="ipsec", tag=consumer_tag("ipsec", ipsec.name), sink=PpkSink.from_config(ipsec),
            leader=link.role == "alice", store=app.keystore, metrics=app.metrics.consumer("ipsec", ipsec.name),
            state_dir=config.daemon.state_dir, rotation_interval_s=config.rotation_interval_s(ipsec),
            retry_max_s=ipsec.retry_max_s, what="ipsec")
        tunnels.by_link.setdefault(link.link_id, []).append(rotation)
    for link_id, link_tunnels in tunnels.by_link.items():
        EpochChannel(link_tunnels).attach_to(app.reservations[link_id])
    app.consumers = tunnels.all
    return tunnels


build_consumers = build_wireguard


async def run_wireguard(tunnels: Tunnels) -> None:
    """Run the consumers until cancelled; SIGUSR1 rotates the leaders at once."""
    if not tunnels.by_link:
        return
    try:
        with trio.open_signal_receiver(signal.SIGUSR1) as rotate_signals:
            async with trio.open_nursery() as nursery:
                for tunnel in tunnels.all:
                    nursery.start_soon(tunnel.run)
                async for _ in rotate_signals:
                    leaders = [tunnel for tunnel in tunnels.all if tunnel.leader]
                    log.info("SIGUSR1: rotating %d consumer(s) now", len(leaders))
                    for tunnel in leaders:
                        tunnel.rotate_now()
    finally:
        with trio.CancelScope(shield=True):
            for close in tunnels.closers:
                await close()


run_consumers = run_wireguard
