"""Key-store resynchronisation after a restart: inventories in, a plan out (no I/O).

Theory of operation
-------------------
When the peer session (re)starts, each end sends its inventory of the link (every key id and state,
tombstones included; in as many messages as the peer channel's record cap needs) and applies
`plan_resync(local, remote)` to its own store. The rule is the same at both ends, so they converge
without further messages:

    local \\ remote          absent        pending/available/reserved   delivered     expired
    pending                 discard       promote                      promote       expire
    available, reserved     discard       keep                         keep          expire
    delivered, expired      keep          keep                         keep          keep

A key is usable only where both ends hold it: what one end never stored durably is dropped at the
other, nothing that the other end kept is lost, and delivered keys stay tombstones so they are never
handed out twice. An expiry at either end erases the key at both (clocks may differ slightly).

Tombstones matter only while the other end may still hold the key's material: a delivered key here
must not be discarded there as "absent" while it is still waiting for its consumer there. Once the
key is past its expiry here plus TOMBSTONE_GRACE_S (clock skew, a resync under way), the tombstone may
go (KeyStore.purge_tombstones): with the same key_expiry_s at both ends the other end's copy has expired
too; with a longer one there, the next resync discards it, which is the rule above (an expiry at either
end ends the key at both). Key ids come from fresh random seeds (linkmsg.derive_key_ids), so a purged
id does not come back.
"""
from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from qkdd.keystore.model import KeyState, KeyStoreError

MAGIC = b"QKRS"
VERSION = 2                   # 2: an inventory spans messages that each fit one peer record
MAX_KEYS = 4_000_000          # an inventory above this (in all its messages) is refused before it is parsed
# The peer channel's default record cap less the record overhead (qkdd.peer.records): 4 M keys are 68 MB,
# more than one 64 MiB record, so an inventory goes out in as many messages as it needs.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024 - (8 + 2 + 32)      # record cap less seq, channel, MAC
_HEADER = struct.Struct(">4sBH")  # magic, version, link id length
_LAST = struct.Struct(">B")       # 1 on the inventory's last message
_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">16sB")
_STATE_CODES = {KeyState.PENDING: 1, KeyState.AVAILABLE: 2, KeyState.RESERVED: 3, KeyState.DELIVERED: 4,
                KeyState.EXPIRED: 5}
_CODE_STATES = {code: state for state, code in _STATE_CODES.items()}


TOMBSTONE_GRACE_S = 3600.0    # tombstones are kept this long past their key's expiry


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
    for key_id, mine in local.items():       # one pass, no sort of the whole inventory: O(N)
        if not mine.holds_material:
            continue
        theirs = remote.get(key_id)
        if theirs is None:
            plan.discard.append(key_id)
        elif theirs is KeyState.EXPIRED:
            plan.expire.append(key_id)
        elif mine is KeyState.PENDING:
            plan.promote.append(key_id)
    for changes in (plan.promote, plan.discard, plan.expire):
        changes.sort()                          # only what changes, in a stable order
    return plan


def encode_inventory(link_id: str, inventory: Mapping[str, KeyState],
                     max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[bytes]:
    """The inventory as messages of at most `max_message_bytes` each (the peer channel's record cap):
    header, last-message flag, count, then (16-byte UUID, state code) per key. At least one message."""
    link = link_id.encode()
    if len(link) > 0xFFFF:
        raise ResyncMessageError("link id too long")
    if len(inventory) > MAX_KEYS:
        raise ResyncMessageError(f"inventory of {len(inventory)} keys exceeds {MAX_KEYS}")
    fixed_bytes = _HEADER.size + len(link) + _LAST.size + _COUNT.size
    per_message = (max_message_bytes - fixed_bytes) // _ENTRY.size
    if per_message < 1:
        raise ResyncMessageError(f"inventory messages of {max_message_bytes} bytes cannot hold one key")
    entries = [_ENTRY.pack(uuid.UUID(key_id).bytes, _STATE_CODES[state]) for key_id, state in inventory.items()]
    messages = []
    for first in range(0, max(len(entries), 1), per_message):
        chunk = entries[first:first + per_message]
        last = first + per_message >= len(entries)
        messages.append(b"".join([_HEADER.pack(MAGIC, VERSION, len(link)), link, _LAST.pack(last),
                                  _COUNT.pack(len(chunk)), *chunk]))
    return messages


def decode_inventory(messages: Iterable[bytes], expected_link_id: str) -> dict[str, KeyState]:
    """A whole inventory from its messages (tests and tools; the engine feeds an InventoryAssembler)."""
    assembler = InventoryAssembler(expected_link_id)
    for message in messages:
        assembler.add(message)
    if not assembler.complete:
        raise ResyncMessageError("inventory ends without its last message")
    return assembler.inventory


class InventoryAssembler:
    """Collects a peer's inventory message by message, checking each; `add` returns True at the last."""

    def __init__(self, expected_link_id: str) -> None:
        self.expected_link_id = expected_link_id
        self.inventory: dict[str, KeyState] = {}
        self.complete = False

    def add(self, message: bytes) -> bool:
        if self.complete:
            raise ResyncMessageError("inventory message after the last one")
        entries, last = _decode_message(message, self.expected_link_id, MAX_KEYS - len(self.inventory))
        for key_id, state in entries:
            if key_id in self.inventory:
                raise ResyncMessageError(f"inventory lists key {key_id} twice")
            self.inventory[key_id] = state
        self.complete = last
        return last


def _decode_message(message: bytes, expected_link_id: str, room: int) -> tuple[list[tuple[str, KeyState]], bool]:
    """Parse and check one inventory message for `expected_link_id` holding at most `room` keys."""
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
    if len(link) != link_len or len(message) < offset + _LAST.size + _COUNT.size:
        raise ResyncMessageError("inventory message truncated")
    try:
        link_id = link.decode()
    except UnicodeDecodeError:
        raise ResyncMessageError("inventory link id is not UTF-8") from None
    if link_id != expected_link_id:
        raise ResyncMessageError(f"inventory is for link {link_id!r:.60}, expected {expected_link_id!r}")
    (last,) = _LAST.unpack_from(message, offset)
    offset += _LAST.size
    if last not in (0, 1):
        raise ResyncMessageError(f"inventory last-message flag {last}")
    (count,) = _COUNT.unpack_from(message, offset)
    offset += _COUNT.size
    if count == 0 and not last:
        raise ResyncMessageError("empty inventory message before the last one")
    if count > room:
        raise ResyncMessageError(f"inventory claims {count} more keys, more than {MAX_KEYS} in all")
    if len(message) != offset + count * _ENTRY.size:
        raise ResyncMessageError(f"inventory message length {len(message)} does not match {count} entries")
    entries = []
    for raw_id, code in _ENTRY.iter_unpack(message[offset:]):
        state = _CODE_STATES.get(code)
        if state is None:
            raise ResyncMessageError(f"inventory has unknown state code {code}")
        entries.append((str(uuid.UUID(bytes=raw_id)), state))
    return entries, bool(last)
