"""Link-state announcements of the relay network (sans-IO): each node signs what it knows of its own links
with its ML-DSA-65 identity and floods it over every link's classical channel, so that every node holds the
same database and computes the same topology (routing.py).

Theory of operation
-------------------
An `Announcement` is one node's view of itself: its node id, a sequence number, its trust level (from its
configuration), its public key, and one `LinkReport` per link whose neighbour it knows (neighbour id, link
id, the neighbour's key fingerprint, this end's stock of allocatable key, key rate, QBER, up or down). The
origin signs it (FIPS 204 ML-DSA-65, context "qkdd link-state v1") and sends it to every neighbour; a node
that accepts an announcement newer than the one it holds forwards the same bytes to every neighbour but the
one it came from (flooding, as OSPF, RFC 2328 section 13). Sequence numbers are the origin's wall clock in
milliseconds, raised past the last one it sent, so a restarted origin still goes forward.

Acceptance, in order (anything else is refused with a reason, and nothing changes):

    decode            malformed bytes, a bad node id, too many links   -> "malformed"
    signature         does not verify under the key it carries         -> "bad-signature"
    self              our own id under another key                     -> "impersonation"; an old copy
                      of our own is "stale"
    key binding       the origin's key fingerprint must be vouched for: pinned on the link it came from
                      (a neighbour), or listed for the origin by an accepted announcement of another
                      node; vouched for another key                    -> "key-mismatch";
                      vouched by nobody yet: held aside (bounded) until an announcement vouches for it
    freshness         sequence <= the highest seen from the origin     -> "stale" (a replay), or
                      "duplicate" for the same sequence (a normal flooding echo, not flooded again)
                      sequence older than max_age_s, or further ahead than MAX_CLOCK_AHEAD_S -> "stale"
    rate              the link carries more announcements than its share (checked first, before decoding),
                      or the origin originates faster than the configured rate -> "rate-limited"
                      (flood_limit.py; nothing changes, so the origin's next announcement still counts)

    state of one origin:  (none) --accept--> HELD --newer accept--> HELD --max_age_s without a newer--> AGED
                          AGED keeps the highest sequence, so a replay of an aged-out announcement is stale.

Ageing: an announcement not refreshed within max_age_s (by local monotonic time of receipt) leaves the
topology; origins refresh theirs every refresh interval (a fraction of max_age_s, service.py).

Wire layout (big-endian; text is UTF-8 with a u16 length):

    "QLSA" | version u8 (=1) | origin text | sequence u64 | trust_level u8 | public_key blob |
    link count u16, per link: neighbour text | link_id text | neighbour fingerprint 32 bytes |
                              stock_bits u64 | key_rate_bps f64 | qber f64 (NaN: unknown) | up u8
    | signature blob (over every byte before it)
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from qkdd.relay.flood_limit import FloodLimiter
from qkdd.relay.wire import Reader, RelayWireError, Writer

MAGIC = b"QLSA"
VERSION = 1
SIGNATURE_CONTEXT = b"qkdd link-state v1"
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FINGERPRINT_BYTES = 32
PUBLIC_KEY_BYTES = 1952          # ML-DSA-65 (FIPS 204 table 2)
MAX_SIGNATURE_BYTES = 4096       # ML-DSA-65 signatures are 3309 bytes
MAX_LINKS = 256
MAX_ANNOUNCEMENT_BYTES = 64 << 10
MAX_NODES = 1024                 # origins held (and aged-out sequences remembered)
MAX_UNVOUCHED = 64               # validly signed announcements waiting for a voucher
MAX_CLOCK_AHEAD_S = 60.0         # an origin's clock this far ahead of ours is accepted
MAX_TRUST = 255

REFUSALS = ("malformed", "bad-signature", "impersonation", "key-mismatch", "stale", "duplicate", "unvouched",
            "full", "rate-limited")


def fingerprint(public_key_raw: bytes) -> bytes:
    """SHA-256 of the raw public key, as qkdd.peer.identity.key_fingerprint."""
    return hashlib.sha256(public_key_raw).digest()


def valid_node_id(node_id: str) -> bool:
    return bool(NODE_ID_PATTERN.fullmatch(node_id))


@dataclass(frozen=True)
class LinkReport:
    neighbor: str
    link_id: str
    neighbor_fingerprint: bytes
    stock_bits: int                  # this end's allocatable key on the link
    key_rate_bps: float
    qber: float = math.nan           # NaN: not measured
    up: bool = True


@dataclass(frozen=True)
class Announcement:
    origin: str
    sequence: int
    trust_level: int
    public_key: bytes                # raw ML-DSA-65 public key
    links: tuple[LinkReport, ...] = ()

    def signed_part(self) -> bytes:
        w = Writer().raw(MAGIC).u8(VERSION).text(self.origin).u64(self.sequence).u8(self.trust_level)
        w.blob(self.public_key).u16(len(self.links))
        for link in self.links:
            w.text(link.neighbor).text(link.link_id).raw(link.neighbor_fingerprint).u64(link.stock_bits)
            w.f64(link.key_rate_bps).f64(link.qber).u8(1 if link.up else 0)
        return w.bytes()

    def sign(self, private_key: mldsa.MLDSA65PrivateKey) -> bytes:
        """The announcement's bytes on the wire, signed."""
        body = self.signed_part()
        return body + Writer().blob(private_key.sign(body, SIGNATURE_CONTEXT)).bytes()


