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

Only the frames that may need a change are listed key by key. Both ends first exchange one summary per
frame (FrameSummary: keys, pending, holding material, expired, lowest and highest key id; one aggregate
query in the store) and `frames_to_list(local, remote)`, a symmetric rule so both ends pick the same
frames, keeps those where the table above could act: a frame holding material at one end that is absent
at the other, differs in its key set, is pending at either end, or is expired at one end while holding
material at the other. A frame's key ids are the same at both ends (both derive them from the frame) and
a store only ever removes keys of a frame, so equal counts and equal lowest and highest ids mean equal key
sets. After a crash or a partition that is a few frames, so a restart costs one aggregate query and a few
hundred bytes per thousand keys instead of 17 bytes and a Python object for every key.

Most restarts list not even every frame. Each end keeps, per link, a resynchronisation point: its store's
random id and a generation counted up by every resynchronisation it applies, the peer's id and generation
as of that resynchronisation, and the frames that changed since (ResyncPoint). A frame changes between
resynchronisations only by being stored pending (the pipeline then commits it at both ends, and one still
pending is found by its state) or by losing keys that held material (a trigger in the store notes the frame
in `resync_dirty`); deliveries and expiries need nothing, as both ends erase a key at the same agreed expiry.
The two ends first exchange their points (the hello): when each remembers the other exactly as it is now,
only the frames changed at either end are summarised (`resync_scope`); when not (a first session, a store
created afresh or restored from a copy, a resynchronisation applied at one end only), every frame is. The
point moves on in the transaction that applies the plan, so a crash leaves the old one and the next
session summarises every frame. An unchanged store thus costs a hello of a few dozen bytes at any size.

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
VERSION = 3                   # 2: an inventory spans messages that each fit one peer record; 3: frame summaries
SUMMARY_MAGIC = b"QKRF"
HELLO_MAGIC = b"QKRH"
STORE_ID_BYTES = 16
MAX_KEYS = 4_000_000          # an inventory above this (in all its messages) is refused before it is parsed
# The peer channel's default record cap less the record overhead (qkdd.peer.records): 4 M keys are 68 MB,
# more than one 64 MiB record, so an inventory goes out in as many messages as it needs.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024 - (8 + 2 + 32)      # record cap less seq, channel, MAC
_HEADER = struct.Struct(">4sBH")  # magic, version, link id length
_LAST = struct.Struct(">B")       # 1 on the inventory's last message
_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">16sB")
_SUMMARY_ENTRY = struct.Struct(">qIIII16s16s")     # frame id, keys, pending, holding, expired, lowest, highest id
_HELLO_POINT = struct.Struct(">16sQ16sQ")           # store id, generation, the peer's store id and generation then
_FRAME_ID = struct.Struct(">q")
_STATE_CODES = {KeyState.PENDING: 1, KeyState.AVAILABLE: 2, KeyState.RESERVED: 3, KeyState.DELIVERED: 4,
                KeyState.EXPIRED: 5}
_CODE_STATES = {code: state for state, code in _STATE_CODES.items()}


TOMBSTONE_GRACE_S = 3600.0    # tombstones are kept this long past their key's expiry


class ResyncMessageError(KeyStoreError):
    """A peer's inventory message is malformed."""


@dataclass(frozen=True)
class ResyncPoint:
    """One end of a link as of its last resynchronisation (theory of operation): this store's id and
    generation, the peer's as remembered (zeros before the first), and the frames changed since."""
    store_id: bytes
    generation: int
    peer_store_id: bytes
    peer_generation: int
    changed_frames: frozenset[int] = frozenset()


def resync_scope(mine: ResyncPoint, theirs: ResyncPoint) -> list[int] | None:
    """The frames to summarise: those changed at either end when each end remembers the other as it is
    now, else None (every frame). Symmetric in its arguments, so both ends choose the same scope."""
    if ((theirs.peer_store_id, theirs.peer_generation) != (mine.store_id, mine.generation)
            or (mine.peer_store_id, mine.peer_generation) != (theirs.store_id, theirs.generation)):
        return None
    return sorted(mine.changed_frames | theirs.changed_frames)


