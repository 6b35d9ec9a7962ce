"""Wegman-Carter authentication of one frame's post-processing transcript (sans-IO): a polynomial hash over
GF(2^64) under a secret key, one-time-padded with bits from the link's authentication pool.

Theory of operation
-------------------
Both ends keep the frame's transcript: every link record either end sent or received for the frame, in
order, each with its sender's role. Before Bob stores anything, Alice's KEYS record carries an AUTH part
(TAG_A) whose tag covers the whole transcript up to and including that record; Bob checks it before he
stores his keys PENDING and answers with the amplification ACK and his own AUTH part (TAG_B) over the
transcript including the ACK, which Alice checks before she stores and commits. Alice's COMMIT then
carries TAG_C over the transcript including COMMIT, which Bob checks before he commits his PENDING keys
(a failed TAG_C discards them, as an ABORT does). So neither end stores a key unless both saw the same
transcript, and Bob commits only on Alice's word: a changed, inserted, dropped or reordered message in
sifting, estimation, Cascade, verification, amplification, KEYS or COMMIT fails a tag and the frame is
aborted. Only ABORT is untagged: it can make an end discard, never store or commit.

Hash family. h_k(m) = m_1 k^(d+1) + ... + m_d k^2 + |m| k over GF(2^64) (qkd_hash.h; blocks of the
message, then its length in bits, no constant term). For m != m' and any difference delta, h_k(m) -
h_k(m') = delta is a nonzero polynomial equation of degree <= d + 1 in k, so it holds for at most d + 1 of
the 2^64 keys: the family is epsilon-almost XOR-universal with epsilon = (d + 1) / 2^64 (d: 64-bit blocks
of the longer message; Krawczyk, CRYPTO '94, LNCS 839, Sec. 2 and 4; Shoup, CRYPTO '96, LNCS 1109, Sec.
3). Two independent keys (k1, k2) concatenated give a 128-bit hash with epsilon^2 (the two equations
must both hold).

Tags. tag = h_(k1,k2)(m) XOR pad, pad 128 fresh pool bits, never used again. With an epsilon-AXU family
and a one-time pad, an adversary who sees tagged messages substitutes a message with a valid tag with
probability at most epsilon (Wegman & Carter, JCSS 22 (1981) 265, Sec. 3-4; Stinson, "Universal
hashing and authentication codes", Des. Codes Cryptogr. 4 (1994) 369, Thm. 5.1 for the ASU form). The
hash key may be kept for several messages as long as every tag gets a fresh pad (Wegman & Carter Sec.
4; composable form: Portmann, IEEE Trans. Inf. Theory 60 (2014) 4383, Thm. 4.5 / Cor. 4.6): each frame
takes one fresh hash key and one pad per tag, so the frame's authentication fails with probability at
most TAGS_PER_FRAME * epsilon (frame_epsilon()), which joins eps_sec and eps_cor in the frame's budget.

States and transitions (one object per frame and end):

    role   state       event                         next        effect
    alice  OPEN        seal_keys(record parts)       AWAIT_TAG   takes hash key + 2 pads; AUTH(TAG_A)
    alice  AWAIT_TAG   check_ack(record parts)       ACKED       AuthFailed unless TAG_B matches
    alice  ACKED       seal_commit(record parts)     DONE        AUTH(TAG_C)
    bob    OPEN        check_keys(record parts)      CHECKED     takes the announced chunks; AuthFailed
                                                                 unless TAG_A matches
    bob    CHECKED     seal_ack(record parts)        SEALED      AUTH(TAG_B)
    bob    SEALED      check_commit(record parts)    DONE        AuthFailed unless TAG_C matches
Anything else raises AuthStateError (local call) or AuthFailed (a peer's AUTH part).

AUTH part layout (little-endian, the last part of its record; envelope.Step.AUTH):
    TAG_A  u8 version (2) | u8 chunk count n | u16 refill chunks | 4 zero bytes | u64 refill position |
           n x u64 pool positions (hash key, then one pad per tag) | 16-byte tag
    TAG_B, TAG_C  u8 version (2) | 7 zero bytes | 16-byte tag
(Version 1 had no TAG_C and three chunks; a version-1 peer is refused by the version check.)
The tag covers: TAG_LABEL | u64 frame id | the transcript before this record (per record: u8 sender
(0 Bob, 1 Alice) | u64 length | bytes) | u8 sender | this record's envelope without the AUTH part | the
AUTH part without its tag.
"""
from __future__ import annotations

