"""The daemon's shared state that handlers, links and consumers reach: config, health, metrics.

Later parts (key store, link engines, relay) become fields here; the daemon builds one App at start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qkdd.config import Config
from qkdd.hal.base import Device
from qkdd.health import Health
from qkdd.kme import KmeService, open_kme
from qkdd.metrics import Metrics


@dataclass
class App:
    config: Config
    health: Health
    metrics: Metrics
    devices: dict[str, Device] = field(default_factory=dict)   # link_id -> this end's device, once opened
    kme: KmeService | None = None
    links: dict[str, Any] = field(default_factory=dict)      # link id -> qkdd.link.engine.LinkEngine
    key_requests: dict[str, Any] = field(default_factory=dict)   # link id -> qkdd.link.key_requests.KeyRequests
    reservations: dict[str, Any] = field(default_factory=dict)   # link id -> qkdd.reservation ReservationService
    keystore: Any = None             # the daemon's one KeyStore (link engines, KME, WireGuard), once opened

    @classmethod
    def create(cls, config: Config, keystore: Any = None) -> "App":
        """Health and metrics with every configured link registered (state "configured"), and the KME over
        `keystore` (the daemon's one key store, shared by the link engines, the KME and WireGuard)."""
        app = cls(config, Health(), Metrics(), keystore=keystore)
        if config.etsi014 is not None:
            app.kme = open_kme(config.etsi014, config.daemon.state_dir, keystore=app.keystore, metrics=app.metrics)
        for link in config.links:
            app.health.register_link(
                link.link_id, f'driver "{link.driver}", role {link.role}: no link engine runs it yet')
            app.metrics.link(link.link_id, link.protocol, kms=config.kms.enabled)
        return app