@dataclass(frozen=True)
class FrameSummary:
    """One frame's keys at one end, as the first step of a resynchronisation compares them."""
    keys: int
    pending: int
    holding: int          # pending, available or reserved: the keys a plan can change
    expired: int
    lowest_id: str
    highest_id: str


def frames_to_list(local: Mapping[int, FrameSummary], remote: Mapping[int, FrameSummary]) -> list[int]:
    """The frames whose keys both ends list one by one (theory of operation above); symmetric in its
    arguments, so both ends choose the same frames."""
    return sorted(frame_id for frame_id in local.keys() | remote.keys()
                  if _may_change(local.get(frame_id), remote.get(frame_id)))


def _may_change(mine: FrameSummary | None, theirs: FrameSummary | None) -> bool:
    if mine is None or theirs is None:                       # absent at one end: discarded where it is held
        return (mine or theirs).holding > 0
    if mine.holding == 0 and theirs.holding == 0:            # tombstones only: the plan never touches them
        return False
    return ((mine.keys, mine.lowest_id, mine.highest_id) != (theirs.keys, theirs.lowest_id, theirs.highest_id)
            or mine.pending > 0 or theirs.pending > 0
            or (mine.holding > 0 and theirs.expired > 0) or (theirs.holding > 0 and mine.expired > 0))


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
    if len(inventory) > MAX_KEYS:
        raise ResyncMessageError(f"inventory of {len(inventory)} keys exceeds {MAX_KEYS}")
    entries = [_ENTRY.pack(uuid.UUID(key_id).bytes, _STATE_CODES[state]) for key_id, state in inventory.items()]
    return _messages(MAGIC, link_id, entries, _ENTRY.size, max_message_bytes, "inventory", "key")


