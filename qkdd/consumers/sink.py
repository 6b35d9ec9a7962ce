"""Where a consumer's agreed keys go: the small interface every sink implements (`wg set`, a KMS push, a
strongSwan PPK), and the one error type the rotation retries on."""
from __future__ import annotations

from qkdd.consumers.wg_epoch import Epoch
from qkdd.keystore import StoredKey


class SinkError(Exception):
    """Installing a key or a fallback failed; retried with backoff. The message never carries key material.
    `retry_after_s`: the least wait the far side asked for (HTTP 429 Retry-After), if any."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KeySink:
    """Base of the sinks: `label` names the target in logs; the three coroutines raise SinkError."""

    label = "?"

    async def install(self, key: StoredKey, epoch: Epoch) -> None:
        """Put the agreed key of `epoch` into use (idempotent: a restart may install the same key again)."""
        raise NotImplementedError

    async def fall_back(self, policy: str) -> None:
        """Apply the fallback policy: "clear" (no QKD key) or "random" (a random key: fail closed)."""
        raise NotImplementedError

    def fallback_meaning(self, policy: str) -> str:
        """What `policy` means for this consumer, for the log line."""
        return "no QKD key" if policy == "clear" else "a random key only this end knows: fails closed"

    async def latest_handshake_s(self) -> float | None:
        """Unix time the consumer last proved the key works with its peer, if it can tell (WireGuard)."""
        return None
