"""Privacy amplification: both ends hash their verified key with the same fresh Toeplitz matrix.

Theory of operation. The announcer picks the output length m (from the finite-key bound, computed
by the caller) and a fresh seed of n + m - 1 bits from the OS CSPRNG, and sends both; the seed is
public but must be fresh and independent of the key. Each end then computes y = T(seed) x
(qkd_toeplitz.h; bit-exact with randextract's ToeplitzHashing, seed_mode="default":
T[i][j] = seed[(i - j) mod (n + m - 1)]). Toeplitz matrices form a two-universal family, so by
the leftover hash lemma against quantum side information the output is epsilon_pa-close to uniform
for m <= H_min - 2 log2(1/epsilon_pa) (Tomamichel, Schaffner, Smith, Renner, IEEE Trans. Inf.
Theory 57, 5524 (2011), Eq. (1); Krawczyk, CRYPTO '94, for Toeplitz universality). The receiver
acknowledges with the parameters it used, so the announcer only keeps the output once the peer has it.

The seed is carried either in full (SEED_INLINE, (n+m-1) random bits) or as 256 bits expanded on
both ends with SHAKE256 (SEED_SHAKE256, randomness.expand_words), which is shorter on the wire.

States and transitions (one object per frame and end):

    role       state         event             next        sends
    announcer  START         start(m)          AWAIT_ACK   ANNOUNCE(n, m, seed)
    announcer  AWAIT_ACK     receive(ACK)      DONE        -
    receiver   AWAIT_SEED    receive(ANNOUNCE) DONE        ACK(n, m)
    (any)      (any)         bad peer message  FAILED      -  (the frame is discarded)
Anything else raises PeerMessageError (peer message) or AmplificationStateError (local call).

Messages (wire.py header, then little-endian payload):
    ANNOUNCE (kind 0x31): n_bits u64 | m_bits u64 | seed_mode u8 | 7 zero bytes | seed
        seed_mode 0 (inline): ceil((n+m-1)/64) words, bits past n+m-1 zero
        seed_mode 1 (shake256): 32 bytes
    ACK      (kind 0x32): n_bits u64 | m_bits u64
"""
from __future__ import annotations

import numpy as np

from qkdd.bindings import as_words
from qkdd.bindings.bits import words_for_bits
from qkdd.bindings.toeplitz import MAX_INPUT_BITS, toeplitz_hash
from qkdd.postprocess import randomness, wire
from qkdd.postprocess.wire import PeerMessageError

ANNOUNCE = 0x31
ACK = 0x32
KIND_NAMES = {ANNOUNCE: "ANNOUNCE", ACK: "ACK"}
SEED_INLINE, SEED_SHAKE256 = 0, 1
SEED_LABEL = b"qkdd/toeplitz-seed"

START, AWAIT_ACK, AWAIT_SEED, DONE, FAILED = "START", "AWAIT_ACK", "AWAIT_SEED", "DONE", "FAILED"
ANNOUNCER, RECEIVER = "announcer", "receiver"
TRANSITIONS = {
    (ANNOUNCER, START, "start"): AWAIT_ACK,
    (ANNOUNCER, AWAIT_ACK, ACK): DONE,
    (RECEIVER, AWAIT_SEED, ANNOUNCE): DONE,
}


class AmplificationStateError(RuntimeError):
    """A local call that the current state does not allow."""


def _max_payload_bytes(n_bits: int) -> int:
    return 24 + 8 * words_for_bits(2 * n_bits - 1)


def _mask_tail(words: np.ndarray, n_bits: int) -> np.ndarray:
    if n_bits % 64:
        words[-1] &= np.uint64((1 << (n_bits % 64)) - 1)
    return words