def encode_summaries(link_id: str, summaries: Mapping[int, FrameSummary],
                     max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[bytes]:
    """The frame summaries as messages of at most `max_message_bytes` each, framed as an inventory is
    (header with SUMMARY_MAGIC, last-message flag, count), one fixed-size entry per frame."""
    if len(summaries) > MAX_KEYS:
        raise ResyncMessageError(f"summary of {len(summaries)} frames exceeds {MAX_KEYS}")
    entries = [_SUMMARY_ENTRY.pack(frame_id, f.keys, f.pending, f.holding, f.expired,
                                   uuid.UUID(f.lowest_id).bytes, uuid.UUID(f.highest_id).bytes)
               for frame_id, f in summaries.items()]
    return _messages(SUMMARY_MAGIC, link_id, entries, _SUMMARY_ENTRY.size, max_message_bytes, "summary", "frame")


def encode_hello(link_id: str, point: ResyncPoint,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[bytes]:
    """The resynchronisation point as messages framed as an inventory is, each opening with the point
    (store ids and generations), then one frame id per entry for the frames changed."""
    if len(point.store_id) != STORE_ID_BYTES or len(point.peer_store_id) != STORE_ID_BYTES:
        raise ResyncMessageError(f"store ids are {STORE_ID_BYTES} bytes")
    if len(point.changed_frames) > MAX_KEYS:
        raise ResyncMessageError(f"{len(point.changed_frames)} changed frames exceed {MAX_KEYS}")
    preamble = _HELLO_POINT.pack(point.store_id, point.generation, point.peer_store_id, point.peer_generation)
    entries = [_FRAME_ID.pack(frame_id) for frame_id in sorted(point.changed_frames)]
    return _messages(HELLO_MAGIC, link_id, entries, _FRAME_ID.size, max_message_bytes, "hello", "frame",
                     preamble=preamble)


def _messages(magic: bytes, link_id: str, entries: list[bytes], entry_bytes: int, max_message_bytes: int,
              what: str, unit: str, *, preamble: bytes = b"") -> list[bytes]:
    link = link_id.encode()
    if len(link) > 0xFFFF:
        raise ResyncMessageError("link id too long")
    fixed_bytes = _HEADER.size + len(link) + len(preamble) + _LAST.size + _COUNT.size
    per_message = (max_message_bytes - fixed_bytes) // entry_bytes
    if per_message < 1:
        raise ResyncMessageError(f"{what} messages of {max_message_bytes} bytes cannot hold one {unit}")
    messages = []
    for first in range(0, max(len(entries), 1), per_message):
        chunk = entries[first:first + per_message]
        last = first + per_message >= len(entries)
        messages.append(b"".join([_HEADER.pack(magic, VERSION, len(link)), link, preamble, _LAST.pack(last),
                                  _COUNT.pack(len(chunk)), *chunk]))
    return messages


def decode_inventory(messages: Iterable[bytes], expected_link_id: str) -> dict[str, KeyState]:
    """A whole inventory from its messages (tests and tools; the engine feeds an InventoryAssembler)."""
    return _assemble(InventoryAssembler(expected_link_id), messages).inventory


def decode_summaries(messages: Iterable[bytes], expected_link_id: str) -> dict[int, FrameSummary]:
    """Whole frame summaries from their messages (tests and tools; the engine feeds a SummaryAssembler)."""
    return _assemble(SummaryAssembler(expected_link_id), messages).summaries


def decode_hello(messages: Iterable[bytes], expected_link_id: str) -> ResyncPoint:
    """A whole resynchronisation point from its messages (tests and tools; the engine feeds a HelloAssembler)."""
    return _assemble(HelloAssembler(expected_link_id), messages).point


def _assemble(assembler, messages: Iterable[bytes]):
    for message in messages:
        assembler.add(message)
    if not assembler.complete:
        raise ResyncMessageError(f"{assembler.WHAT} ends without its last message")
    return assembler


class _Assembler:
    """Collects a peer's messages of one kind one by one, checking each; `add` returns True at the last.
    A subclass names its MAGIC, its entries' struct and unit, how many it holds, and takes each body."""
    WHAT, MAGIC, ENTRY, UNIT, PREAMBLE_BYTES = "", b"", _ENTRY, "", 0

    def __init__(self, expected_link_id: str) -> None:
        self.expected_link_id = expected_link_id
        self.complete = False

    def add(self, message: bytes) -> bool:
        if self.complete:
            raise ResyncMessageError(f"{self.WHAT} message after the last one")
        body, last = _unframe(message, self.MAGIC, self.expected_link_id, self.ENTRY.size, MAX_KEYS - self._held(),
                              self.WHAT, self.UNIT, preamble_bytes=self.PREAMBLE_BYTES)
        self._take(body)
        self.complete = last
        return last

    def _held(self) -> int:
        raise NotImplementedError

    def _take(self, body: bytes) -> None:
        raise NotImplementedError


class InventoryAssembler(_Assembler):
    """A peer's inventory: key id -> state."""
    WHAT, MAGIC, ENTRY, UNIT = "inventory", MAGIC, _ENTRY, "key"

    def __init__(self, expected_link_id: str) -> None:
        super().__init__(expected_link_id)
        self.inventory: dict[str, KeyState] = {}

    def _held(self) -> int:
        return len(self.inventory)

    def _take(self, body: bytes) -> None:
        for raw_id, code in _ENTRY.iter_unpack(body):
            state = _CODE_STATES.get(code)
            if state is None:
                raise ResyncMessageError(f"inventory has unknown state code {code}")
            key_id = str(uuid.UUID(bytes=raw_id))
            if key_id in self.inventory:
                raise ResyncMessageError(f"inventory lists key {key_id} twice")
            self.inventory[key_id] = state


class SummaryAssembler(_Assembler):
    """A peer's frame summaries: frame id -> FrameSummary."""
    WHAT, MAGIC, ENTRY, UNIT = "summary", SUMMARY_MAGIC, _SUMMARY_ENTRY, "frame"

    def __init__(self, expected_link_id: str) -> None:
        super().__init__(expected_link_id)
        self.summaries: dict[int, FrameSummary] = {}

    def _held(self) -> int:
        return len(self.summaries)

    def _take(self, body: bytes) -> None:
        for frame_id, keys, pending, holding, expired, lowest, highest in _SUMMARY_ENTRY.iter_unpack(body):
            if frame_id in self.summaries:
                raise ResyncMessageError(f"summary lists frame {frame_id} twice")
            if keys == 0 or pending > holding or holding + expired > keys or lowest > highest:
                raise ResyncMessageError(f"summary of frame {frame_id} is inconsistent")
            self.summaries[frame_id] = FrameSummary(keys, pending, holding, expired, str(uuid.UUID(bytes=lowest)),
                                                    str(uuid.UUID(bytes=highest)))


class HelloAssembler(_Assembler):
    """A peer's resynchronisation point (every message opens with the same ids and generations)."""
    WHAT, MAGIC, ENTRY, UNIT, PREAMBLE_BYTES = "hello", HELLO_MAGIC, _FRAME_ID, "frame", _HELLO_POINT.size

    def __init__(self, expected_link_id: str) -> None:
        super().__init__(expected_link_id)
        self._preamble: bytes | None = None
        self._frames: set[int] = set()

    @property
    def point(self) -> ResyncPoint:
        store_id, generation, peer_store_id, peer_generation = _HELLO_POINT.unpack(self._preamble)
        return ResyncPoint(store_id, generation, peer_store_id, peer_generation, frozenset(self._frames))

    def _held(self) -> int:
        return len(self._frames)

    def _take(self, body: bytes) -> None:
        preamble, body = body[:_HELLO_POINT.size], body[_HELLO_POINT.size:]
        if self._preamble is not None and preamble != self._preamble:
            raise ResyncMessageError("hello messages disagree on the resynchronisation point")
        self._preamble = preamble
        for (frame_id,) in _FRAME_ID.iter_unpack(body):
            if frame_id in self._frames:
                raise ResyncMessageError(f"hello lists frame {frame_id} twice")
            self._frames.add(frame_id)


def _unframe(message: bytes, magic: bytes, expected_link_id: str, entry_bytes: int, room: int,
             what: str, unit: str, *, preamble_bytes: int = 0) -> tuple[bytes, bool]:
    """Check one message's framing for `expected_link_id`, holding at most `room` entries: its preamble's
    and entries' bytes and whether it is the last message."""
    if len(message) < _HEADER.size:
        raise ResyncMessageError(f"{what} message truncated in its header")
    got_magic, version, link_len = _HEADER.unpack_from(message)
    if got_magic != magic:
        raise ResyncMessageError(f"not an {what} message" if what == "inventory" else f"not a {what} message")
    if version != VERSION:
        raise ResyncMessageError(f"{what} message version {version}, expected {VERSION}")
    offset = _HEADER.size
    link = message[offset:offset + link_len]
    offset += link_len
    if len(link) != link_len or len(message) < offset + preamble_bytes + _LAST.size + _COUNT.size:
        raise ResyncMessageError(f"{what} message truncated")
    try:
        link_id = link.decode()
    except UnicodeDecodeError:
        raise ResyncMessageError(f"{what} link id is not UTF-8") from None
    if link_id != expected_link_id:
        raise ResyncMessageError(f"{what} is for link {link_id!r:.60}, expected {expected_link_id!r}")
    preamble = message[offset:offset + preamble_bytes]
    offset += preamble_bytes
    (last,) = _LAST.unpack_from(message, offset)
    offset += _LAST.size
    if last not in (0, 1):
        raise ResyncMessageError(f"{what} last-message flag {last}")
    (count,) = _COUNT.unpack_from(message, offset)
    offset += _COUNT.size
    if count == 0 and not last:
        raise ResyncMessageError(f"empty {what} message before the last one")
    if count > room:
        raise ResyncMessageError(f"{what} claims {count} more {unit}s, more than {MAX_KEYS} in all")
    if len(message) != offset + count * entry_bytes:
        raise ResyncMessageError(f"{what} message length {len(message)} does not match {count} entries")
    return preamble + message[offset:], bool(last)
