"""Verification: both ends check that their corrected frames agree, with a fresh polynomial hash.

Theory of operation. After error correction, the announcer draws `nkeys` fresh 64-bit keys from the
OS CSPRNG, hashes its frame under each (qkd_hash.h: polynomial evaluation over GF(2^64)) and sends
keys and tags. The checker hashes its own frame under the same keys and answers whether all tags
match. On a mismatch both ends discard the frame. The announced tag is public: its 64 * nkeys bits
count as leaked and are subtracted in privacy amplification.

Correctness (epsilon_cor). For two different frames of d = ceil(n/64) blocks plus the length block,
the tag difference is a nonzero polynomial of degree <= d + 1 in the key, so a key drawn uniformly
from GF(2^64) makes them collide with probability <= (d + 1) / 2^64: the polynomial hash is
(d+1)/2^64-almost universal (den Boer 1993; Bierbrauer, Johansson, Kabatianskii, Smeets, CRYPTO '93,
LNCS 773 p. 331; Shoup, CRYPTO '96, LNCS 1109, section 3 "polynomial hashing"). Independent keys
multiply: epsilon_cor <= ((d + 1) / 2^64)^nkeys. A passed check then gives an epsilon_cor-correct key
in the sense of Tomamichel, Lim, Gisin, Renner, Nat. Commun. 3, 634 (2012), Methods ("error
verification").

States and transitions (one object per frame and end):

    role       state           event                     next            sends
    announcer  START           start()                   AWAIT_RESULT    ANNOUNCE(keys, tags)
    announcer  AWAIT_RESULT    receive(RESULT)           DONE            -
    checker    AWAIT_ANNOUNCE  receive(ANNOUNCE)         DONE            RESULT(match)
    (any)      (any)           bad peer message          FAILED          -  (the frame is discarded)
Anything else raises PeerMessageError (from a peer message) or VerificationStateError (a local call).

Messages (wire.py header, then little-endian payload):
    ANNOUNCE (kind 0x21): n_bits u64 | nkeys u8 | 7 zero bytes | keys nkeys x u64 | tags nkeys x u64
    RESULT   (kind 0x22): n_bits u64 | match u8 | 7 zero bytes
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qkdd.bindings import as_words
from qkdd.bindings.bits import words_for_bits
from qkdd.bindings.hash import MAX_KEYS, poly64_tags
from qkdd.postprocess import randomness, wire
from qkdd.postprocess.wire import PeerMessageError

ANNOUNCE = 0x21
RESULT = 0x22
KIND_NAMES = {ANNOUNCE: "ANNOUNCE", RESULT: "RESULT"}
TAG_BITS_PER_KEY = 64
_MAX_PAYLOAD_BYTES = 16 + 16 * MAX_KEYS

START, AWAIT_RESULT, AWAIT_ANNOUNCE, DONE, FAILED = "START", "AWAIT_RESULT", "AWAIT_ANNOUNCE", "DONE", "FAILED"
ANNOUNCER, CHECKER = "announcer", "checker"
TRANSITIONS = {
    (ANNOUNCER, START, "start"): AWAIT_RESULT,
    (ANNOUNCER, AWAIT_RESULT, RESULT): DONE,
    (CHECKER, AWAIT_ANNOUNCE, ANNOUNCE): DONE,
}


class VerificationStateError(RuntimeError):
    """A local call that the current state does not allow (e.g. start() twice, result before DONE)."""


def collision_bound(n_bits: int, nkeys: int) -> float:
    """epsilon_cor: probability that different n_bits frames pass, ((ceil(n/64) + 1) / 2^64)^nkeys."""
    if n_bits < 0 or not 1 <= nkeys <= MAX_KEYS:
        raise ValueError("n_bits must be >= 0 and nkeys in [1, MAX_KEYS]")
    blocks = words_for_bits(n_bits) + 1
    return math.exp(nkeys * (math.log(blocks) - TAG_BITS_PER_KEY * math.log(2)))


def keys_for(epsilon_cor: float, n_bits: int) -> int:
    """Fewest 64-bit keys whose collision bound is at most epsilon_cor for an n_bits frame."""
    for nkeys in range(1, MAX_KEYS + 1):
        if collision_bound(n_bits, nkeys) <= epsilon_cor:
            return nkeys
    raise ValueError(f"epsilon_cor {epsilon_cor} needs more than {MAX_KEYS} keys for {n_bits} bits")


@dataclass(frozen=True)
class VerificationResult:
    matched: bool
    n_bits: int
    tag_bits: int
    leaked_bits: int  # the announced tag; subtract it in privacy amplification
    epsilon_cor: float


class Verification:
    """One end of the verification of one frame. `role` is ANNOUNCER or CHECKER."""

    def __init__(self, role: str, frame_id: int, frame: np.ndarray, n_bits: int, nkeys: int = 1):
        if role not in (ANNOUNCER, CHECKER):
            raise ValueError(f"role must be {ANNOUNCER!r} or {CHECKER!r}")
        as_words(frame, "frame")
        if n_bits < 0 or frame.size < words_for_bits(n_bits):
            raise ValueError(f"frame has {frame.size} words, too few for {n_bits} bits")
        if not 1 <= nkeys <= MAX_KEYS:
            raise ValueError(f"nkeys must be in [1, {MAX_KEYS}]")
        self.role = role
        self.state = START if role == ANNOUNCER else AWAIT_ANNOUNCE
        self._frame = frame
        self._n_bits = n_bits
        self._nkeys = nkeys
        self._tags: np.ndarray | None = None
        self._seq = wire.Sequencer(frame_id)
        self._failure = ""
        self._sent = 0
        self._result: VerificationResult | None = None

    @property
    def frame_id(self) -> int:
        return self._seq.frame_id

    def start(self) -> list[bytes]:
        """Announcer only: draw fresh keys, hash, and return the ANNOUNCE message."""
        self._advance("start")
        keys = randomness.fresh_words(self._nkeys)
        self._tags = poly64_tags(self._frame, self._n_bits, keys)
        payload = (self._n_bits.to_bytes(8, "little") + bytes([self._nkeys]) + bytes(7)
                   + keys.astype("<u8").tobytes() + self._tags.astype("<u8").tobytes())
        return [self._send(ANNOUNCE, payload)]

    def receive(self, message: bytes) -> list[bytes]:
        """Feed one peer message; returns the messages to send back.

        A PeerMessageError ends the exchange: the frame is discarded and the object stays FAILED.
        """
        if self.state == FAILED:
            raise PeerMessageError(f"exchange for frame {self.frame_id} already failed: {self._failure}")
        try:
            return self._receive(message)
        except PeerMessageError as exc:
            self.state, self._failure = FAILED, str(exc)
            raise

    def _receive(self, message: bytes) -> list[bytes]:
        header, payload = wire.decode(message, max_payload_bytes=_MAX_PAYLOAD_BYTES)
        expected = {AWAIT_RESULT: RESULT, AWAIT_ANNOUNCE: ANNOUNCE}.get(self.state)
        self._seq.accept(header, expected, KIND_NAMES, self.state)
        reader = wire.Reader(payload, KIND_NAMES[expected])
        n_bits = reader.u64()
        if n_bits != self._n_bits:
            raise PeerMessageError(f"peer frame has {n_bits} bits, this end has {self._n_bits}")
        if expected == RESULT:
            match = reader.u8()
            if match > 1 or bytes(reader.take(7)) != bytes(7):
                raise PeerMessageError("RESULT: malformed match flag")
            reader.finish()
            self._advance(RESULT)
            self._finish(bool(match))
            return []
        nkeys = reader.u8()
        if bytes(reader.take(7)) != bytes(7):
            raise PeerMessageError("ANNOUNCE: reserved bytes not zero")
        if not 1 <= nkeys <= MAX_KEYS:
            raise PeerMessageError(f"ANNOUNCE: {nkeys} keys, allowed 1..{MAX_KEYS}")
        keys = np.frombuffer(reader.words(nkeys), dtype="<u8").astype(np.uint64)
        tags = np.frombuffer(reader.words(nkeys), dtype="<u8").astype(np.uint64)
        reader.finish()
        self._advance(ANNOUNCE)
        self._nkeys = nkeys
        match = bool(np.array_equal(poly64_tags(self._frame, self._n_bits, keys), tags))
        self._finish(match)
        payload = self._n_bits.to_bytes(8, "little") + bytes([int(match)]) + bytes(7)
        return [self._send(RESULT, payload)]

    @property
    def result(self) -> VerificationResult:
        if self._result is None:
            raise VerificationStateError(f"no result yet (state {self.state})")
        return self._result

    def _advance(self, event: str | int) -> None:
        next_state = TRANSITIONS.get((self.role, self.state, event))
        if next_state is None:
            name = KIND_NAMES.get(event, event) if isinstance(event, int) else event
            if isinstance(event, int):
                raise PeerMessageError(f"unexpected {name} for {self.role} in state {self.state}")
            raise VerificationStateError(f"{name}() not allowed for {self.role} in state {self.state}")
        self.state = next_state

    def _send(self, kind: int, payload: bytes) -> bytes:
        message = wire.encode(kind, self.frame_id, self._sent, payload)
        self._sent += 1
        return message

    def _finish(self, matched: bool) -> None:
        tag_bits = TAG_BITS_PER_KEY * self._nkeys
        self._result = VerificationResult(matched=matched, n_bits=self._n_bits, tag_bits=tag_bits,
                                          leaked_bits=tag_bits,
                                          epsilon_cor=collision_bound(self._n_bits, self._nkeys))
