"""The master KME's pool of stored keys already taken out of the key store (sans-IO).

Get key at the master's end needs stored keys that are reserved and erased before the answer. Doing that
per request costs one SQLite transaction (and fsync) per request; instead the service takes a block of
this end's share out of the key store in one transaction (reserved and erased there, so after a crash or
restart they are lost, never handed out again) and serves requests from this pool in memory. The peer KME
still holds its copies, reserved for nobody: it never allocates this end's share on its own, and they
expire there. Entries past their expiry time are dropped, never used.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class TakenKeys:
    """Stored keys (id, material, expires_at) of one link, in the key store's allocation order."""

    def __init__(self) -> None:
        self._entries: deque[tuple[str, bytes, float]] = deque()
        self._bits = 0
        self._earliest_expiry = float("inf")

    def __repr__(self) -> str:  # never show the material
        return f"TakenKeys(entries={len(self._entries)}, bits={self._bits})"

    def add(self, entries: Iterable[tuple[str, bytes, float]]) -> None:
        for entry in entries:
            self._entries.append(entry)
            self._bits += len(entry[1]) * 8
            self._earliest_expiry = min(self._earliest_expiry, entry[2])

    def bits(self, now: float) -> int:
        """Bits held by entries that have not expired at `now` (expired ones are dropped)."""
        self._drop_expired(now)
        return self._bits

    def take(self, bits: int, now: float) -> dict[str, bytes] | None:
        """The oldest entries holding at least `bits`, removed from the pool (stored_key_id -> material, in
        order); None, taking nothing, if the pool holds fewer bits."""
        self._drop_expired(now)
        if bits > self._bits:
            return None
        taken: dict[str, bytes] = {}
        total = 0
        while total < bits:
            stored_id, material, _ = self._entries.popleft()
            taken[stored_id] = material
            total += len(material) * 8
        self._bits -= total
        return taken

    def _drop_expired(self, now: float) -> None:
        if now < self._earliest_expiry:
            return
        kept = [entry for entry in self._entries if entry[2] > now]
        self._entries = deque(kept)
        self._bits = sum(len(entry[1]) * 8 for entry in kept)
        self._earliest_expiry = min((entry[2] for entry in kept), default=float("inf"))
