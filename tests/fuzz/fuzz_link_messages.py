"""Fuzz target: link records from the peer. The input is one or more records, each behind a 4-byte
little-endian length. Every record goes to both ends of a frame's pipeline (Alice awaiting detections, Bob
after his SLOTS), and every part of it to the decoder of its step: the link's own messages (linkmsg.py)
and the post-processing exchanges (sifting, Cascade, verification, amplification: wire.py).

Expected: the pipelines turn every bad record into an ABORT and never raise; a decoder gives a message or
its own error type (EnvelopeError, LinkMessageError, PeerMessageError), and a refused exchange stays FAILED.
"""
from __future__ import annotations

import struct

import numpy as np

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from qkdd.bindings import bits
    from qkdd.hal.sim.frames import decoy_settings, raw_frames
    from qkdd.link import envelope, linkmsg
    from qkdd.link.envelope import Step
    from qkdd.link.pipeline import ALICE, BOB, Commit, Discard, Finished, FramePipeline, Send, StorePending
    from qkdd.postprocess import amplification, sifting, verification, wire
    from qkdd.postprocess.cascade import CascadeAlice, CascadeBob
    from qkdd.postprocess.ldpc import LdpcAlice, LdpcBob
    from tests.link_support import simulator

FRAME_ID = 9
_LENGTH = struct.Struct("<I")
_SIM = simulator(25.0, seed=11)
_FRAME = _SIM.run(10 ** 13, 600)
ALICE_FRAME, BOB_FRAME = raw_frames(_FRAME, FRAME_ID)
DECOY = decoy_settings(_SIM.params)
_ACTIONS = (Send, StorePending, Commit, Discard, Finished)

# Small exchanges for the post-processing parts (as in tests/test_postprocess_messages_property.py).
_rng = np.random.default_rng(4)
N_SLOTS, N_DETECTED, CLASSES = 512, 96, 3
_slots = np.sort(_rng.choice(N_SLOTS, N_DETECTED, replace=False)).astype(np.uint64)
BOB_DETECTIONS = sifting.BobDetections(N_SLOTS, _slots, _rng.integers(0, 2, N_DETECTED, dtype=np.uint8),
                                       _rng.integers(0, 2, N_DETECTED, dtype=np.uint8))
ALICE_RECORDS = sifting.AliceRecords.from_columns(_rng.integers(0, 2, N_SLOTS), _rng.integers(0, 2, N_SLOTS),
                                                  _rng.integers(0, CLASSES, N_SLOTS), CLASSES)
KEY_BITS = 16 * 64 - 13
KEY = bits.pack(_rng.integers(0, 2, KEY_BITS, dtype=np.uint8))
REVEAL_BITS = [70, 0, 5]
MAX_SLOTS = 4096


