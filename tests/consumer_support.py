"""What the consumer rotation tests share: a sink that records what the real rotation hands it (the one
stand-in: what a real sink would install), and a consumer policy with short times."""
from __future__ import annotations

from qkdd.consumers.sink import KeySink


class RecordingSink(KeySink):
    """Records what the rotation hands over (this test's only stand-in: what a real sink would install)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.installed: list[tuple[int, str, bytes]] = []

    async def install(self, key, epoch) -> None:
        self.installed.append((epoch.number, epoch.key_id, key.material))

    async def fall_back(self, policy: str) -> None:
        self.installed.append((0, policy, b""))


class RotationPolicy:
    name = "site-a-b"
    link_id = "hybrid-link"
    expiry_s = 3600.0
    on_exhausted = "clear"
    activation_delay_s = 0.1
    retry_interval_s = 0.1

    def __init__(self, hybrid_mode: str) -> None:
        self.hybrid = hybrid_mode
