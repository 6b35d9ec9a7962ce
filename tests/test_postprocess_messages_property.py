"""The post-processing exchanges on mangled peer messages: each refuses with a PeerMessageError (Cascade: a
CascadeError, one of them) or takes the message, never another exception, and a refused exchange stays FAILED."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from qkdd.bindings import bits
from qkdd.postprocess import amplification, sifting, verification
from qkdd.postprocess.cascade import CascadeAlice, CascadeBob, CascadeError
from qkdd.postprocess.wire import PeerMessageError
from tests.mutations import edited, fields

FRAME_ID = 9
_rng = np.random.default_rng(4)
N_SLOTS, N_DETECTED, CLASSES = 3000, 400, 3
_slots = np.sort(_rng.choice(N_SLOTS, N_DETECTED, replace=False)).astype(np.uint64)
BOB_DETECTIONS = sifting.BobDetections(N_SLOTS, _slots, _rng.integers(0, 2, N_DETECTED, dtype=np.uint8),
                                       _rng.integers(0, 2, N_DETECTED, dtype=np.uint8))
ALICE_RECORDS = sifting.AliceRecords.from_columns(_rng.integers(0, 2, N_SLOTS), _rng.integers(0, 2, N_SLOTS),
                                                  _rng.integers(0, CLASSES, N_SLOTS), CLASSES)
KEY_BITS = 70 * 64 - 13
KEY = bits.pack(_rng.integers(0, 2, KEY_BITS, dtype=np.uint8))
U64_EDGES = [0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]


@st.composite
def mangled(draw, message: bytes) -> bytes:
    data = bytearray(draw(st.one_of(edited(message, overwrites=fields(U64_EDGES, 8, "little")),
                                    st.binary(max_size=64))))
    if len(data) >= 24 and draw(st.booleans()):        # keep the header's payload length consistent
        data[20:24] = (len(data) - 24).to_bytes(4, "little")
    return bytes(data)


def sifting_ends(step: int):
    """(receiving exchange, genuine message) for step 0 DETECTIONS, 1 ANSWER, 2 REPORT."""
    bob = sifting.Sifting(sifting.BOB, FRAME_ID, BOB_DETECTIONS, CLASSES)
    alice = sifting.Sifting(sifting.ALICE, FRAME_ID, ALICE_RECORDS, CLASSES, revealed_classes=(2,))
    (detections,) = bob.start()
    if step == 0:
        return alice, detections
    (answer,) = alice.receive(detections)
    if step == 1:
        return bob, answer
    (report,) = bob.receive(answer)
    return alice, report


def verification_ends(step: int):
    announcer = verification.Verification(verification.ANNOUNCER, FRAME_ID, KEY, KEY_BITS, 2)
    checker = verification.Verification(verification.CHECKER, FRAME_ID, KEY, KEY_BITS)
    (announce,) = announcer.start()
    if step == 0:
        return checker, announce
    (result,) = checker.receive(announce)
    return announcer, result


def amplification_ends(step: int, seed_mode: int):
    announcer = amplification.Amplification(amplification.ANNOUNCER, FRAME_ID, KEY, KEY_BITS)
    receiver = amplification.Amplification(amplification.RECEIVER, FRAME_ID, KEY, KEY_BITS)
    (announce,) = announcer.start(KEY_BITS // 2, seed_mode)
    if step == 0:
        return receiver, announce
    (ack,) = receiver.receive(announce)
    return announcer, ack


EXCHANGES = [("sifting", step) for step in range(3)] + [("verification", step) for step in range(2)] + \
    [("amplification", step, mode) for step in range(2) for mode in (amplification.SEED_INLINE,
                                                                      amplification.SEED_SHAKE256)]


def build(case):
    if case[0] == "sifting":
        return sifting_ends(case[1])
    if case[0] == "verification":
        return verification_ends(case[1])
    return amplification_ends(case[1], case[2])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EXCHANGES), st.data())
def test_mangled_messages_are_taken_or_refused_with_a_peer_message_error(case, data):
    receiver, genuine = build(case)
    message = data.draw(mangled(genuine))
    try:
        replies = receiver.receive(message)
    except PeerMessageError:
        assert receiver.state == "FAILED"
        try:
            receiver.receive(genuine)
        except PeerMessageError as again:
            assert "already failed" in str(again)
        else:
            raise AssertionError("a failed exchange took a message")
        return
    assert receiver.state in ("AWAIT_REPORT", "DONE") and all(isinstance(reply, bytes) for reply in replies)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mangled_cascade_start_and_questions_are_answered_or_refused_with_a_cascade_error(data):
    bob_key = KEY.copy()
    bob_key[3] ^= np.uint64(1 << 17)
    bob = CascadeBob(bob_key, KEY_BITS, FRAME_ID, 0.02, seed=bytes(32))
    alice = CascadeAlice(KEY, KEY_BITS, FRAME_ID)
    start = bob.start()
    if data.draw(st.booleans()):
        message = data.draw(mangled(start))
    else:
        (parities,) = alice.receive(start)
        (questions,) = bob.receive(parities)
        message = data.draw(mangled(questions))
    try:
        replies = alice.receive(message)
    except CascadeError:
        return
    assert len(replies) <= 1 and all(isinstance(reply, bytes) for reply in replies)
