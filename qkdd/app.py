"""The daemon's shared state that handlers, links and consumers reach: config, health, metrics.

Later parts (key store, link engines, relay) become fields here; the daemon builds one App at start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qkdd.config import Config
from qkdd.health import Health
from qkdd.metrics import Metrics


@dataclass
class App:
    config: Config
    health: Health
    metrics: Metrics
    links: dict[str, Any] = field(default_factory=dict)      # link id -> qkdd.link.engine.LinkEngine
    keystore: Any = None

    @classmethod
    def create(cls, config: Config) -> "App":
        """Health and metrics with every configured link registered (state "configured")."""
        app = cls(config, Health(), Metrics())
        for link in config.links:
            app.health.register_link(
                link.link_id, f'driver "{link.driver}", role {link.role}: no link engine runs it yet')
            app.metrics.link(link.link_id, link.protocol, kms=config.kms.enabled)
        return app