def _receivers(step: Step) -> list:
    """Fresh exchanges that take a message of `step` from the peer, in each state that takes one."""
    if step is Step.SIFT:
        bob = sifting.Sifting(sifting.BOB, FRAME_ID, BOB_DETECTIONS, CLASSES)
        bob.start()
        return [sifting.Sifting(sifting.ALICE, FRAME_ID, ALICE_RECORDS, CLASSES, revealed_classes=(2,)), bob]
    if step is Step.CASCADE:
        bob_key = KEY.copy()
        bob_key[3] ^= np.uint64(1 << 17)
        bob = CascadeBob(bob_key, KEY_BITS, FRAME_ID, 0.02, seed=bytes(32))
        bob.start()
        return [CascadeAlice(KEY, KEY_BITS, FRAME_ID), bob]
    if step is Step.LDPC:
        bob_key = KEY.copy()
        bob_key[3] ^= np.uint64(1 << 17)
        bob = LdpcBob(bob_key, KEY_BITS, FRAME_ID, 0.02, seed=bytes(32))
        bob.start()
        return [LdpcAlice(KEY, KEY_BITS, FRAME_ID), bob]
    if step is Step.VERIFY:
        announcer = verification.Verification(verification.ANNOUNCER, FRAME_ID, KEY, KEY_BITS, 2)
        announcer.start()
        return [verification.Verification(verification.CHECKER, FRAME_ID, KEY, KEY_BITS), announcer]
    announcer = amplification.Amplification(amplification.ANNOUNCER, FRAME_ID, KEY, KEY_BITS)
    announcer.start(KEY_BITS // 2, amplification.SEED_SHAKE256)
    return [amplification.Amplification(amplification.RECEIVER, FRAME_ID, KEY, KEY_BITS), announcer]


def _decode_part(step: Step, body: memoryview, exchanges: dict) -> None:
    try:
        if step is Step.SLOTS:
            slots = linkmsg.decode_slots(body, MAX_SLOTS)
            if slots.size > MAX_SLOTS or (slots.size > 1 and not bool(np.all(slots[1:] > slots[:-1]))):
                raise Finding(f"SLOTS decoded to {slots.size} slots that do not increase")
        elif step is Step.ESTIMATE:
            for decode in (lambda: linkmsg.decode_reveal(body, REVEAL_BITS),
                           lambda: linkmsg.decode_errors(body, REVEAL_BITS)):
                try:
                    decode()
                except linkmsg.LinkMessageError:
                    pass
        elif step is Step.KEYS:
            seed, count, key_bits, _expires_at = linkmsg.decode_keys(body)
            if len(seed) != linkmsg.KEY_ID_SEED_BYTES:
                raise Finding("KEYS seed of the wrong length")
        elif step is Step.ABORT:
            code, text = linkmsg.decode_abort(body)
            if len(text) > linkmsg.MAX_ABORT_TEXT_BYTES:
                raise Finding("ABORT text past its limit")
        elif step is not Step.COMMIT:
            wire.decode(body, max_payload_bytes=1 << 20)
            for exchange in exchanges.setdefault(step, _receivers(step)):
                if exchange.state == "FAILED" or str(getattr(exchange.state, "value", "")) == "FAILED":
                    continue
                try:
                    replies = exchange.receive(bytes(body))
                except wire.PeerMessageError:
                    if isinstance(exchange, wire.FrameExchange) and exchange.state != "FAILED":
                        raise Finding(f"{type(exchange).__name__} refused a message but is {exchange.state}")
                    continue
                if not all(isinstance(reply, bytes) for reply in replies):
                    raise Finding(f"{type(exchange).__name__} replied with {replies!r}")
    except (linkmsg.LinkMessageError, wire.PeerMessageError):
        pass


def _records(data: bytes) -> list[bytes]:
    records, at = [], 0
    while at + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        records.append(data[at:at + length])
        at += length
    return records or [data]


def TestOneInput(data: bytes) -> None:
    alice = FramePipeline(ALICE, ALICE_FRAME, decoy=DECOY)
    bob = FramePipeline(BOB, BOB_FRAME)
    bob.start()
    exchanges: dict = {}
    for record in _records(data):
        for end in (alice, bob):
            actions = end.receive(record)
            if not all(isinstance(action, _ACTIONS) for action in actions):
                raise Finding(f"{end.role} returned {actions!r}")
        try:
            frame_id, parts = envelope.decode(record)
        except envelope.EnvelopeError:
            continue
        if envelope.peek_frame_id(record) != frame_id or not 1 <= len(parts) <= envelope.MAX_PARTS:
            raise Finding("envelope header and decode disagree")
        for step, body in parts:
            _decode_part(step, body, exchanges)


def seeds() -> list[bytes]:
    from tests.link_support import Ends

    def container(records: list[bytes]) -> bytes:
        return b"".join(_LENGTH.pack(len(record)) + record for record in records)

    ends = Ends(ALICE_FRAME, BOB_FRAME, DECOY).run()
    from_bob = [record for role, record in ends.records if role == BOB]
    from_alice = [record for role, record in ends.records if role == ALICE]
    exchanges = []
    for step, message in [
            (Step.SIFT, sifting.Sifting(sifting.BOB, FRAME_ID, BOB_DETECTIONS, CLASSES).start()[0]),
            (Step.CASCADE, CascadeBob(KEY.copy(), KEY_BITS, FRAME_ID, 0.02, seed=bytes(32)).start()),
            (Step.LDPC, LdpcBob(KEY.copy(), KEY_BITS, FRAME_ID, 0.02, seed=bytes(32)).start()),
            (Step.VERIFY, verification.Verification(verification.ANNOUNCER, FRAME_ID, KEY, KEY_BITS, 2).start()[0]),
            (Step.AMPLIFY, amplification.Amplification(amplification.ANNOUNCER, FRAME_ID, KEY, KEY_BITS).start(
                KEY_BITS // 2, amplification.SEED_SHAKE256)[0])]:
        exchanges.append(envelope.encode(FRAME_ID, [(step, message)]))
    own = [envelope.encode(FRAME_ID, [(Step.SLOTS, linkmsg.encode_slots(_slots)),
                                      (Step.ESTIMATE, linkmsg.encode_errors([3, 0, 5]))]),
           envelope.encode(FRAME_ID, [(Step.KEYS, linkmsg.encode_keys(bytes(range(32)), 4, 256, 1.8e9)),
                                      (Step.COMMIT, b"")]),
           envelope.encode(FRAME_ID, [(Step.ABORT, linkmsg.encode_abort(linkmsg.AbortReason.QBER, "QBER 0.2"))])]
    return [container(from_bob), container(from_alice), container(exchanges), container(own)] + \
        [container([record]) for record in from_bob[:2] + exchanges + own]


if __name__ == "__main__":
    fuzz(TestOneInput)
