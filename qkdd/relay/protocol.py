"""Hop-by-hop key relay (sans-IO): a key made on the source's first link travels to a non-adjacent node,
one-time-padded on every further link, with an end-to-end confirmation before either end serves it.

Theory of operation (HIP-0071 "Trusted Node Relay Architecture")
---------------------------------------------------------------
Route S = N0, N1, ..., Nk = D over links L0..L(k-1). The key is K = K0, the first `bits` of stored keys
the source takes from its own share of L0. Each hop i carries a FORWARD naming the stored keys Ki it used
on Li (so the receiver takes the same ones by id from the sender's share) and the pad C_i = K xor K_i
(empty on L0, where K is K0 itself). Relay Ni takes K_(i-1) by id, recovers X = C_(i-1) xor K_(i-1), takes
its own K_i from Li, sends C_i = X xor K_i, and erases K_(i-1), K_i and X: each relay consumes one key on
each side and learns K (the trust it is given), every pad is a one-time pad under a QKD key (Shannon 1949),
so an eavesdropper on the classical channels learns nothing of K. The key ids travel with the pad and each
sender erases its keys before sending, so no key on a link is ever used twice.

Multi-path: the source splits one key over `shares` node-disjoint routes. Each route carries its own
request (its own relay id, the same `group` id and share count); the destination XORs the confirmed
shares into the key it serves under the group id once all arrived, so a relay that learns one share
learns nothing of the key (each share is an independent uniform string, the XOR a one-time pad).

End-to-end confirmation: D answers CONFIRM with t_D = HMAC-SHA256(K, "dst" | relay id | S | D | bits) back
along the route; S checks it, answers COMMIT with t_S = HMAC(K, "src" | ...) forwards; D checks t_S, makes
the key servable, and sends DONE back; S serves the key on DONE. So neither end serves a key the other lacks
(HMAC as a PRF: a forged tag succeeds with probability about 2^-256 plus HMAC's PRF advantage; the tags are
computational, the key's secrecy against the channel is not).

A link that ends, a relay's ABORT or a deadline aborts the request; ABORT is passed on towards every node of
the route still reachable, and every node forgets the request (keys it took stay erased: accounted, never
reused).

States per relay id at one node, and every legal transition (anything else is refused and reported):

    role         state        event                  next         sends
    source       (none)       start                  FORWARDED    FORWARD down
    source       FORWARDED    CONFIRM (tag ok)       COMMITTED    COMMIT down
    source       COMMITTED    DONE                   DONE         -           (serve the key)
    relay        (none)       FORWARD -> forward()   FORWARDED    FORWARD down
    relay        FORWARDED    CONFIRM                CONFIRMED    CONFIRM up
    relay        CONFIRMED    COMMIT                 COMMITTED    COMMIT down
    relay        COMMITTED    DONE                   DONE         DONE up
    destination  (none)       FORWARD -> arrive()    CONFIRMING   CONFIRM up
    destination  CONFIRMING   COMMIT (tag ok)        DONE         DONE up     (the key is servable)
    (any)        (not DONE)   ABORT / link down /    ABORTED      ABORT to the other side(s)
                              bad tag / deadline

Settlement after a failure (the source's journal, journal.py): a source whose request did not end in DONE
(it failed, or the source was killed and restarted) never served the key, so the destination must not keep
it. The source sends ROLLBACK over any current route to the destination, source-routed (the message names
the route and its hop; each node checks that it came on the link the route names, from the node before it,
and passes it on without state), until the destination answers ROLLED_BACK the same way back. The
destination aborts the request if it still runs, drops a multi-path key's shares, and erases the key it
stored if nobody fetched it: it answers "erased", "absent" (never stored, or already erased) or
"delivered" (fetched before the rollback: only a consumer that guessed the key id can have done that).

Settlement messages are authenticated end to end, not only hop by hop: their sender (path[0]: the source
for ROLLBACK, the destination for ROLLED_BACK) signs them with its node identity (ML-DSA-65, FIPS 204,
context "qkdd relay settlement v1", the key its link-state announcements carry), over the kind, relay id,
group, route, outcome and the signing time (wall clock, milliseconds). The relays pass them on unchanged;
the addressee verifies the signature under the sender's key from its link-state database and refuses one
that does not verify (a relay forging a rollback in another node's name, or altering one), whose sender
it does not know, signed more than MAX_SETTLE_AGE_S ago or MAX_SETTLE_AHEAD_S ahead, or not signed later
than the last one it accepted for that relay id (a replay: the sender signs every resend anew). So a
compromised relay cannot erase a key the source served by forging its rollback, nor make a source forget
an unsettled request by forging the destination's answer; it can still drop them (the source resends).

    role         event                                   sends
    source       row left in the journal, no request     ROLLBACK along a current route (every second)
    (any node)   ROLLBACK / ROLLED_BACK not for it       the same, on the route's next link
    destination  ROLLBACK                                erase; ROLLED_BACK back along the reversed route
    source       ROLLED_BACK                             -           (the journal row is deleted)

Link keys of a hop whose FORWARD was lost (its sender or receiver died, journal.py): the sender asks the
next node with ERASE_KEYS (on that link, naming the stored key ids) to take and erase those of the
sender's share it still holds, as the FORWARD would have; KEYS_ERASED answers. Every node emits
`Confirmed` when a request's CONFIRM reaches it from downstream (the next node took its keys).

Wire layout (big-endian; text is UTF-8 with a u16 length). A record on the relay channel holds one or
more messages, each behind its u32 length (`pack`): whatever queued while the previous record was on its
way, so a busy link carries one record per burst.

    message: version u8 (=1) | type u8 | relay_id 16 bytes
    FORWARD: source text | destination text | bits u32 | hop u8 | node count u8, node texts |
             link texts (node count - 1) | key count u16, stored key_id 16 bytes each | pad blob |
             group 16 bytes (the relay id itself when shares = 1) | shares u8 (1..MAX_SHARES) |
             note blob (what the source tells the destination's consumer: an ETSI 014 reservation)
    CONFIRM, COMMIT: tag 32 bytes
    DONE:    (empty)
    ABORT:   reason text (at most 200 bytes)
    ROLLBACK, ROLLED_BACK: group 16 bytes | hop u8 | node count u8, node texts | link texts (node count - 1) |
             outcome u8 (ROLLED_BACK: 1 erased, 2 absent, 3 delivered; ROLLBACK: 0) | signed_at u64 (Unix ms) |
             signature blob (path[0]'s ML-DSA-65 signature of settlement_signed_part: every field but hop)
    ERASE_KEYS: key count u16, stored key_id 16 bytes each
    KEYS_ERASED: (empty)
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from qkdd.relay.linkstate import MAX_SIGNATURE_BYTES, valid_node_id
from qkdd.relay.wire import Reader, RelayWireError, Writer

WIRE_VERSION = 2          # 2: ROLLBACK and ROLLED_BACK carry their sender's signing time and ML-DSA-65 signature
MAX_BITS = 1 << 16
MAX_NODES_ON_ROUTE = 33          # 32 hops, the Beijing-Shanghai backbone's relays
MAX_KEY_IDS = 4096
MAX_REASON_BYTES = 200
TAG_BYTES = 32
REMEMBERED_IDS = 1 << 16         # relay ids seen recently: a replayed FORWARD is refused
MAX_NOTE_BYTES = 16 << 10         # what the source tells the destination's consumer (ETSI 014 key ids, SAEs)
MAX_SHARES = 8                   # multi-path: node-disjoint routes one key is split over
MAX_MESSAGE_BYTES = 128 << 10    # a FORWARD of MAX_BITS with 4096 key ids and 33 nodes fits
MAX_RECORD_BYTES = 256 << 10     # messages packed into one record of the relay channel
SETTLE_SIGNATURE_CONTEXT = b"qkdd relay settlement v1"
MAX_SETTLE_AGE_S = 600.0         # a settlement signed longer ago is refused (the sender re-signs every resend)
MAX_SETTLE_AHEAD_S = 60.0        # the sender's clock this far ahead of ours is accepted


class MessageType(enum.IntEnum):
    FORWARD = 1
    CONFIRM = 2
    COMMIT = 3
    DONE = 4
    ABORT = 5
    ROLLBACK = 6
    ROLLED_BACK = 7
    ERASE_KEYS = 8
    KEYS_ERASED = 9


ERASED, ABSENT, DELIVERED = 1, 2, 3
OUTCOMES = {ERASED: "erased", ABSENT: "absent", DELIVERED: "delivered"}

class State(enum.Enum):
    FORWARDED = "forwarded"
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    COMMITTED = "committed"
    DONE = "done"
    ABORTED = "aborted"


SOURCE, RELAY, DESTINATION = "source", "relay", "destination"

TRANSITIONS: dict[tuple[str, State | None, str], State] = {
    (SOURCE, None, "start"): State.FORWARDED,
    (SOURCE, State.FORWARDED, "CONFIRM"): State.COMMITTED,
    (SOURCE, State.COMMITTED, "DONE"): State.DONE,
    (RELAY, None, "forward"): State.FORWARDED,
    (RELAY, State.FORWARDED, "CONFIRM"): State.CONFIRMED,
    (RELAY, State.CONFIRMED, "COMMIT"): State.COMMITTED,
    (RELAY, State.COMMITTED, "DONE"): State.DONE,
    (DESTINATION, None, "arrive"): State.CONFIRMING,
    (DESTINATION, State.CONFIRMING, "COMMIT"): State.DONE,
}


class RelayProtocolError(Exception):
    """A message that is malformed, or illegal for the request's state or the link it came on."""