import hmac
import math
import struct
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from qkdd.bindings.bits import words_for_bits
from qkdd.bindings.hash import poly64_tags

CHUNK_BYTES = 16                      # the pool's unit: 128 bits (a hash key pair, or one pad)
TAG_BYTES = 16
TAGS_PER_FRAME = 3                    # Alice's TAG_A, Bob's TAG_B, Alice's TAG_C on COMMIT
CHUNKS_PER_FRAME = 1 + TAGS_PER_FRAME  # hash key (k1, k2), then a pad per tag
VERSION = 2
TAG_LABEL = b"qkdd/its-transcript\x00"
_TAG_A_HEAD = struct.Struct("<BBH4xQ")
_TAG_B_HEAD = struct.Struct("<B7x")
_SENDER = {"bob": 0, "alice": 1}
MAX_REFILL_CHUNKS = 0xFFFF

OPEN, AWAIT_TAG, ACKED, CHECKED, SEALED, DONE = "OPEN", "AWAIT_TAG", "ACKED", "CHECKED", "SEALED", "DONE"
ALICE, BOB = "alice", "bob"
TRANSITIONS = {
    (ALICE, OPEN, "seal_keys"): AWAIT_TAG,
    (ALICE, AWAIT_TAG, "check_ack"): ACKED,
    (ALICE, ACKED, "seal_commit"): DONE,
    (BOB, OPEN, "check_keys"): CHECKED,
    (BOB, CHECKED, "seal_ack"): SEALED,
    (BOB, SEALED, "check_commit"): DONE,
}


class AuthFailed(ValueError):
    """A peer's AUTH part is malformed, names pool bits this end does not hold, or its tag does not match."""


class AuthStateError(RuntimeError):
    """A local call the authenticator's state does not allow."""


class Pool(Protocol):
    """What the authenticator needs from the authentication pool (qkdd.auth.pool.AuthPool)."""

    def allocate(self, count: int) -> list[tuple[int, bytes]]: ...      # Alice: the lowest free chunks, taken
    def take(self, positions: list[int]) -> list[bytes]: ...            # Bob: exactly these chunks, taken
    def reserve_refill(self, count: int) -> int: ...                    # Alice: where a refill goes


# -- the hash family and tags ---------------------------------------------------------------------

def hash_epsilon(message_bytes: int) -> float:
    """epsilon of the 128-bit hash (two GF(2^64) keys) for messages of at most `message_bytes` bytes:
    ((d + 1) / 2^64)^2 with d = ceil(8 * bytes / 64) blocks."""
    if message_bytes < 0:
        raise ValueError("message length must be non-negative")
    blocks = words_for_bits(8 * message_bytes) + 1
    return math.exp(2 * (math.log(blocks) - 64 * math.log(2)))


def frame_epsilon(transcript_bytes: int) -> float:
    """Probability that a frame's transcript authentication is forged (its three tags, the hash key reused
    with fresh pads): TAGS_PER_FRAME * hash_epsilon."""
    return TAGS_PER_FRAME * hash_epsilon(transcript_bytes)


def universal_hash(message: bytes, hash_key: bytes) -> bytes:
    """h_(k1,k2)(message): 16 bytes, k1 and k2 the little-endian halves of the 16-byte hash key."""
    if len(hash_key) != CHUNK_BYTES:
        raise ValueError(f"hash key must be {CHUNK_BYTES} bytes")
    n_bits = 8 * len(message)
    padded = bytes(message) + bytes(-len(message) % 8)
    words = np.frombuffer(padded, dtype="<u8").astype(np.uint64) if padded else np.zeros(1, dtype=np.uint64)
    keys = np.frombuffer(hash_key, dtype="<u8").astype(np.uint64)
    return poly64_tags(words, n_bits, keys).astype("<u8").tobytes()