class Amplification:
    """One end of privacy amplification of one frame's n_bits-long key."""

    def __init__(self, role: str, frame_id: int, key: np.ndarray, n_bits: int):
        if role not in (ANNOUNCER, RECEIVER):
            raise ValueError(f"role must be {ANNOUNCER!r} or {RECEIVER!r}")
        as_words(key, "key")
        if not 0 < n_bits <= MAX_INPUT_BITS:
            raise ValueError(f"key length must be in [1, {MAX_INPUT_BITS}] bits, got {n_bits}")
        if key.size != words_for_bits(n_bits):
            raise ValueError(f"key has {key.size} words, {n_bits} bits need {words_for_bits(n_bits)}")
        self.role = role
        self.state = START if role == ANNOUNCER else AWAIT_SEED
        self._key = key
        self._n_bits = n_bits
        self._m_bits = 0
        self._seq = wire.Sequencer(frame_id)
        self._failure = ""
        self._sent = 0
        self._output: np.ndarray | None = None
        self._pending: np.ndarray | None = None

    @property
    def frame_id(self) -> int:
        return self._seq.frame_id

    def start(self, m_bits: int, seed_mode: int = SEED_INLINE) -> list[bytes]:
        """Announcer: choose a fresh seed for an m_bits output; returns the ANNOUNCE message."""
        if not 0 < m_bits <= self._n_bits:
            raise ValueError(f"output length must be in [1, {self._n_bits}] bits, got {m_bits}")
        if seed_mode not in (SEED_INLINE, SEED_SHAKE256):
            raise ValueError(f"unknown seed mode {seed_mode}")
        self._advance("start")
        seed_bits = self._n_bits + m_bits - 1
        if seed_mode == SEED_INLINE:
            seed = _mask_tail(randomness.fresh_words(words_for_bits(seed_bits)), seed_bits)
            seed_bytes = seed.astype("<u8").tobytes()
        else:
            seed_bytes = randomness.fresh_seed()
            seed = randomness.expand_words(seed_bytes, words_for_bits(seed_bits), SEED_LABEL)
        self._m_bits = m_bits
        self._pending = toeplitz_hash(seed, self._key, self._n_bits, m_bits)
        payload = (self._n_bits.to_bytes(8, "little") + m_bits.to_bytes(8, "little") + bytes([seed_mode])
                   + bytes(7) + seed_bytes)
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
        header, payload = wire.decode(message, max_payload_bytes=_max_payload_bytes(self._n_bits))
        expected = {AWAIT_ACK: ACK, AWAIT_SEED: ANNOUNCE}.get(self.state)
        self._seq.accept(header, expected, KIND_NAMES, self.state)
        reader = wire.Reader(payload, KIND_NAMES[expected])
        n_bits, m_bits = reader.u64(), reader.u64()
        if n_bits != self._n_bits:
            raise PeerMessageError(f"peer key has {n_bits} bits, this end has {self._n_bits}")
        if expected == ACK:
            reader.finish()
            if m_bits != self._m_bits:
                raise PeerMessageError(f"peer acknowledged {m_bits} output bits, announced {self._m_bits}")
            self._advance(ACK)
            self._output, self._pending = self._pending, None
            return []
        if not 0 < m_bits <= n_bits:
            raise PeerMessageError(f"ANNOUNCE: output length {m_bits} not in [1, {n_bits}]")
        seed_mode = reader.u8()
        if bytes(reader.take(7)) != bytes(7):
            raise PeerMessageError("ANNOUNCE: reserved bytes not zero")
        seed_bits = n_bits + m_bits - 1
        if seed_mode == SEED_INLINE:
            seed = np.frombuffer(reader.words(words_for_bits(seed_bits)), dtype="<u8").astype(np.uint64)
            if seed_bits % 64 and int(seed[-1]) >> (seed_bits % 64):
                raise PeerMessageError("ANNOUNCE: seed has bits set past its length")
        elif seed_mode == SEED_SHAKE256:
            seed = randomness.expand_words(bytes(reader.take(randomness.SEED_BYTES)), words_for_bits(seed_bits),
                                           SEED_LABEL)
        else:
            raise PeerMessageError(f"ANNOUNCE: unknown seed mode {seed_mode}")
        reader.finish()
        self._advance(ANNOUNCE)
        self._m_bits = m_bits
        self._output = toeplitz_hash(seed, self._key, n_bits, m_bits)
        return [self._send(ACK, n_bits.to_bytes(8, "little") + m_bits.to_bytes(8, "little"))]

    @property
    def output(self) -> np.ndarray:
        """The amplified key, bit-packed (m_bits bits); available once the state is DONE."""
        if self._output is None:
            raise AmplificationStateError(f"no output yet (state {self.state})")
        return self._output

    @property
    def output_bits(self) -> int:
        return self._m_bits

    def _advance(self, event: str | int) -> None:
        next_state = TRANSITIONS.get((self.role, self.state, event))
        if next_state is None:
            if isinstance(event, int):
                raise PeerMessageError(f"unexpected {KIND_NAMES[event]} for {self.role} in state {self.state}")
            raise AmplificationStateError(f"{event}() not allowed for {self.role} in state {self.state}")
        self.state = next_state

    def _send(self, kind: int, payload: bytes) -> bytes:
        message = wire.encode(kind, self.frame_id, self._sent, payload)
        self._sent += 1
        return message