@dataclass(frozen=True)
class Forward:
    relay_id: str
    source: str
    destination: str
    bits: int
    hop: int                         # index of the link this message travels on
    path: tuple[str, ...]
    links: tuple[str, ...]
    key_ids: tuple[str, ...]         # stored keys of the sender's share on links[hop]
    pad: bytes                       # K xor K_hop; empty on the first link
    group: str = ""                  # multi-path: the key id of the XOR of all shares ("" = relay_id)
    shares: int = 1                  # multi-path: routes whose shares make the key
    note: bytes = b""                # for the destination's consumer (an ETSI 014 reservation), not secret


@dataclass(frozen=True)
class Settle:
    """ROLLBACK (source to destination) or ROLLED_BACK (back), source-routed along `path`."""

    relay_id: str
    group: str
    hop: int                         # index of the link this message travels on
    path: tuple[str, ...]            # path[0] sent it, path[-1] is its addressee
    links: tuple[str, ...]
    outcome: int = 0
    signed_at_ms: int = 0            # when path[0] signed it (Unix milliseconds)
    signature: bytes = b""           # path[0]'s ML-DSA-65 signature of settlement_signed_part


@dataclass(frozen=True)
class Send:
    link_id: str
    payload: bytes


# -- events for the I/O side ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ForwardReceived:
    """A relay or destination must take the upstream keys by id (and a relay its downstream keys), then
    call `forward` or `arrive`."""

    forward: Forward
    via_link: str
    role: str