def make_tag(message: bytes, hash_key: bytes, pad: bytes) -> bytes:
    if len(pad) != TAG_BYTES:
        raise ValueError(f"pad must be {TAG_BYTES} bytes")
    return bytes(a ^ b for a, b in zip(universal_hash(message, hash_key), pad))


def check_tag(message: bytes, hash_key: bytes, pad: bytes, tag: bytes) -> bool:
    return len(tag) == TAG_BYTES and hmac.compare_digest(make_tag(message, hash_key, pad), bytes(tag))


# -- one frame's transcript authentication --------------------------------------------------------

@dataclass(frozen=True)
class KeysAuth:
    """What Alice's TAG_A announced: the pool chunks spent and where the frame's refill goes."""

    positions: tuple[int, ...]
    refill_position: int
    refill_chunks: int


class FrameAuthenticator:
    """One end's Wegman-Carter authentication of one frame's transcript. `role` is "alice" or "bob"."""

    def __init__(self, role: str, frame_id: int, pool: Pool):
        if role not in (ALICE, BOB):
            raise ValueError(f"role must be {ALICE!r} or {BOB!r}")
        self.role = role
        self.frame_id = frame_id
        self.state = OPEN
        self._pool = pool
        self._transcript: list[bytes] = [TAG_LABEL, struct.pack("<Q", frame_id)]
        self._transcript_bytes = 0
        self._hash_key = b""
        self._pads: list[bytes] = []
        self.announced: KeysAuth | None = None
        self.consumed_bits = 0

    @property
    def transcript_bytes(self) -> int:
        return self._transcript_bytes

    @property
    def epsilon(self) -> float:
        return frame_epsilon(self._transcript_bytes)

    def record(self, sender: str, record: bytes) -> None:
        """A whole record of this frame, sent by `sender`, joins the transcript."""
        self._transcript.append(struct.pack("<BQ", _SENDER[sender], len(record)))
        self._transcript.append(bytes(record))
        self._transcript_bytes += 9 + len(record)

    # -- Alice --------------------------------------------------------------------------------------
    def seal_keys(self, unsealed_record: bytes, refill_chunks: int) -> bytes:
        """TAG_A for Alice's KEYS record (`unsealed_record`: the record's envelope without the AUTH part);
        takes the frame's hash key and pads from the pool (PoolDry when it has too few) and reserves
        `refill_chunks` positions for the frame's refill."""
        if not 0 <= refill_chunks <= MAX_REFILL_CHUNKS:
            raise ValueError(f"refill chunks must lie in [0, {MAX_REFILL_CHUNKS}]")
        self._expect(ALICE, "seal_keys")
        taken = self._pool.allocate(CHUNKS_PER_FRAME)
        self.consumed_bits = 8 * CHUNK_BYTES * len(taken)
        refill_position = self._pool.reserve_refill(refill_chunks) if refill_chunks else 0
        self._hash_key, self._pads = taken[0][1], [material for _, material in taken[1:]]
        positions = tuple(position for position, _ in taken)
        self.announced = KeysAuth(positions, refill_position, refill_chunks)
        head = (_TAG_A_HEAD.pack(VERSION, len(positions), refill_chunks, refill_position)
                + struct.pack(f"<{len(positions)}Q", *positions))
        self._advance("seal_keys")
        return head + make_tag(self._message(ALICE, unsealed_record, head), self._hash_key, self._pads[0])

    def check_ack(self, unsealed_record: bytes, part) -> None:
        self._expect(ALICE, "check_ack")
        head, tag = _split_tag_b(part)
        self._advance("check_ack")
        if not check_tag(self._message(BOB, unsealed_record, head), self._hash_key, self._pads[1], tag):
            raise AuthFailed("Bob's transcript tag does not match: a post-processing message was altered")

    def seal_commit(self, unsealed_record: bytes) -> bytes:
        """TAG_C for Alice's COMMIT record, over the transcript including Bob's ACK and the COMMIT."""
        self._expect(ALICE, "seal_commit")
        head = _TAG_B_HEAD.pack(VERSION)
        self._advance("seal_commit")
        return head + make_tag(self._message(ALICE, unsealed_record, head), self._hash_key, self._pads[2])

    # -- Bob ----------------------------------------------------------------------------------------
    def check_keys(self, unsealed_record: bytes, part) -> KeysAuth:
        """Check Alice's TAG_A; takes the chunks it names from this end's pool first (so they are spent
        whatever the tag says). Returns what it announced."""
        self._expect(BOB, "check_keys")
        view = bytes(part)
        if len(view) < _TAG_A_HEAD.size:
            raise AuthFailed("AUTH: truncated")
        version, count, refill_chunks, refill_position = _TAG_A_HEAD.unpack_from(view)
        if version != VERSION or count != CHUNKS_PER_FRAME:
            raise AuthFailed(f"AUTH: version {version} with {count} chunks, expected {VERSION} and "
                             f"{CHUNKS_PER_FRAME}")
        end = _TAG_A_HEAD.size + 8 * count
        if len(view) != end + TAG_BYTES:
            raise AuthFailed(f"AUTH: {len(view)} bytes, expected {end + TAG_BYTES}")
        positions = struct.unpack_from(f"<{count}Q", view, _TAG_A_HEAD.size)
        if len(set(positions)) != count:
            raise AuthFailed("AUTH: a pool position named twice")
        self._advance("check_keys")
        try:
            chunks = self._pool.take(list(positions))
        except LookupError as exc:
            raise AuthFailed(f"AUTH: {exc}") from None
        self.consumed_bits = 8 * CHUNK_BYTES * len(chunks)
        self._hash_key, self._pads = chunks[0], chunks[1:]
        if not check_tag(self._message(ALICE, unsealed_record, view[:end]), self._hash_key, self._pads[0],
                         view[end:]):
            raise AuthFailed("Alice's transcript tag does not match: a post-processing message was altered")
        self.announced = KeysAuth(tuple(positions), refill_position, refill_chunks)
        return self.announced

    def seal_ack(self, unsealed_record: bytes) -> bytes:
        self._expect(BOB, "seal_ack")
        head = _TAG_B_HEAD.pack(VERSION)
        self._advance("seal_ack")
        return head + make_tag(self._message(BOB, unsealed_record, head), self._hash_key, self._pads[1])

    def check_commit(self, unsealed_record: bytes, part) -> None:
        """Check Alice's TAG_C on COMMIT before Bob commits his PENDING keys."""
        self._expect(BOB, "check_commit")
        head, tag = _split_tag_b(part)
        self._advance("check_commit")
        if not check_tag(self._message(ALICE, unsealed_record, head), self._hash_key, self._pads[2], tag):
            raise AuthFailed("Alice's COMMIT tag does not match: COMMIT was altered or forged")

    # -- shared -------------------------------------------------------------------------------------
    def _message(self, sender: str, unsealed_record: bytes, head: bytes) -> bytes:
        return b"".join([*self._transcript, bytes([_SENDER[sender]]), bytes(unsealed_record), bytes(head)])

    def _expect(self, role: str, event: str) -> None:
        if self.role != role or (self.role, self.state, event) not in TRANSITIONS:
            raise AuthStateError(f"{event}() not allowed for {self.role} in state {self.state}")

    def _advance(self, event: str) -> None:
        self.state = TRANSITIONS[(self.role, self.state, event)]


def _split_tag_b(part) -> tuple[bytes, bytes]:
    view = bytes(part)
    if len(view) != _TAG_B_HEAD.size + TAG_BYTES:
        raise AuthFailed(f"AUTH: {len(view)} bytes, expected {_TAG_B_HEAD.size + TAG_BYTES}")
    if view[0] != VERSION or view[1:_TAG_B_HEAD.size] != bytes(_TAG_B_HEAD.size - 1):
        raise AuthFailed("AUTH: unknown version or reserved bytes not zero")
    return view[:_TAG_B_HEAD.size], view[_TAG_B_HEAD.size:]