def decode(payload: bytes) -> tuple[Announcement, bytes, bytes]:
    """(announcement, signed bytes, signature); RelayWireError when malformed."""
    if len(payload) > MAX_ANNOUNCEMENT_BYTES:
        raise RelayWireError(f"announcement of {len(payload)} bytes, at most {MAX_ANNOUNCEMENT_BYTES}")
    r = Reader(payload)
    if r.raw(4, "magic") != MAGIC:
        raise RelayWireError("not a link-state announcement")
    version = r.u8("version")
    if version != VERSION:
        raise RelayWireError(f"version {version}, this node reads {VERSION}")
    origin = r.text("origin")
    if not valid_node_id(origin):
        raise RelayWireError("origin is not a node id")
    sequence = r.u64("sequence")
    trust = r.u8("trust level")
    public_key = r.blob("public key", PUBLIC_KEY_BYTES)
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise RelayWireError(f"public key of {len(public_key)} bytes, ML-DSA-65's are {PUBLIC_KEY_BYTES}")
    count = r.u16("link count")
    if count > MAX_LINKS:
        raise RelayWireError(f"{count} links, at most {MAX_LINKS}")
    links = []
    for _ in range(count):
        neighbor, link_id = r.text("neighbour"), r.text("link id")
        if not valid_node_id(neighbor) or not valid_node_id(link_id) or neighbor == origin:
            raise RelayWireError("bad neighbour or link id")
        fp = r.raw(FINGERPRINT_BYTES, "fingerprint")
        stock, rate, qber, up = r.u64("stock"), r.f64("key rate"), r.f64("qber"), r.u8("up")
        if not math.isfinite(rate) or rate < 0 or not (math.isnan(qber) or 0 <= qber <= 1) or up > 1:
            raise RelayWireError("bad link figures")
        links.append(LinkReport(neighbor, link_id, fp, stock, rate, qber, bool(up)))
    signed_len = r.consumed
    signature = r.blob("signature", MAX_SIGNATURE_BYTES)
    r.end()
    return (Announcement(origin, sequence, trust, public_key, tuple(links)), bytes(payload[:signed_len]),
            signature)


@dataclass(frozen=True)
class Received:
    """What `receive` made of an announcement: accepted (then `flood` says to forward it to every
    neighbour but the sender) or refused with one of REFUSALS."""

    origin: str | None
    accepted: bool
    refusal: str | None = None
    detail: str = ""
    flood: tuple[bytes, ...] = ()     # accepted announcements to forward (this one and any it vouched for)


@dataclass
class _Held:
    announcement: Announcement
    payload: bytes
    received_at_s: float             # local monotonic time