@dataclass(frozen=True)
class KeyReady:
    """Destination: the key (or one share of it, when `shares` > 1) is confirmed at both ends and may be
    served under `group` once all its shares are."""

    relay_id: str
    source: str
    key: bytes
    group: str = ""
    shares: int = 1
    note: bytes = b""


@dataclass(frozen=True)
class Delivered:
    """Source: the destination holds the key; serve it."""

    relay_id: str


@dataclass(frozen=True)
class Aborted:
    relay_id: str
    role: str
    reason: str


@dataclass(frozen=True)
class RollbackReceived:
    """Destination: erase the key stored under `group` unless fetched, then answer with `rolled_back`."""

    settle: Settle


@dataclass(frozen=True)
class RolledBack:
    """Source: the destination settled the request (`outcome`); its journal row can go."""

    relay_id: str
    outcome: int


@dataclass(frozen=True)
class Confirmed:
    """The next node downstream (on `link_id`) took this node's keys of the request (its CONFIRM came back)."""

    relay_id: str
    link_id: str


@dataclass(frozen=True)
class EraseKeys:
    """The other end of `link_id` asks to erase its share's `key_ids` of a hop that never arrived."""

    relay_id: str
    link_id: str
    key_ids: tuple[str, ...]


@dataclass(frozen=True)
class KeysErased:
    relay_id: str
    link_id: str


@dataclass(frozen=True)
class Refused:
    """A message this node refused (malformed, replayed, wrong link or state); nothing changed."""

    reason: str


@dataclass
class _Request:
    role: str
    state: State
    source: str
    destination: str
    bits: int
    up_link: str | None
    down_link: str | None
    deadline_s: float
    key: bytearray | None = None     # the ends' copy of K until served or aborted
    hops: int = 0
    group: str = ""
    shares: int = 1
    note: bytes = b""


# -- encoding ---------------------------------------------------------------------------------------------

def _head(kind: MessageType, relay_id: str) -> Writer:
    return Writer().u8(WIRE_VERSION).u8(kind).raw(uuid.UUID(relay_id).bytes)


def encode_forward(f: Forward) -> bytes:
    w = _head(MessageType.FORWARD, f.relay_id).text(f.source).text(f.destination).u32(f.bits).u8(f.hop)
    w.u8(len(f.path))
    for node in f.path:
        w.text(node)
    for link in f.links:
        w.text(link)
    w.u16(len(f.key_ids))
    for key_id in f.key_ids:
        w.raw(uuid.UUID(key_id).bytes)
    return w.blob(f.pad).raw(uuid.UUID(f.group or f.relay_id).bytes).u8(f.shares).blob(f.note).bytes()


