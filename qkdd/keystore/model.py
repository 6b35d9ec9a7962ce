"""Key states, their legal transitions, the stored-key record and the key store's errors.

Theory of operation
-------------------
A frame's keys enter the store as PENDING at both ends. The end that finishes last tells the other, and
both mark them AVAILABLE; after a crash the resynchronisation (resync.py) promotes what both ends hold
and discards what only one holds, so a key is usable only when both ends have it durably.
AVAILABLE keys are RESERVED for a consumer (an SAE pair, a WireGuard epoch, a /v1 request), then
DELIVERED to it. DELIVERED and EXPIRED are terminal: the material is erased, the row stays as a
tombstone so the same key id can never be handed out again.
"""
from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class KeyState(enum.Enum):
    PENDING = "pending"
    AVAILABLE = "available"
    RESERVED = "reserved"
    DELIVERED = "delivered"
    EXPIRED = "expired"

    @property
    def holds_material(self) -> bool:
        return self in (KeyState.PENDING, KeyState.AVAILABLE, KeyState.RESERVED)


# Every legal transition, and nothing else (store.py checks each change against this table).
TRANSITIONS: dict[KeyState, frozenset[KeyState]] = {
    KeyState.PENDING: frozenset({KeyState.AVAILABLE, KeyState.EXPIRED}),
    KeyState.AVAILABLE: frozenset({KeyState.RESERVED, KeyState.DELIVERED, KeyState.EXPIRED}),
    KeyState.RESERVED: frozenset({KeyState.AVAILABLE, KeyState.DELIVERED, KeyState.EXPIRED}),
    KeyState.DELIVERED: frozenset(),
    KeyState.EXPIRED: frozenset(),
}


class KeyStoreError(Exception):
    """The key store cannot do what was asked; the message never contains key material."""


class KeyNotFound(KeyStoreError):
    """No key with this id is stored for this link."""


class KeyAlreadyDelivered(KeyStoreError):
    """The key was delivered before (or expired): it is erased and will never be handed out again."""


class KeyUnavailable(KeyStoreError):
    """Not enough keys in the state the request needs."""


class StoreWriteError(KeyStoreError):
    """A write to the key store failed in SQLite (disk full, I/O error, locked, read-only): nothing of the
    failed call was stored. `disk_full` is set when the file system has no room (SQLITE_FULL, or an I/O
    error with no free space left); `reason` is SQLite's words without the file's path; `sqlite_code` its
    extended result code when known."""

    def __init__(self, message: str, *, reason: str = "", disk_full: bool = False, sqlite_code: int | None = None):
        super().__init__(message)
        self.reason = reason or message
        self.disk_full = disk_full
        self.sqlite_code = sqlite_code


class StoreFull(KeyStoreError):
    """The link (or the whole store) holds its configured capacity: a frame's keys are not taken until
    keys are handed out or expire (capacity.py). `fill` is what the store held when it refused."""

    def __init__(self, message: str, fill):
        super().__init__(message)
        self.fill = fill


class IllegalTransition(KeyStoreError):
    def __init__(self, key_id: str, current: KeyState, wanted: KeyState):
        super().__init__(f"key {key_id}: cannot go from {current.value} to {wanted.value}")
        self.key_id = key_id
        self.current = current
        self.wanted = wanted


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# canonical_key_ids(): each byte's class (0 none of these, 1 lowercase hex digit, 2 '-', 3 '\n'), and the class each
# of the 37 columns of "<canonical UUID>\n" must have.
_BYTE_CLASS = np.zeros(256, dtype=np.uint8)
_BYTE_CLASS[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = 1
_BYTE_CLASS[ord("-")], _BYTE_CLASS[ord("\n")] = 2, 3
_ID_LINE_CLASSES = _BYTE_CLASS[np.frombuffer(b"00000000-0000-0000-0000-000000000000\n", dtype=np.uint8)]


def canonical_key_id(key_id: str) -> str:
    """The lowercase canonical UUID form of `key_id` (hex digits of either case accepted); KeyStoreError
    if it is not a UUID in the 8-4-4-4-12 form."""
    if isinstance(key_id, str) and _CANONICAL_UUID.fullmatch(key_id):     # already canonical: the usual case
        return key_id
    try:
        parsed = uuid.UUID(key_id)
    except (ValueError, AttributeError, TypeError):
        raise KeyStoreError(f"key id {key_id!r:.60} is not a UUID") from None
    if str(parsed) != key_id.lower():
        raise KeyStoreError(f"key id {key_id!r:.60} is not in canonical UUID form")
    return str(parsed)


def canonical_key_ids(key_ids: Sequence[str]) -> list[str]:
    """canonical_key_id() of each of `key_ids`, checked for the usual case (all already canonical: a frame's
    ids as the link derives them) in a few array operations over the ids joined by newlines instead of a
    match per id: every 37-byte line a lowercase UUID and its newline pins each id to exactly its 36 bytes."""
    try:
        text = ("\n".join(key_ids) + "\n").encode("ascii")
    except (TypeError, UnicodeEncodeError):
        text = b""
    if len(text) == 37 * len(key_ids) and key_ids:
        lines = np.frombuffer(text, dtype=np.uint8).reshape(len(key_ids), 37)
        if np.array_equal(_BYTE_CLASS[lines], np.broadcast_to(_ID_LINE_CLASSES, lines.shape)):
            return list(key_ids)
    return [canonical_key_id(key_id) for key_id in key_ids]


@dataclass(frozen=True)
class StoredKey:
    """A key as handed to a consumer, with the frame it came from. `material` is secret: it is excluded
    from repr()."""

    key_id: str
    link_id: str
    bits: int
    created_at: float
    expires_at: float
    material: bytes
    frame_id: int
    qber: float | None = None          # the error rate of its frame after reconciliation, both ends alike

    def __repr__(self) -> str:
        return (f"StoredKey(key_id={self.key_id!r}, link_id={self.link_id!r}, bits={self.bits}, "
                f"created_at={self.created_at}, expires_at={self.expires_at}, frame_id={self.frame_id}, "
                f"qber={self.qber}, material=<redacted>)")
