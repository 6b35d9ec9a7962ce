"""Cascade with BICONF rounds (cascade_schedules.py), Alice and Bob through serialized messages:
every error corrected, the added disclosure, residual errors fixed, bad BICONF messages refused."""
import struct

import numpy as np
import pytest

from bench.reconcile import noisy_pair, reconcile
from qkdd.bindings.cascade import MAX_PASSES, PASS_HALVES
from qkdd.postprocess import cascade as proto
from qkdd.postprocess.cascade import CascadeAlice, CascadeBob, CascadeMessageError
from qkdd.postprocess.cascade_schedules import schedule

SEED = bytes(range(32))
ROUNDS = 6


@pytest.mark.parametrize("n", [10_000, 100_000])
@pytest.mark.parametrize("qber", [0.01, 0.04, 0.08])
def test_biconf_corrects_every_error_and_costs_its_parities(n, qber):
    rng = np.random.default_rng(int(n * qber * 100))
    alice_key, bob_key = noisy_pair(rng, n, qber, "exact")
    plain_key = bob_key.copy()
    bob, alice = reconcile(alice_key, bob_key, n, qber, "efficient", frame_id=5, seed=SEED,
                           biconf_rounds=ROUNDS)
    assert np.array_equal(alice_key, bob_key)
    assert bob.corrected_bits == round(qber * n) == alice.corrected_bits
    assert bob.disclosed_bits == alice.disclosed_bits and bob.round_trips == alice.round_trips
    assert alice.passes[-ROUNDS:] == [(PASS_HALVES, 0)] * ROUNDS
    # Same frame and seed without BICONF: the configured passes run identically, BICONF adds at
    # least one parity (subset) per round.
    plain, _ = reconcile(alice_key, plain_key, n, qber, "efficient", frame_id=5, seed=SEED)
    assert np.array_equal(alice_key, plain_key)
    assert bob.disclosed_bits >= plain.disclosed_bits + ROUNDS
    assert bob.round_trips >= plain.round_trips


def _residual_frame():
    """Two errors the original schedule cannot see: estimated QBER 1e-4 gives a first block of
    7300 bits and three passes of one block of the whole 10^4-bit frame, all of even error count."""
    n = 10_000
    rng = np.random.default_rng(3)
    alice_key, _ = noisy_pair(rng, n, 0.0, "exact")
    bob_key = alice_key.copy()
    bob_key[0] ^= np.uint64((1 << 10) | (1 << 20))
    return n, alice_key, bob_key


def test_biconf_fixes_errors_left_after_the_passes():
    n, alice_key, bob_key = _residual_frame()
    plain, _ = reconcile(alice_key, bob_key, n, 1e-4, "original", frame_id=9, seed=SEED)
    assert plain.done and plain.corrected_bits == 0
    assert not np.array_equal(alice_key, bob_key)
    bob, alice = reconcile(alice_key, bob_key, n, 1e-4, "original", frame_id=9, seed=SEED, biconf_rounds=24)
    assert np.array_equal(alice_key, bob_key)
    assert bob.corrected_bits == 2 == alice.corrected_bits
    assert bob.round_trips > plain.round_trips  # the searches in the BICONF halves cost rounds


def test_bad_biconf_messages_are_refused():
    n, alice_key, bob_key = _residual_frame()
    bob = CascadeBob(bob_key, n, 9, 1e-4, schedule="original", seed=SEED, biconf_rounds=24)
    alice = CascadeAlice(alice_key, n, 9)
    questions = bob.receive(alice.receive(bob.start())[0])[0]
    body = bytearray(questions[proto.HEADER_BYTES:])
    count = struct.unpack_from("<I", body)[0]
    asked_passes = {body[4 + 9 * i] for i in range(count)}
    assert min(asked_passes) >= 4  # only BICONF rounds (after the 4 configured passes) see the errors
    for pass_index, start, length in [(4 + 24, 0, 1), (255, 0, 1), (4, n - 1, 2), (4, 0, 0)]:
        tampered = bytearray(body)
        struct.pack_into("<BII", tampered, 4, pass_index, start, length)
        with pytest.raises(CascadeMessageError, match="questions refused"):
            alice.receive(proto.encode(proto.MessageType.QUESTIONS, 9, 1, bytes(tampered)))
    # A START announcing more BICONF rounds than a frame may have passes is refused.
    start = bytearray(CascadeBob(bob_key.copy(), n, 9, 1e-4, schedule="original", seed=SEED,
                                 biconf_rounds=MAX_PASSES - 4).start()[proto.HEADER_BYTES:])
    struct.pack_into("<H", start, 40, MAX_PASSES + 1)
    with pytest.raises(CascadeMessageError, match="passes, 1 to"):
        CascadeAlice(alice_key, n, 9).receive(proto.encode(proto.MessageType.START, 9, 0, bytes(start)))
    start += struct.pack("<BI", PASS_HALVES, 0)
    with pytest.raises(CascadeMessageError, match="oversized"):
        CascadeAlice(alice_key, n, 9).receive(proto.encode(proto.MessageType.START, 9, 0, bytes(start)))
    # The refused messages changed nothing: the exchange goes on and fixes the frame.
    message = questions
    while not bob.done:
        (answers,) = alice.receive(message)
        (message,) = bob.receive(answers)
    assert alice.receive(message) == [] and alice.done
    assert np.array_equal(alice_key, bob_key)


def test_biconf_rounds_are_checked():
    assert schedule("efficient", 0.02, 10_000) == schedule("efficient", 0.02, 10_000, 0)  # off by default
    assert schedule("yan", 0.02, 10_000, 3)[-3:] == [(PASS_HALVES, 0)] * 3
    for bad in (-1, 1.5, True, MAX_PASSES - 13):
        with pytest.raises(ValueError, match="biconf_rounds|BICONF"):
            schedule("efficient", 0.02, 10_000, bad)
    with pytest.raises(ValueError, match="BICONF"):
        CascadeBob(np.zeros(2, dtype=np.uint64), 100, 0, 0.02, biconf_rounds=MAX_PASSES)