def encode_tag(kind: MessageType, relay_id: str, tag: bytes) -> bytes:
    return _head(kind, relay_id).raw(tag).bytes()


def encode_done(relay_id: str) -> bytes:
    return _head(MessageType.DONE, relay_id).bytes()


def encode_erase_keys(relay_id: str, key_ids: tuple[str, ...]) -> bytes:
    w = _head(MessageType.ERASE_KEYS, relay_id).u16(len(key_ids))
    for key_id in key_ids:
        w.raw(uuid.UUID(key_id).bytes)
    return w.bytes()


def encode_keys_erased(relay_id: str) -> bytes:
    return _head(MessageType.KEYS_ERASED, relay_id).bytes()


def encode_abort(relay_id: str, reason: str) -> bytes:
    return _head(MessageType.ABORT, relay_id).blob(reason.encode()[:MAX_REASON_BYTES]).bytes()


def encode_settle(kind: MessageType, s: Settle) -> bytes:
    w = _head(kind, s.relay_id).raw(uuid.UUID(s.group).bytes).u8(s.hop).u8(len(s.path))
    for node in s.path:
        w.text(node)
    for link in s.links:
        w.text(link)
    return w.u8(s.outcome).u64(s.signed_at_ms).blob(s.signature).bytes()


def settlement_signed_part(kind: MessageType, s: Settle) -> bytes:
    """What path[0] signs of a settlement message: every field but the hop (which each relay advances)."""
    w = Writer().raw(b"QRSB").u8(WIRE_VERSION).u8(kind).raw(uuid.UUID(s.relay_id).bytes).raw(uuid.UUID(s.group).bytes)
    w.u8(len(s.path))
    for node in s.path:
        w.text(node)
    for link in s.links:
        w.text(link)
    return w.u8(s.outcome).u64(s.signed_at_ms).bytes()


def _read_route(r: Reader) -> tuple[tuple[str, ...], tuple[str, ...]]:
    count = r.u8("node count")
    if not 2 <= count <= MAX_NODES_ON_ROUTE:
        raise RelayWireError(f"a route of {count} nodes")
    path = tuple(r.text("node") for _ in range(count))
    links = tuple(r.text("link") for _ in range(count - 1))
    if not all(valid_node_id(n) for n in path + links) or len(set(path)) != len(path):
        raise RelayWireError("bad node or link id on the route")
    return path, links


