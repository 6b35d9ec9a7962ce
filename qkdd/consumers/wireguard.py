"""WireGuard PSK rotation from QKD keys: one TunnelRotation per `[[wireguard]]` tunnel, the shared
KeyRotation (rotation.py) installing into `wg set ... preshared-key` (wg_tool.py).

Fallback (HIP-0071 "Fallback Policy"), WireGuard's meaning of the shared policy: "clear" removes the PSK
(Curve25519 alone), "random" installs a random PSK (the tunnel fails closed).
"""
from __future__ import annotations

import os
import time

from qkdd.config import WireGuardConfig
from qkdd.consumers.rotation import (ANSWER_TIMEOUT_S, KEY_BYTES, PSK_BITS, EpochChannel, KeyRotation,
                                     RotationMetrics, RotationState)
from qkdd.consumers.sink import KeySink
from qkdd.consumers.wg_epoch import Epoch, tunnel_tag
from qkdd.consumers.wg_tool import WgTool
from qkdd.keystore import KeyStore, StoredKey

__all__ = ["ANSWER_TIMEOUT_S", "PSK_BITS", "TunnelRotation", "TunnelState", "WireGuardChannel", "WireGuardSink"]

TunnelState = RotationState
WireGuardChannel = EpochChannel


class WireGuardSink(KeySink):
    """The PSK of one peer of one WireGuard interface."""

    def __init__(self, wg: WgTool) -> None:
        self.wg = wg
        self.label = wg.interface

    async def install(self, key: StoredKey, epoch: Epoch) -> None:
        await self.wg.set_psk(key.material)

    async def fall_back(self, policy: str) -> None:
        if policy == "clear":
            await self.wg.clear_psk()
        else:
            await self.wg.set_psk(os.urandom(KEY_BYTES))

    def fallback_meaning(self, policy: str) -> str:
        return "Curve25519 only" if policy == "clear" else "random PSK, the tunnel fails closed"

    async def latest_handshake_s(self) -> float | None:
        return await self.wg.latest_handshake_s()


class TunnelRotation(KeyRotation):
    """One tunnel's rotation (log lines "tunnel NAME: ...", state file wireguard-NAME.json)."""

    KIND = "wireguard"

    def __init__(self, config: WireGuardConfig, *, leader: bool, store: KeyStore, wg: WgTool,
                 metrics: RotationMetrics, state_dir: str, rotation_interval_s: float, clock=time.time,
                 state: RotationState | None = None) -> None:
        super().__init__(config, kind=self.KIND, tag=tunnel_tag(config.name), sink=WireGuardSink(wg), leader=leader,
                         store=store, metrics=metrics, state_dir=state_dir, rotation_interval_s=rotation_interval_s,
                         what="tunnel", clock=clock, state=state)
        self.wg = wg