@dataclass
class LinkStateDatabase:
    """One node's database of announcements. `now_s` is monotonic time, `wall_s` Unix time (for the
    sequence freshness check); both are passed in, so tests drive time."""

    node_id: str
    public_key: bytes
    max_age_s: float = 120.0
    held: dict[str, _Held] = field(default_factory=dict)
    highest: dict[str, int] = field(default_factory=dict)          # origin -> highest sequence seen
    pinned: dict[str, bytes] = field(default_factory=dict)         # link_id -> neighbour's fingerprint
    unvouched: dict[tuple[str, bytes], tuple[bytes, str]] = field(default_factory=dict)
    last_sequence: int = 0
    limiter: FloodLimiter = field(default_factory=FloodLimiter)

    # -- own announcements ---------------------------------------------------------------------------
    def next_sequence(self, wall_s: float) -> int:
        self.last_sequence = max(self.last_sequence + 1, int(wall_s * 1000))
        return self.last_sequence

    def originate(self, announcement: Announcement, payload: bytes, now_s: float) -> None:
        """Hold our own announcement (already signed), as any other."""
        self.held[self.node_id] = _Held(announcement, payload, now_s)
        self.highest[self.node_id] = announcement.sequence

    def pin(self, link_id: str, neighbor_fingerprint: bytes) -> None:
        self.pinned[link_id] = neighbor_fingerprint

    def neighbor_on(self, link_id: str) -> str | None:
        """The node id of the neighbour on `link_id`, once its announcement came on that link."""
        fp = self.pinned.get(link_id)
        for origin, held in self.held.items():
            if origin != self.node_id and fingerprint(held.announcement.public_key) == fp:
                return origin
        return None

    # -- receiving -------------------------------------------------------------------------------------
    def receive(self, payload: bytes, via_link: str | None, now_s: float, wall_s: float) -> Received:
        if via_link is not None and not self.limiter.admit_link(via_link, now_s, len(self.highest)):
            return Received(None, False, "rate-limited", f"link {via_link} carries announcements faster than "
                            f"{self.limiter.per_origin_per_s:g}/s for each of the {len(self.highest)} nodes known")
        return self._receive(payload, via_link, now_s, wall_s)

    def _receive(self, payload: bytes, via_link: str | None, now_s: float, wall_s: float) -> Received:
        try:
            announcement, signed, signature = decode(payload)
        except RelayWireError as exc:
            return Received(None, False, "malformed", str(exc))
        origin = announcement.origin
        try:
            mldsa.MLDSA65PublicKey.from_public_bytes(announcement.public_key).verify(
                signature, signed, SIGNATURE_CONTEXT)
        except (InvalidSignature, ValueError):
            return Received(origin, False, "bad-signature", "signature does not verify under the key it carries")
        fp = fingerprint(announcement.public_key)
        if origin == self.node_id:
            if announcement.public_key != self.public_key:
                return Received(origin, False, "impersonation", "our node id under another key")
            return Received(origin, False, "duplicate" if announcement.sequence == self.last_sequence else "stale")
        sequence_s = announcement.sequence / 1000
        if sequence_s < wall_s - self.max_age_s or sequence_s > wall_s + MAX_CLOCK_AHEAD_S:
            return Received(origin, False, "stale", "sequence outside the accepted age")
        vouched = self._vouched_for(origin, fp, via_link)
        if vouched is not None and vouched != fp:
            return Received(origin, False, "key-mismatch", "the origin's key is not the one vouched for")
        seen = self.highest.get(origin)
        if seen is not None and announcement.sequence <= seen:
            return Received(origin, False, "duplicate" if announcement.sequence == seen else "stale")
        if not self.limiter.admit_origin(origin, now_s):
            return Received(origin, False, "rate-limited", f"{origin} originates announcements faster than "
                            f"{self.limiter.per_origin_per_s:g}/s")
        if vouched is None:
            if len(self.unvouched) >= MAX_UNVOUCHED and (origin, fp) not in self.unvouched:
                return Received(origin, False, "full", "too many announcements wait for a voucher")
            self.unvouched[(origin, fp)] = (payload, via_link or "")
            return Received(origin, False, "unvouched", "no accepted announcement vouches for its key yet")
        if origin not in self.highest and len(self.highest) >= MAX_NODES:
            return Received(origin, False, "full", f"more than {MAX_NODES} nodes")
        self._hold(announcement, payload, now_s)
        flood = [payload] + self._retry_unvouched(now_s, wall_s)
        return Received(origin, True, flood=tuple(flood))

    def _hold(self, announcement: Announcement, payload: bytes, now_s: float) -> None:
        self.held[announcement.origin] = _Held(announcement, payload, now_s)
        self.highest[announcement.origin] = announcement.sequence
        self.unvouched = {k: v for k, v in self.unvouched.items() if k[0] != announcement.origin}

    def _retry_unvouched(self, now_s: float, wall_s: float) -> list[bytes]:
        accepted = []
        progress = True
        while progress and self.unvouched:
            progress = False
            for key, (payload, via) in list(self.unvouched.items()):
                if key not in self.unvouched or self._vouched_for(key[0], key[1], via or None) != key[1]:
                    continue
                del self.unvouched[key]
                result = self._receive(payload, via or None, now_s, wall_s)
                if result.accepted:
                    accepted.extend(result.flood)
                    progress = True
        return accepted

    def _vouched_for(self, origin: str, fp: bytes, via_link: str | None) -> bytes | None:
        """The fingerprint vouched for `origin`: the pin of the link whose neighbour it is, else the one an
        accepted announcement of another node lists for it; or, when it comes on a link whose neighbour
        is not known yet, the link's pin if its key is the pinned one (the neighbour names itself)."""
        listed = self._listed_for(origin)
        if listed is not None:
            return listed
        if via_link is not None and self.pinned.get(via_link) == fp and self.neighbor_on(via_link) is None:
            return fp
        return None

    def _listed_for(self, origin: str) -> bytes | None:
        for link_id, fp in self.pinned.items():
            if self.neighbor_on(link_id) == origin:
                return fp
        for other, held in self.held.items():
            if other == origin or other == self.node_id:
                continue
            for link in held.announcement.links:
                if link.neighbor == origin:
                    return link.neighbor_fingerprint
        return None

    # -- ageing ----------------------------------------------------------------------------------------
    def expire(self, now_s: float) -> list[str]:
        """Drop the announcements not refreshed within max_age_s (never our own); their highest sequence
        is kept, so a replay stays stale. Returns the origins dropped."""
        gone = [origin for origin, held in self.held.items()
                if origin != self.node_id and now_s - held.received_at_s > self.max_age_s]
        for origin in gone:
            del self.held[origin]
        return gone

    def announcements(self) -> dict[str, Announcement]:
        return {origin: held.announcement for origin, held in self.held.items()}

    def payloads(self) -> list[bytes]:
        """Every held announcement's bytes (sent to a neighbour at each new session)."""
        return [held.payload for held in self.held.values()]
