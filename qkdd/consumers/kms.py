"""KMS push (HIP-0071 "Integration with KMS (HIP-0027)"): each agreed key of a `[[kms_push]]` consumer
becomes the secrets QKD_<NAME>_AES256_CURRENT / _PREVIOUS / _KEY_ID / _QBER / _GENERATED_AT in the
configured project, environment and folder of an Infisical-compatible KMS.

Rotation as the seed has it: the old CURRENT moves to PREVIOUS (kept for in-flight traffic), then the new
key becomes CURRENT with its metadata. A push is idempotent, so a retry after a partial failure (or a
restart) never moves the new key to PREVIOUS: PREVIOUS is written only while CURRENT still holds another
value. Both ends of a link push the same key (agreed over the link's channel) to their own KMS, or only
the end configured with `push = true`. Fallback "clear" deletes the five secrets (services go on with
their PQ-only protection), "random" writes a random CURRENT and PREVIOUS only this end knows (fail closed).
"""
from __future__ import annotations

import base64
import datetime
import os
import re
import time

from qkdd.consumers.kms_client import KmsClient, KmsError
from qkdd.consumers.sink import KeySink
from qkdd.consumers.wg_epoch import Epoch
from qkdd.keystore import StoredKey
from qkdd.metrics import LinkMetrics

KEY_BYTES = 32
SUFFIXES = ("AES256_CURRENT", "AES256_PREVIOUS", "KEY_ID", "QBER", "GENERATED_AT")


def secret_prefix(name: str) -> str:
    """QKD_<NAME>_ for a consumer name: upper case, every run of other characters one underscore."""
    return "QKD_" + re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") + "_"


class KmsSink(KeySink):
    """The five secrets of one consumer in one folder. `push=False`: this end agrees on keys (so the
    other end's push stays in step and the key serves nobody else) but writes nothing."""

    def __init__(self, client: KmsClient, *, name: str, folder: str, push: bool = True,
                 metrics: LinkMetrics | None = None, clock=time.time) -> None:
        self.client = client
        self.folder = folder
        self.push = push
        self.prefix = secret_prefix(name)
        self.metrics = metrics
        self._clock = clock
        self.label = f"{client.url} {client.project}/{client.environment}{folder}"
        self.pushed_key_id: str | None = None

    def name(self, suffix: str) -> str:
        return self.prefix + suffix

    async def install(self, key: StoredKey, epoch: Epoch) -> None:
        if not self.push:
            return
        if len(key.material) != KEY_BYTES:
            raise ValueError(f"a KMS key is {KEY_BYTES} bytes")
        value = base64.b64encode(key.material).decode()
        generated = datetime.datetime.fromtimestamp(key.created_at, datetime.timezone.utc)
        await self._timed(self._rotate_in, value, {
            "KEY_ID": epoch.key_id,
            "QBER": "" if key.qber is None else f"{key.qber:.4f}",
            "GENERATED_AT": generated.strftime("%Y-%m-%dT%H:%M:%SZ")})
        self.pushed_key_id = epoch.key_id

    async def _rotate_in(self, value: str, metadata: dict[str, str]) -> None:
        current = await self.client.get_secret(self.name("AES256_CURRENT"), self.folder)
        if current is not None and current != value:
            await self.client.put_secret(self.name("AES256_PREVIOUS"), current, self.folder)
        del current
        await self.client.put_secret(self.name("AES256_CURRENT"), value, self.folder)
        for suffix, text in metadata.items():
            await self.client.put_secret(self.name(suffix), text, self.folder)

    async def fall_back(self, policy: str) -> None:
        if not self.push:
            return
        if policy == "clear":
            await self._timed(self._clear)
        else:
            await self._timed(self._randomise)
        self.pushed_key_id = None

    async def _clear(self) -> None:
        for suffix in SUFFIXES:
            await self.client.delete_secret(self.name(suffix), self.folder)

    async def _randomise(self) -> None:
        for suffix in ("AES256_PREVIOUS", "AES256_CURRENT"):
            await self.client.put_secret(self.name(suffix), base64.b64encode(os.urandom(KEY_BYTES)).decode(),
                                         self.folder)
        await self.client.put_secret(self.name("KEY_ID"), "fallback-random", self.folder)
        await self.client.delete_secret(self.name("QBER"), self.folder)

    def fallback_meaning(self, policy: str) -> str:
        return ("QKD secrets deleted from the KMS, services go on PQ-only" if policy == "clear"
                else "random CURRENT/PREVIOUS in the KMS, services fail closed")

    async def _timed(self, call, *args) -> None:
        """One push (all its secrets), counted in qkd_kms_key_push_total{status} and its latency."""
        started = time.monotonic()
        try:
            await call(*args)
        except KmsError:
            if self.metrics is not None:
                self.metrics.kms_push(ok=False, latency_s=time.monotonic() - started)
            raise
        if self.metrics is not None:
            self.metrics.kms_push(ok=True, latency_s=time.monotonic() - started)