def decode(payload: bytes) -> tuple[MessageType, str, object]:
    """(type, relay id, body): Forward, a tag, None, or the abort reason. RelayWireError when malformed."""
    r = Reader(payload)
    version = r.u8("version")
    if version != WIRE_VERSION:
        raise RelayWireError(f"relay message version {version}, this node reads {WIRE_VERSION}")
    try:
        kind = MessageType(r.u8("type"))
    except ValueError:
        raise RelayWireError("unknown relay message type") from None
    relay_id = str(uuid.UUID(bytes=r.raw(16, "relay id")))
    body: object = None
    if kind is MessageType.FORWARD:
        source, destination = r.text("source"), r.text("destination")
        bits, hop, count = r.u32("bits"), r.u8("hop"), r.u8("node count")
        if not 2 <= count <= MAX_NODES_ON_ROUTE:
            raise RelayWireError(f"a route of {count} nodes")
        path = tuple(r.text("node") for _ in range(count))
        links = tuple(r.text("link") for _ in range(count - 1))
        key_count = r.u16("key count")
        if not 1 <= key_count <= MAX_KEY_IDS:
            raise RelayWireError(f"{key_count} stored keys named")
        key_ids = tuple(str(uuid.UUID(bytes=r.raw(16, "key id"))) for _ in range(key_count))
        pad = r.blob("pad", MAX_BITS // 8)
        group = str(uuid.UUID(bytes=r.raw(16, "group")))
        shares = r.u8("shares")
        if not 1 <= shares <= MAX_SHARES or (shares == 1) != (group == relay_id):
            raise RelayWireError("shares and group do not agree")
        note = r.blob("note", MAX_NOTE_BYTES)
        if not all(valid_node_id(n) for n in path + links) or len(set(path)) != len(path):
            raise RelayWireError("bad node or link id on the route")
        if path[0] != source or path[-1] != destination or hop >= len(links):
            raise RelayWireError("route, ends and hop do not agree")
        if bits <= 0 or bits % 8 or bits > MAX_BITS or len(pad) not in (0, bits // 8) or (hop > 0) != bool(pad):
            raise RelayWireError("bits and pad do not agree")
        body = Forward(relay_id, source, destination, bits, hop, path, links, key_ids, pad, group, shares, note)
    elif kind in (MessageType.CONFIRM, MessageType.COMMIT):
        body = r.raw(TAG_BYTES, "tag")
    elif kind is MessageType.ABORT:
        body = r.blob("reason", MAX_REASON_BYTES).decode("utf-8", "replace")
    elif kind in (MessageType.ROLLBACK, MessageType.ROLLED_BACK):
        group = str(uuid.UUID(bytes=r.raw(16, "group")))
        hop = r.u8("hop")
        path, links = _read_route(r)
        outcome = r.u8("outcome")
        if hop >= len(links) or (outcome != 0 if kind is MessageType.ROLLBACK else outcome not in OUTCOMES):
            raise RelayWireError("hop or outcome out of range")
        signed_at_ms = r.u64("signing time")
        signature = r.blob("signature", MAX_SIGNATURE_BYTES)
        body = Settle(relay_id, group, hop, path, links, outcome, signed_at_ms, signature)
    elif kind is MessageType.ERASE_KEYS:
        key_count = r.u16("key count")
        if not 1 <= key_count <= MAX_KEY_IDS:
            raise RelayWireError(f"{key_count} stored keys named")
        body = tuple(str(uuid.UUID(bytes=r.raw(16, "key id"))) for _ in range(key_count))
    r.end()
    return kind, relay_id, body


def pack(messages: list[bytes]) -> list[bytes]:
    """Records of the relay channel: messages back to back, each with a u32 length, at most
    MAX_RECORD_BYTES a record (a message alone may fill one)."""
    records, current, size = [], [], 0
    for message in messages:
        if current and size + 4 + len(message) > MAX_RECORD_BYTES:
            records.append(b"".join(current))
            current, size = [], 0
        current.append(len(message).to_bytes(4, "big") + message)
        size += 4 + len(message)
    if current:
        records.append(b"".join(current))
    return records


def unpack(record: bytes) -> list[bytes]:
    """The messages of one record; RelayWireError when its lengths do not add up."""
    if len(record) > MAX_RECORD_BYTES + MAX_MESSAGE_BYTES:
        raise RelayWireError(f"record of {len(record)} bytes")
    messages, at = [], 0
    while at < len(record):
        if at + 4 > len(record):
            raise RelayWireError("truncated length")
        length = int.from_bytes(record[at:at + 4], "big")
        if length > MAX_MESSAGE_BYTES or at + 4 + length > len(record):
            raise RelayWireError("message length past the record")
        messages.append(record[at + 4:at + 4 + length])
        at += 4 + length
    if not messages:
        raise RelayWireError("empty record")
    return messages


def confirmation_tag(key: bytes, side: str, relay_id: str, source: str, destination: str, bits: int) -> bytes:
    """HMAC-SHA256 (RFC 2104) under the relayed key (or share), bound to the request; `side` is "src" or
    "dst"."""
    message = Writer().text(side).raw(uuid.UUID(relay_id).bytes).text(source).text(destination).u32(bits).bytes()
    return hmac.new(bytes(key), message, hashlib.sha256).digest()


def xor(a: bytes | bytearray, b: bytes | bytearray) -> bytearray:
    if len(a) != len(b):
        raise ValueError("xor of unequal lengths")
    return bytearray((int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big"))


def erase(buffer: bytearray | None) -> None:
    if buffer is not None:
        buffer[:] = bytes(len(buffer))


# -- the state machine --------------------------------------------------------------------------------

@dataclass
class RelayEndpoint:
    """Every relay request this node takes part in, whatever its role. `neighbor_of(link_id)` names the
    node at the other end of a link (from the link-state database), None when not known."""

    node_id: str
    neighbor_of: object
    deadline_s: float = 15.0
    requests: dict[str, _Request] = field(default_factory=dict)
    seen: dict[str, None] = field(default_factory=dict)     # relay ids taken part in (bounded, oldest out)
    # settlement messages, signed end to end: this node's signature of a body, and another node's raw
    # ML-DSA-65 public key from the link-state database (None: not known); wall clock in seconds
    sign: Callable[[bytes], bytes] | None = None
    identity_of: Callable[[str], bytes | None] = lambda node: None
    wall_clock: Callable[[], float] = time.time
    settled_at: dict[tuple[int, str], int] = field(default_factory=dict)   # (kind, relay id) -> last signed_at

    def _remember(self, relay_id: str) -> None:
        self.seen[relay_id] = None
        while len(self.seen) > REMEMBERED_IDS:
            self.seen.pop(next(iter(self.seen)))

    def _step(self, request: _Request | None, role: str, event: str) -> State:
        state = request.state if request is not None else None
        nxt = TRANSITIONS.get((role, state, event))
        if nxt is None:
            raise RelayProtocolError(f"{event} is illegal for a {role} in state {state.value if state else 'none'}")
        return nxt

    # -- source -----------------------------------------------------------------------------------------
    def start(self, relay_id: str, path: tuple[str, ...], links: tuple[str, ...], bits: int,
              key_ids: tuple[str, ...], first_keys: bytes, now_s: float, *, group: str = "",
              shares: int = 1, note: bytes = b"") -> tuple[bytearray, list[Send]]:
        """Begin a relay: `first_keys` (at least bits/8 bytes) from stored keys `key_ids` of this node's share
        of links[0]. Returns K and the FORWARD to send."""
        if path[0] != self.node_id or relay_id in self.seen:
            raise RelayProtocolError("the route must start here, under a fresh relay id")
        self._step(None, SOURCE, "start")
        key = bytearray(first_keys[:bits // 8])
        self.requests[relay_id] = _Request(SOURCE, State.FORWARDED, path[0], path[-1], bits, None, links[0],
                                           now_s + self.deadline_s, key=bytearray(key), hops=len(links))
        self._remember(relay_id)
        message = encode_forward(Forward(relay_id, path[0], path[-1], bits, 0, path, links, key_ids, b"",
                                         group or relay_id, shares, note))
        return key, [Send(links[0], message)]

    # -- receiving ---------------------------------------------------------------------------------------
    def receive(self, via_link: str, payload: bytes, now_s: float) -> list:
        """Events and Sends for one message from the neighbour on `via_link`."""
        try:
            kind, relay_id, body = decode(payload)
        except RelayWireError as exc:
            return [Refused(f"malformed: {exc}")]
        request = self.requests.get(relay_id)
        if kind is MessageType.FORWARD:
            return self._on_forward(via_link, body, now_s)
        if kind in (MessageType.ROLLBACK, MessageType.ROLLED_BACK):
            return self._on_settle(via_link, kind, body)
        if kind is MessageType.ERASE_KEYS:
            return [EraseKeys(relay_id, via_link, body)]
        if kind is MessageType.KEYS_ERASED:
            return [KeysErased(relay_id, via_link)]
        if request is None:
            return [Refused(f"{kind.name} for no request here")]
        if kind is MessageType.ABORT:
            if via_link not in (request.up_link, request.down_link):
                return [Refused("ABORT on a link the request does not use")]
            return self._abort(relay_id, f"aborted by the route: {body}", came_from=via_link)
        expected = request.up_link if kind is MessageType.COMMIT else request.down_link
        if via_link != expected:
            return [Refused(f"{kind.name} on the wrong link")]
        try:
            nxt = self._step(request, request.role, kind.name)
        except RelayProtocolError as exc:
            return [Refused(str(exc))]
        if kind is MessageType.CONFIRM:
            if request.role == RELAY:
                request.state = nxt
                return [Confirmed(relay_id, request.down_link), Send(request.up_link, payload)]
            wanted = confirmation_tag(request.key, "dst", relay_id, request.source, request.destination, request.bits)
            if not hmac.compare_digest(wanted, body):
                return [Confirmed(relay_id, request.down_link)] + self._abort(
                    relay_id, "the destination's confirmation does not match: keys differ")
            request.state = nxt
            tag = confirmation_tag(request.key, "src", relay_id, request.source, request.destination, request.bits)
            return [Confirmed(relay_id, request.down_link),
                    Send(request.down_link, encode_tag(MessageType.COMMIT, relay_id, tag))]
        if kind is MessageType.COMMIT:
            if request.role == RELAY:
                request.state = nxt
                return [Send(request.down_link, payload)]
            wanted = confirmation_tag(request.key, "src", relay_id, request.source, request.destination, request.bits)
            if not hmac.compare_digest(wanted, body):
                return self._abort(relay_id, "the source's confirmation does not match: keys differ")
            ready = KeyReady(relay_id, request.source, bytes(request.key), request.group or relay_id, request.shares,
                             request.note)
            self._finish(relay_id)
            return [ready, Send(request.up_link, encode_done(relay_id))]
        # DONE
        if request.role == RELAY:
            self._finish(relay_id)
            return [Send(request.up_link, payload)]
        self._finish(relay_id)
        return [Delivered(relay_id)]

    def _on_forward(self, via_link: str, f: Forward, now_s: float) -> list:
        if f.relay_id in self.seen:
            return [Refused("FORWARD replayed (relay id seen before)")]
        if f.links[f.hop] != via_link or f.path[f.hop + 1] != self.node_id:
            return [Refused("FORWARD on a link or to a node its route does not name")]
        neighbor = self.neighbor_of(via_link)
        if neighbor is not None and neighbor != f.path[f.hop]:
            return [Refused("FORWARD from a node that is not the route's previous hop")]
        self._remember(f.relay_id)
        role = DESTINATION if f.hop + 1 == len(f.links) else RELAY
        return [ForwardReceived(f, via_link, role)]

    def _on_settle(self, via_link: str, kind: MessageType, s: Settle) -> list:
        if s.links[s.hop] != via_link or s.path[s.hop + 1] != self.node_id:
            return [Refused(f"{kind.name} on a link or to a node its route does not name")]
        neighbor = self.neighbor_of(via_link)
        if neighbor is not None and neighbor != s.path[s.hop]:
            return [Refused(f"{kind.name} from a node that is not the route's previous hop")]
        if s.hop + 1 < len(s.links):                     # not for us: on along the route, no state kept
            onward = Settle(s.relay_id, s.group, s.hop + 1, s.path, s.links, s.outcome, s.signed_at_ms,
                            s.signature)
            return [Send(s.links[s.hop + 1], encode_settle(kind, onward))]
        problem = self._unauthentic(kind, s)
        if problem:
            return [Refused(f"{kind.name} of relay {s.relay_id} from {s.path[0]}: {problem}")]
        if kind is MessageType.ROLLED_BACK:
            return [RolledBack(s.relay_id, s.outcome)]
        out: list = []
        request = self.requests.get(s.relay_id)
        if request is not None and request.role == DESTINATION and request.source == s.path[0]:
            out += self._abort(s.relay_id, "rolled back by the source")
        return out + [RollbackReceived(s)]

    def _unauthentic(self, kind: MessageType, s: Settle) -> str:
        """Why a settlement message addressed here is not accepted as its sender's ("" when it is): the
        signature of path[0], its age, and that it is newer than the last one accepted for the relay id."""
        public_key = self.identity_of(s.path[0])
        if public_key is None:
            return "its sender's identity is not known here (no link-state announcement of it)"
        try:
            mldsa.MLDSA65PublicKey.from_public_bytes(public_key).verify(
                s.signature, settlement_signed_part(kind, s), SETTLE_SIGNATURE_CONTEXT)
        except (InvalidSignature, ValueError):
            return "the signature does not verify under its sender's identity (forged or altered)"
        now_ms = int(self.wall_clock() * 1000)
        if not now_ms - MAX_SETTLE_AGE_S * 1000 <= s.signed_at_ms <= now_ms + MAX_SETTLE_AHEAD_S * 1000:
            return "signed outside the accepted age (replayed)"
        last = self.settled_at.get((kind, s.relay_id))
        if last is not None and s.signed_at_ms <= last:
            return "not signed after the last one accepted (replayed)"
        self.settled_at[(kind, s.relay_id)] = s.signed_at_ms
        while len(self.settled_at) > REMEMBERED_IDS:
            self.settled_at.pop(next(iter(self.settled_at)))
        return ""

    def _signed(self, kind: MessageType, s: Settle) -> bytes:
        if self.sign is None:
            raise RelayProtocolError("this node cannot sign settlement messages (no identity given)")
        s = Settle(s.relay_id, s.group, s.hop, s.path, s.links, s.outcome, int(self.wall_clock() * 1000))
        signature = self.sign(settlement_signed_part(kind, s))
        return encode_settle(kind, Settle(s.relay_id, s.group, s.hop, s.path, s.links, s.outcome, s.signed_at_ms,
                                          signature))

    def rollback(self, relay_id: str, group: str, path: tuple[str, ...], links: tuple[str, ...]) -> list[Send]:
        """Source: ROLLBACK of a request it did not serve, along a route from here to its destination, signed
        anew at each call."""
        if path[0] != self.node_id or len(links) != len(path) - 1 or not links:
            raise RelayProtocolError("a rollback's route must start here")
        return [Send(links[0], self._signed(MessageType.ROLLBACK, Settle(relay_id, group or relay_id, 0,
                                                                         tuple(path), tuple(links))))]

    def rolled_back(self, event: RollbackReceived, outcome: int) -> list[Send]:
        """Destination: ROLLED_BACK with `outcome`, back along the route the ROLLBACK came, signed."""
        s = event.settle
        back = Settle(s.relay_id, s.group, 0, tuple(reversed(s.path)), tuple(reversed(s.links)), outcome)
        return [Send(back.links[0], self._signed(MessageType.ROLLED_BACK, back))]

    def forward(self, f: Forward, via_link: str, upstream_keys: bytes, down_key_ids: tuple[str, ...],
                down_keys: bytes, now_s: float) -> list[Send]:
        """Relay: with K_(i-1) (taken by id) and K_i (taken from this node's share), send C_i down.
        The caller erases its copies; this erases its own."""
        self._step(self.requests.get(f.relay_id), RELAY, "forward")
        size = f.bits // 8
        if len(upstream_keys) < size or len(down_keys) < size:
            raise RelayProtocolError("not enough key for the request's bits")
        up = bytearray(upstream_keys[:size])
        down = bytearray(down_keys[:size])
        plain = xor(f.pad, up) if f.pad else bytearray(up)
        pad = xor(plain, down)
        erase(up), erase(down), erase(plain)
        down_link = f.links[f.hop + 1]
        self.requests[f.relay_id] = _Request(RELAY, State.FORWARDED, f.source, f.destination, f.bits, via_link,
                                             down_link, now_s + self.deadline_s, hops=len(f.links))
        message = encode_forward(Forward(f.relay_id, f.source, f.destination, f.bits, f.hop + 1, f.path, f.links,
                                         down_key_ids, bytes(pad), f.group, f.shares, f.note))
        erase(pad)
        return [Send(down_link, message)]

    def arrive(self, f: Forward, via_link: str, upstream_keys: bytes, now_s: float) -> list[Send]:
        """Destination: recover K with K_(k-1) and confirm it to the source."""
        self._step(self.requests.get(f.relay_id), DESTINATION, "arrive")
        size = f.bits // 8
        if len(upstream_keys) < size:
            raise RelayProtocolError("not enough key for the request's bits")
        up = bytearray(upstream_keys[:size])
        key = xor(f.pad, up) if f.pad else bytearray(up)
        erase(up)
        self.requests[f.relay_id] = _Request(DESTINATION, State.CONFIRMING, f.source, f.destination, f.bits,
                                             via_link, None, now_s + self.deadline_s, key=key, hops=len(f.links),
                                             group=f.group or f.relay_id, shares=f.shares, note=f.note)
        tag = confirmation_tag(key, "dst", f.relay_id, f.source, f.destination, f.bits)
        return [Send(via_link, encode_tag(MessageType.CONFIRM, f.relay_id, tag))]

    def refuse_forward(self, f: Forward, via_link: str, reason: str) -> list:
        """A relay or destination that cannot take the keys: ABORT back up."""
        return [Aborted(f.relay_id, RELAY, reason), Send(via_link, encode_abort(f.relay_id, reason))]

    # -- failures --------------------------------------------------------------------------------------
    def abort(self, relay_id: str, reason: str) -> list:
        """Abort a request here (the source gave up); ABORT goes to both sides."""
        return self._abort(relay_id, reason)

    def link_down(self, link_id: str) -> list:
        """Every request using `link_id` that is not done aborts; ABORT goes out on its other link."""
        out: list = []
        for relay_id, request in list(self.requests.items()):
            if link_id in (request.up_link, request.down_link):
                out += self._abort(relay_id, f"link {link_id} went down", came_from=link_id)
        return out

    def expire(self, now_s: float) -> list:
        out: list = []
        for relay_id, request in list(self.requests.items()):
            if request.deadline_s <= now_s:
                out += self._abort(relay_id, "deadline passed")
        return out

    def _abort(self, relay_id: str, reason: str, came_from: str | None = None) -> list:
        request = self.requests.pop(relay_id, None)
        if request is None:
            return []
        erase(request.key)
        out: list = [Aborted(relay_id, request.role, reason)]
        for link in (request.up_link, request.down_link):
            if link is not None and link != came_from:
                out.append(Send(link, encode_abort(relay_id, reason)))
        return out

    def _finish(self, relay_id: str) -> None:
        request = self.requests.pop(relay_id, None)
        if request is not None:
            erase(request.key)

    def key_of(self, relay_id: str) -> bytes | None:
        """The source's copy of K while the request runs (handed out on Delivered)."""
        request = self.requests.get(relay_id)
        return bytes(request.key) if request is not None and request.key is not None else None
