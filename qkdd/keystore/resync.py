"""Key-store resynchronisation after a restart: inventories in, a plan out (no I/O).

Theory of operation
-------------------
When the peer session (re)starts, each end sends its inventory of the link (every key id and state,
tombstones included) and applies `plan_resync(local, remote)` to its own store. The rule is the same
at both ends, so they converge without further messages:

    local \\ remote          absent        pending/available/reserved   delivered     expired
    pending                 discard       promote                      promote       expire
    available, reserved     discard       keep                         keep          expire
    delivered, expired      keep          keep                         keep          keep

A key is usable only where both ends hold it: what one end never stored durably is dropped at the
other, nothing that the other end kept is lost, and delivered keys stay tombstones so they are never
handed out twice. An expiry at either end erases the key at both (clocks may differ slightly).
"""
from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from qkdd.keystore.model import KeyState, KeyStoreError

MAGIC = b"QKRS"
VERSION = 1
MAX_KEYS = 4_000_000          # a message above this is refused before it is parsed
_HEADER = struct.Struct(">4sBH")  # magic, version, link id length
_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">16sB")
_STATE_CODES = {KeyState.PENDING: 1, KeyState.AVAILABLE: 2, KeyState.RESERVED: 3, KeyState.DELIVERED: 4,
                KeyState.EXPIRED: 5}
_CODE_STATES = {code: state for state, code in _STATE_CODES.items()}


class ResyncMessageError(KeyStoreError):
    """A peer's inventory message is malformed."""


@dataclass
class ResyncPlan:
    promote: list[str] = field(default_factory=list)
    discard: list[str] = field(default_factory=list)
    expire: list[str] = field(default_factory=list)


def plan_resync(local: Mapping[str, KeyState], remote: Mapping[str, KeyState]) -> ResyncPlan:
    """What this end must change so that both ends hold the same usable keys (table above)."""
    plan = ResyncPlan()
    for key_id, mine in sorted(local.items()):
        if not mine.holds_material:
            continue
        theirs = remote.get(key_id)
        if theirs is None:
            plan.discard.append(key_id)
        elif theirs is KeyState.EXPIRED:
            plan.expire.append(key_id)
        elif mine is KeyState.PENDING:
            plan.promote.append(key_id)
    return plan


def encode_inventory(link_id: str, inventory: Mapping[str, KeyState]) -> bytes:
    """The inventory message: header, count, then (16-byte UUID, state code) per key."""
    link = link_id.encode()
    if len(link) > 0xFFFF:
        raise ResyncMessageError("link id too long")
    if len(inventory) > MAX_KEYS:
        raise ResyncMessageError(f"inventory of {len(inventory)} keys exceeds {MAX_KEYS}")
    parts = [_HEADER.pack(MAGIC, VERSION, len(link)), link, _COUNT.pack(len(inventory))]
    parts.extend(_ENTRY.pack(uuid.UUID(key_id).bytes, _STATE_CODES[state]) for key_id, state in inventory.items())
    return b"".join(parts)


def decode_inventory(message: bytes, expected_link_id: str) -> dict[str, KeyState]:
    """Parse and check a peer's inventory message for `expected_link_id`."""
    if len(message) < _HEADER.size:
        raise ResyncMessageError("inventory message truncated in its header")
    magic, version, link_len = _HEADER.unpack_from(message)
    if magic != MAGIC:
        raise ResyncMessageError("not an inventory message")
    if version != VERSION:
        raise ResyncMessageError(f"inventory message version {version}, expected {VERSION}")
    offset = _HEADER.size
    link = message[offset:offset + link_len]
    offset += link_len
    if len(link) != link_len or len(message) < offset + _COUNT.size:
        raise ResyncMessageError("inventory message truncated")
    try:
        link_id = link.decode()
    except UnicodeDecodeError:
        raise ResyncMessageError("inventory link id is not UTF-8") from None
    if link_id != expected_link_id:
        raise ResyncMessageError(f"inventory is for link {link_id!r:.60}, expected {expected_link_id!r}")
    (count,) = _COUNT.unpack_from(message, offset)
    offset += _COUNT.size
    if count > MAX_KEYS:
        raise ResyncMessageError(f"inventory claims {count} keys, more than {MAX_KEYS}")
    if len(message) != offset + count * _ENTRY.size:
        raise ResyncMessageError(f"inventory message length {len(message)} does not match {count} entries")
    inventory: dict[str, KeyState] = {}
    for raw_id, code in _ENTRY.iter_unpack(message[offset:]):
        state = _CODE_STATES.get(code)
        if state is None:
            raise ResyncMessageError(f"inventory has unknown state code {code}")
        key_id = str(uuid.UUID(bytes=raw_id))
        if key_id in inventory:
            raise ResyncMessageError(f"inventory lists key {key_id} twice")
        inventory[key_id] = state
    return inventory
