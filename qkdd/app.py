"""The daemon's shared state that handlers, links and consumers reach: config, health, metrics.

Later parts (key store, link engines, relay) become fields here; the daemon builds one App at start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

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
    consumers: list = field(default_factory=list)   # qkdd.consumers KeyRotation: WireGuard, KMS push, IKEv2 PPK
    relay: Any = None                # qkdd.relay.service.RelayService with [node], else None

    @classmethod
    def create(cls, config: Config, keystore: Any = None) -> "App":
        """Health and metrics with every configured link registered (state "configured"), and the KME over
        `keystore` (the daemon's one key store, shared by the link engines, the KME and WireGuard). Blocking
        (the KME opens its files): on the event loop, use `await App.open(...)`."""
        app = cls(config, Health(), Metrics(), keystore=keystore)
        app.metrics.watch_health(app.health)
        if config.etsi014 is not None:
            app.kme = app._open_kme()
        app._register_links()
        return app

    @classmethod
    async def open(cls, config: Config, keystore: Any = None) -> "App":
        """create(), with the KME's key store and ledger opened in a worker thread."""
        app = cls(config, Health(), Metrics(), keystore=keystore)
        app.metrics.watch_health(app.health)
        if config.etsi014 is not None:
            app.kme = await trio.to_thread.run_sync(app._open_kme)
        app._register_links()
        return app

    def _open_kme(self) -> KmeService:
        """Blocking. Raises KeyStoreError / LedgerError / OSError."""
        return open_kme(self.config.etsi014, self.config.daemon.state_dir, keystore=self.keystore,
                        metrics=self.metrics, cache_mib=self.config.keystore.cache_mib)

    def _register_links(self) -> None:
        from qkdd.link.service import not_started_because
        for link in self.config.links:
            reason = not_started_because(link)      # the real reason a link will not run, or None: it starts
            self.health.register_link(
                link.link_id, f'driver "{link.driver}", role {link.role}: ' + (reason or "link engine starting"))
            self.metrics.link(link.link_id, link.protocol, kms=self.config.kms.enabled)
