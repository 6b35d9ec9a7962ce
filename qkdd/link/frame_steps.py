"""The frame bookkeeping every protocol's frame pipeline shares (qkdd.link.pipeline for BB84 and E91,
qkdd.link.cv_pipeline for GG02): records out, aborts either way, a refused store, and the last steps that
turn the verified key into stored keys (amplification seed, KEYS window, key split)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from qkdd.link import envelope, linkmsg
from qkdd.link.actions import Action, Commit, Discard, Finished, FrameOutcome, Send, StorePending
from qkdd.link.envelope import Step
from qkdd.link.linkmsg import AbortReason, LinkMessageError
from qkdd.postprocess import amplification, randomness, verification

ALICE, BOB = "alice", "bob"
DONE = "DONE"
# How far Alice's announced expiry may lie past Bob's own clock plus his key_expiry_s: clock differences
# between the hosts (a wall clock stepped by an hour), never years or NaN.
MAX_CLOCK_SKEW_S = 7200.0


_KEPT_AFTER_RELEASE = frozenset({"role", "frame_id", "settings", "state", "outcome"})


class FrameSteps:
    """Base of a frame pipeline; the subclass may override the hooks `_sent`, `_account_auth` and
    `_peer_parts_before_abort`."""

    def __init__(self, role: str, frame, settings, state: str, clock: Callable[[], float]):
        if role not in (ALICE, BOB):
            raise ValueError(f"role must be {ALICE!r} or {BOB!r}")
        self.role = role
        self.frame = frame
        self.frame_id = frame.frame_id
        self.settings = settings
        self.state = state
        self.outcome = FrameOutcome(frame.frame_id, role)
        self._clock = clock                 # wall clock (Unix seconds): Alice's key expiry, Bob's bound on it
        self._verify: verification.Verification | None = None
        self._amp: amplification.Amplification | None = None
        self._keys: tuple[bytes, int, int, float] | None = None      # Alice's KEYS: id seed, count, bits, expiry
        self._stored = False

    @property
    def done(self) -> bool:
        return self.state == DONE

    def release(self) -> None:
        """Drop what the ended frame holds (its device frame, sifting tables, key, reconciliation state) but
        its id, state and outcome. The engine calls it in a worker thread: freeing a large frame's hundreds of
        MB (munmap) would otherwise hold the event loop when the frame's task ends."""
        for name in [name for name in vars(self) if name not in _KEPT_AFTER_RELEASE]:
            setattr(self, name, None)

    def abort(self, reason: AbortReason, text: str) -> list[Action]:
        """Local decision to drop the frame (shutdown, timeout): tells the peer, discards pending keys."""
        if self.state == DONE:
            return []
        return self._abort(reason, text)

    def store_refused(self, action: Action, text: str) -> list[Action] | None:
        """The caller could not carry out the store action `action` (`text`: why, no key material). Returns
        the actions to run instead of the rest of this step's, or None to go on with them.

        A failed StorePending stored nothing: the frame is aborted at both ends. Alice's failed Commit
        leaves her keys pending and Bob's too: aborted, both discard. Bob's failed Commit comes after
        Alice committed, so nothing is aborted: his keys stay pending until the caller commits them
        again or a resynchronisation promotes them. A failed Discard leaves pending keys no one will
        commit (the next resynchronisation drops them)."""
        if isinstance(action, StorePending) or (isinstance(action, Commit) and self.role == ALICE):
            self._stored = isinstance(action, Commit)
            self.outcome.keys = self.outcome.secret_bits = 0
            return self._abort(AbortReason.STORE, text)
        return None

    # -- hooks ----------------------------------------------------------------------------------
    def _sent(self, record: bytes) -> None:
        """Called with each record this end sends (transcript authentication records it)."""

    def _account_auth(self) -> None:
        """Called when the frame ends in an abort (transcript authentication accounts its tags)."""

    def _peer_parts_before_abort(self, parts) -> None:
        """Called with the peer's ABORT record's parts: its last step's message may still count."""

    # -- records and aborts ---------------------------------------------------------------------
    def _unwrap(self, record: bytes) -> tuple[tuple[Step, ...], list[tuple[Step, memoryview]]]:
        """A peer record's steps and parts (LinkMessageError for another frame's record)."""
        frame_id, parts = envelope.decode(record)
        if frame_id != self.frame_id:
            raise LinkMessageError(f"record for frame {frame_id} given to frame {self.frame_id}")
        return tuple(step for step, _ in parts), parts

    def _handle(self, parts) -> list[Action]:
        """Hand a checked record's parts to this role's and state's handler (`_<role>_<state>`)."""
        handler = getattr(self, f"_{self.role}_{self.state.lower()}")
        return handler(*[body for _, body in parts])

    def _send(self, *parts: tuple[Step, bytes]) -> Send:
        record = envelope.encode(self.frame_id, list(parts))
        self._sent(record)
        return Send(record)

    def _abort(self, reason: AbortReason, text: str, before: list[tuple[Step, bytes]] | None = None) -> list[Action]:
        self.state = DONE
        self.outcome.aborted = text
        self.outcome.abort_code = int(reason)
        self._account_auth()
        actions: list[Action] = [self._send(*(before or []), (Step.ABORT, linkmsg.encode_abort(reason, text)))]
        if self._stored:
            actions.append(Discard(self.frame_id))
        actions.append(Finished(self.outcome))
        return actions

    def _peer_abort(self, parts) -> list[Action]:
        code, text = linkmsg.decode_abort(parts[-1][1])
        self._peer_parts_before_abort(parts)
        self.state = DONE
        self._account_auth()
        self.outcome.aborted = f"peer aborted: {text}"
        self.outcome.abort_code = code
        self.outcome.aborted_by_peer = True
        actions: list[Action] = [Discard(self.frame_id)] if self._stored else []
        actions.append(Finished(self.outcome))
        return actions

    # -- from the verified key to stored keys ---------------------------------------------------
    def _announce_keys(self, key, n_key_bits: int, count: int, key_bits: int, extra_bits: int = 0) -> bytes:
        """Alice: the amplification seed for count keys of key_bits (plus extra_bits first) and the KEYS
        she will announce (`_keys`: key-id seed, count, key_bits, expiry)."""
        self._amp = amplification.Amplification(amplification.ANNOUNCER, self.frame_id, key, n_key_bits)
        (seed_announce,) = self._amp.start(count * key_bits + extra_bits, amplification.SEED_SHAKE256)
        self._keys = (randomness.fresh_bytes(linkmsg.KEY_ID_SEED_BYTES), count, key_bits,
                      self._clock() + self.settings.key_expiry_s)
        return seed_announce

    def _check_expiry(self, expires_at: float) -> None:
        """Bob: Alice's KEYS expiry must lie ahead within key_expiry_s (and the clock skew allowed)."""
        now = self._clock()
        if not now < expires_at <= now + self.settings.key_expiry_s + MAX_CLOCK_SKEW_S:
            raise LinkMessageError(f"KEYS: the keys would expire {expires_at - now:+.0f} s from now on this end's "
                                   f"clock, outside (0, key_expiry_s {self.settings.key_expiry_s:g} + "
                                   f"{MAX_CLOCK_SKEW_S:g}] s (clocks or key_expiry_s differ between the ends)")

    def _receive_seed(self, key, n_key_bits: int, seed_announce, count: int, key_bits: int,
                      extra_bits: int = 0) -> bytes:
        """Bob: amplify with Alice's seed; her KEYS must split its output exactly. Returns the ACK."""
        self._amp = amplification.Amplification(amplification.RECEIVER, self.frame_id, key, n_key_bits)
        (ack,) = self._amp.receive(bytes(seed_announce))
        m_bits = self._amp.output_bits
        if key_bits % 64 or not 64 <= key_bits <= self.settings.max_key_bits_per_key \
                or count * key_bits + extra_bits != m_bits:
            refill = f" and a refill of {extra_bits} bits" if extra_bits else ""
            raise LinkMessageError(f"KEYS: {count} keys of {key_bits} bits{refill} do not split {m_bits} output bits")
        return ack

    def _key_material(self, seed: bytes, count: int, key_bits: int, offset_words: int = 0) -> list[tuple[str, bytes]]:
        """The frame's keys: count keys of key_bits from the amplified output after offset_words, with their
        ids derived from Alice's key-id seed."""
        words_per_key = key_bits // 64
        raw = np.ascontiguousarray(self._amp.output[offset_words:offset_words + count * words_per_key],
                                   dtype="<u8").tobytes()
        step = key_bits // 8
        ids = linkmsg.derive_key_ids(seed, count, self.frame_id)
        self.outcome.keys = count
        self.outcome.secret_bits = count * key_bits
        return [(ids[i], raw[i * step:(i + 1) * step]) for i in range(count)]
