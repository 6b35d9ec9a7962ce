"""The key store's capacity (key bits per link, bytes for the whole file) and its fill measured against it.

A link's frames are stored only while its fill is under the capacity; at capacity the link engine pauses
generation (qkdd.link.store_guard), as a device pauses when its key buffer is full, and resumes once keys
were handed out or expired. Zero means "no bound" for either limit.
"""
from __future__ import annotations

from dataclasses import dataclass

MIN_MAX_KEY_BITS = 8192             # one key of the longest length a link stores
MIN_MAX_BYTES = 1 << 20             # the schema and a few frames
DEFAULT_CACHE_MIB = 64              # the store connection's SQLite page cache ([keystore] cache_mib; SQLite's: 2 MiB)
MAX_CACHE_MIB = 1 << 20             # 1 TiB: past any host's memory


@dataclass(frozen=True)
class StoreCapacity:
    """`max_key_bits`: key bits one link may hold in the states that keep material (pending, available,
    reserved); `max_bytes`: bytes the store's file may fill with data (every link, tombstones and the ETSI
    014 ledger when it shares the file). A frame is refused once either is reached, so the store
    overshoots by at most one frame."""

    max_key_bits: int = 0
    max_bytes: int = 0

    def __post_init__(self) -> None:
        for name, low in (("max_key_bits", MIN_MAX_KEY_BITS), ("max_bytes", MIN_MAX_BYTES)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or 0 < value < low:
                raise ValueError(f"{name} must be 0 (no bound) or an integer of at least {low}, got {value!r}")

    @property
    def bounded(self) -> bool:
        return bool(self.max_key_bits or self.max_bytes)


@dataclass(frozen=True)
class Fill:
    """What one link holds and what the whole store takes, against the capacity (numbers only)."""

    link_id: str
    key_bits: int
    store_bytes: int
    capacity: StoreCapacity

    @property
    def ratio(self) -> float:
        """The fuller of the two limits, as a fraction of it (0.0 with no bound; past 1.0 by at most a frame)."""
        ratios = [0.0]
        if self.capacity.max_key_bits:
            ratios.append(self.key_bits / self.capacity.max_key_bits)
        if self.capacity.max_bytes:
            ratios.append(self.store_bytes / self.capacity.max_bytes)
        return max(ratios)

    @property
    def full(self) -> bool:
        cap = self.capacity
        return bool((cap.max_key_bits and self.key_bits >= cap.max_key_bits)
                    or (cap.max_bytes and self.store_bytes >= cap.max_bytes))

    def describe(self) -> str:
        cap = self.capacity
        bits = f"link {self.link_id} holds {self.key_bits} key bits" + (
            f" of {cap.max_key_bits}" if cap.max_key_bits else "")
        size = f"the store takes {self.store_bytes} bytes" + (f" of {cap.max_bytes}" if cap.max_bytes else "")
        return f"{bits}; {size}"
