"""Etsi014Device: one end's vendor KME as a qkdd device. The master end takes new keys with enc_keys
(Get key) for the other end's SAE, the slave end fetches the same keys by ID with dec_keys; health and
the key count come from Get status, whose limits (ETSI GS QKD 014 V1.1.1 clause 6.1, Table 9:
max_key_per_request, min_key_size, max_key_size) the requests keep to. It yields finished keys, not raw
frames."""
from __future__ import annotations

import logging
import time

import trio

from qkdd.hal.base import ChannelMetrics, Device, DeviceHealth, KeyBlock
from qkdd.hal.etsi014.client import (
    Etsi014Client,
    Etsi014Error,
    KmeStatus,
    VendorKey,
    tls_context,
)
from qkdd.hal.etsi014.settings import PRESETS, Etsi014DeviceConfig

log = logging.getLogger("qkdd.hal")


class Etsi014Device(Device):
    yields_raw_frames = False

    def __init__(self, base_url: str, config: Etsi014DeviceConfig, *, driver: str = "etsi014",
                 key_bits: int = 256):
        self.base_url = base_url
        self.config = config
        self.driver = driver
        self.vendor = str(PRESETS[driver]["vendor"])
        self.key_bits = key_bits
        self._client: Etsi014Client | None = None
        self._started_s = time.monotonic()
        self._key_rate_bps = 0.0
        self.last_status: KmeStatus | None = None

    async def init(self) -> None:
        """Load the SAE's certificate (a file problem is an error now); the KME itself may still be down,
        which health() then reports."""
        context = tls_context(self.config.cert_file, self.config.key_file, self.config.ca_file)
        self._client = Etsi014Client(self.base_url, context, path_prefix=self.config.path_prefix,
                                     timeout_s=self.config.timeout_s)

    @property
    def client(self) -> Etsi014Client:
        if self._client is None:
            raise Etsi014Error("unreachable", f"KME {self.base_url}: device not initialised")
        return self._client

    async def status(self) -> KmeStatus:
        """Get status for the other end's SAE (as master of it)."""
        status = await self.client.status(self.config.peer_sae_id)
        previous, self.last_status = self.keys_per_request(), status
        if self.keys_per_request() != previous:
            log.info("%s at %s serves at most %d keys per request (Get status): taking %d at a time, not "
                     "keys_per_request %d", self.vendor, self.base_url, status.max_key_per_request,
                     self.keys_per_request(), self.config.keys_per_request)
        return status

    def keys_per_request(self) -> int:
        """keys_per_request, but at most the KME's max_key_per_request once Get status has told it (a KME
        refuses a larger Get key with 400)."""
        limit = self.last_status.max_key_per_request if self.last_status is not None else 0
        return min(self.config.keys_per_request, limit) if limit > 0 else self.config.keys_per_request

    def key_size_problem(self, status: KmeStatus) -> str | None:
        """Why the KME cannot serve this link's key_bits, from its Get status; None when it can. The size
        is not adapted: both ends must store keys of the same, configured size."""
        if status.max_key_size_bits and not status.min_key_size_bits <= self.key_bits <= status.max_key_size_bits:
            return (f"KME {self.base_url} serves keys of {status.min_key_size_bits}-{status.max_key_size_bits} bits "
                    f"(Get status); this link's key_bits is {self.key_bits}")
        return None

    async def enc_keys(self, number: int) -> list[VendorKey]:
        """`number` new keys of key_bits for the other end's SAE (this end is the master SAE)."""
        return await self.client.enc_keys(self.config.peer_sae_id, number, self.key_bits)

    async def dec_keys(self, key_ids: list[str]) -> list[VendorKey]:
        """The keys the other end's SAE took as master, by ID, in the order asked."""
        return await self.client.dec_keys(self.config.peer_sae_id, key_ids, self.key_bits)

    async def request_key(self, bits: int) -> KeyBlock:
        if bits != self.key_bits:
            raise Etsi014Error("rejected", f"this link's vendor keys have {self.key_bits} bits, not {bits}")
        [key] = await self.enc_keys(1)
        return KeyBlock(key.key_id, key.material, bits, 0.0, self._key_rate_bps, "etsi014", time.time())

    async def channel_status(self) -> ChannelMetrics:
        """What qkdd measures of the link (the key rate); ETSI 014 reports no physics, so the optical
        figures are 0."""
        return ChannelMetrics(qber=0.0, key_rate_bps=self._key_rate_bps, photon_rate_hz=0.0, visibility=0.0,
                              link_loss_db=0.0, temperature_c=0.0, uptime_s=time.monotonic() - self._started_s)

    async def health(self) -> DeviceHealth:
        """Healthy when the KME answers Get status; the detail names it and its stored key count.
        Etsi014Error when it does not answer."""
        with trio.fail_after(self.config.timeout_s + 1):
            status = await self.status()
        problem = self.key_size_problem(status)
        if problem is not None:
            raise Etsi014Error("rejected", problem)
        return DeviceHealth(True, f"{self.vendor} {status.source_kme_id} at {self.base_url} reachable, "
                                  f"{status.stored_key_count} keys stored for {self.config.peer_sae_id}",
                            0.0, time.monotonic() - self._started_s,
                            {"stored_key_count": status.stored_key_count, "max_key_count": status.max_key_count,
                             "target_kme_id": status.target_kme_id})

    def update_estimates(self, *, qber: float | None = None, key_rate_bps: float | None = None) -> None:
        if key_rate_bps is not None:
            self._key_rate_bps = key_rate_bps

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
