"""Cascade Alice and Bob against each other through serialized messages: correctness, frame error
rate, determinism, and refusal of bad messages and buffers."""
import json
import struct

import numpy as np
import pytest

from bench.reconcile import binary_entropy, noisy_pair, reconcile
from qkdd.postprocess import cascade as proto
from qkdd.postprocess import wire
from qkdd.postprocess.cascade import (CascadeAlice, CascadeBob, CascadeFrameError, CascadeMessageError,
                                      CascadeSequenceError, CascadeStateError)
from qkdd.postprocess.cascade_schedules import schedule

SEED = bytes(range(32))


@pytest.mark.parametrize("n", [10_000, 100_000, 1_000_000])
@pytest.mark.parametrize("qber", [0.005, 0.02, 0.05, 0.08])
def test_efficient_schedule_corrects_every_error(n, qber):
    rng = np.random.default_rng(int(n * qber * 1000))
    alice_key, bob_key = noisy_pair(rng, n, qber, "exact")
    errors = round(qber * n)
    bob, alice = reconcile(alice_key, bob_key, n, qber, "efficient", frame_id=7, seed=SEED)
    assert np.array_equal(alice_key, bob_key)
    assert bob.corrected_bits == errors == alice.corrected_bits
    assert bob.disclosed_bits == alice.disclosed_bits
    assert bob.round_trips == alice.round_trips
    # Cascade cannot beat the Shannon limit, and the efficient schedule stays near it (the fixed
    # cost of the top-level parities weighs more in small frames with few errors).
    limit = 1.1 if n * binary_entropy(qber) > 10_000 else 1.3
    assert n * binary_entropy(qber) < bob.disclosed_bits < limit * n * binary_entropy(qber)


@pytest.mark.parametrize("algo", ["original", "yan"])
@pytest.mark.parametrize("qber", [0.01, 0.05, 0.08])
def test_other_schedules_correct_every_error(algo, qber):
    n = 100_000
    rng = np.random.default_rng(11)
    alice_key, bob_key = noisy_pair(rng, n, qber, "bernoulli")
    errors = int(np.unpackbits((alice_key ^ bob_key).view(np.uint8)).sum())
    bob, _ = reconcile(alice_key, bob_key, n, qber, algo, frame_id=1, seed=SEED)
    assert np.array_equal(alice_key, bob_key)
    assert bob.corrected_bits == errors


@pytest.mark.parametrize("true_qber,estimate", [(0.03, 0.02), (0.02, 0.03), (0.06, 0.04)])
def test_corrects_when_estimate_is_off(true_qber, estimate):
    n = 100_000
    rng = np.random.default_rng(5)
    alice_key, bob_key = noisy_pair(rng, n, true_qber, "exact")
    bob, _ = reconcile(alice_key, bob_key, n, estimate, "efficient", frame_id=2)
    assert np.array_equal(alice_key, bob_key)
    assert bob.corrected_bits == round(true_qber * n)


def test_frame_error_rate_over_1000_frames():
    # 1000 frames of 10^4 bits at 3 % (Bernoulli noise), each with its own shuffle seed. Noise and seeds come
    # from one seeded generator, so the count is the same on every run: with seeds from os.urandom the
    # count itself is random (about 0.4 failed frames per 1000 here), and a bound of 1 in 1000 failed about
    # one run in twenty.
    n, qber, frames = 10_000, 0.03, 1000
    rng = np.random.default_rng(2024)
    failures = 0
    disclosed = 0
    for frame in range(frames):
        alice_key, bob_key = noisy_pair(rng, n, qber, "bernoulli")
        bob, _ = reconcile(alice_key, bob_key, n, qber, "efficient", frame_id=frame, seed=rng.bytes(32))
        failures += not np.array_equal(alice_key, bob_key)
        disclosed += bob.disclosed_bits
    assert failures / frames <= 1 / 1000, f"frame error rate {failures / frames}"
    assert disclosed / (frames * n * binary_entropy(qber)) < 1.2


def _transcript(seed):
    rng = np.random.default_rng(3)
    alice_key, bob_key = noisy_pair(rng, 20_000, 0.04, "exact")
    bob = CascadeBob(bob_key, 20_000, 9, 0.04, seed=seed)
    alice = CascadeAlice(alice_key, 20_000, 9)
    sent = [bob.start()]
    while not alice.done:
        replies = alice.receive(sent[-1])
        if not replies:
            break
        sent.extend(replies)
        sent.extend(bob.receive(replies[0]))
    return sent, bob_key


def test_deterministic_for_a_seed():
    first, key1 = _transcript(SEED)
    second, key2 = _transcript(SEED)
    other, _ = _transcript(bytes(32))
    assert first == second
    assert np.array_equal(key1, key2)
    assert first != other  # a different seed shuffles differently


def test_seed_comes_from_os_when_not_given():
    key = np.zeros(2, dtype=np.uint64)
    assert CascadeBob(key, 100, 0, 0.02).seed != CascadeBob(key.copy(), 100, 0, 0.02).seed


@pytest.fixture
def pair():
    rng = np.random.default_rng(8)
    alice_key, bob_key = noisy_pair(rng, 50_000, 0.03, "exact")
    bob = CascadeBob(bob_key, 50_000, 42, 0.03, seed=SEED)
    alice = CascadeAlice(alice_key, 50_000, 42)
    start = bob.start()
    parities = alice.receive(start)[0]
    questions = bob.receive(parities)[0]
    return alice, bob, alice_key, bob_key, start, parities, questions


def _finish(alice, bob, questions):
    message = questions
    while True:
        replies = alice.receive(message)
        if not replies:
            return
        message = bob.receive(replies[0])[0]


def _reheader(message, **fields):
    magic, version, msg_type, reserved, frame, seq, length = wire.HEADER.unpack_from(message)
    values = dict(magic=magic, version=version, msg_type=msg_type, reserved=reserved, frame=frame, seq=seq,
                  length=length)
    values.update(fields)
    return wire.HEADER.pack(values["magic"], values["version"], values["msg_type"], values["reserved"],
                            values["frame"], values["seq"], values["length"]) + message[wire.HEADER_BYTES:]


def test_bad_messages_raise_and_change_nothing(pair):
    alice, bob, alice_key, bob_key, start, parities, questions = pair
    answers = alice.receive(questions)[0]
    bad_for_bob = {
        CascadeMessageError: [answers[:10], answers[:-1], answers + b"\0", _reheader(answers, version=2),
                              _reheader(answers, magic=b"XXXX"), _reheader(answers, msg_type=0x99),
                              _reheader(answers, reserved=1), _reheader(answers, length=2 ** 32 - 1),
                              questions, b"", "not bytes"],
        CascadeFrameError: [_reheader(answers, frame=43)],
        CascadeSequenceError: [parities, _reheader(answers, seq=5)],
        CascadeStateError: [proto.encode(proto.MessageType.DONE, 42, 1, bytes(20))],
    }
    for error, messages in bad_for_bob.items():
        for message in messages:
            with pytest.raises(error):
                bob.receive(message)
    # Replaying the questions to Alice, or skipping ahead, is refused; so is a second START.
    with pytest.raises(CascadeSequenceError, match="replayed"):
        alice.receive(questions)
    with pytest.raises(CascadeSequenceError, match="out-of-order"):
        alice.receive(_reheader(questions, seq=7))
    with pytest.raises(CascadeStateError):
        alice.receive(start)
    with pytest.raises(CascadeMessageError, match="oversized"):
        alice.receive(_reheader(questions, length=10 ** 9))
    # After all that, the exchange goes on and reconciles the key.
    _finish(alice, bob, bob.receive(answers)[0])
    assert bob.done and alice.done
    assert np.array_equal(alice_key, bob_key)
    with pytest.raises(CascadeStateError):
        bob.receive(answers)


def test_bad_payloads_are_refused(pair):
    alice, bob, *_ , questions = pair
    body = bytearray(questions[proto.HEADER_BYTES:])
    # A question about a range past the end of the key.
    tampered = bytearray(body)
    struct.pack_into("<BII", tampered, 4, 0, 49_999, 2)
    with pytest.raises(CascadeMessageError, match="questions refused"):
        alice.receive(proto.encode(proto.MessageType.QUESTIONS, 42, 1, bytes(tampered)))
    # A count that promises more questions than the payload holds (and one that would overflow).
    for count in (len(body), 2 ** 32 - 1):
        struct.pack_into("<I", tampered, 0, count)
        with pytest.raises(CascadeMessageError):
            alice.receive(proto.encode(proto.MessageType.QUESTIONS, 42, 1, bytes(tampered)))
    # Answers of the wrong count, and nonzero padding bits, are refused by Bob.
    answers = alice.receive(questions)[0]
    payload = bytearray(answers[proto.HEADER_BYTES:])
    short = proto.encode(proto.MessageType.PARITIES, 42, 1, bytes(payload[:-1]))
    with pytest.raises(CascadeMessageError):
        bob.receive(short)
    count = struct.unpack_from("<I", payload)[0]
    if count % 8:
        payload[-1] |= 0x80
        with pytest.raises(CascadeMessageError, match="answers refused"):
            bob.receive(proto.encode(proto.MessageType.PARITIES, 42, 1, bytes(payload)))


def test_start_and_done_are_checked():
    key = np.zeros(16, dtype=np.uint64)
    bob = CascadeBob(key.copy(), 1000, 3, 0.02, seed=SEED)
    start = bob.start()
    with pytest.raises(CascadeStateError):
        bob.start()
    with pytest.raises(CascadeMessageError, match="1000-bit frame, Alice holds 1024"):
        CascadeAlice(key, 1024, 3).receive(start)
    body = bytearray(start[proto.HEADER_BYTES:])
    body[40 + 2 + 4 * 5] = 9  # kind of the fifth pass
    with pytest.raises(CascadeMessageError, match="unknown pass kind"):
        CascadeAlice(key[:16], 1000, 3).receive(proto.encode(proto.MessageType.START, 3, 0, bytes(body)))
    with pytest.raises(CascadeMessageError, match="does not hold"):
        CascadeAlice(key, 1000, 3).receive(proto.encode(proto.MessageType.START, 3, 0, start[wire.HEADER_BYTES:-1]))
    # A DONE whose counts disagree with Alice's is refused.
    alice_key = np.zeros(16, dtype=np.uint64)
    alice = CascadeAlice(alice_key, 1000, 3)
    (parities,) = alice.receive(start)
    (done,) = bob.receive(parities)  # same key on both ends: no errors, no questions
    assert bob.done and bob.corrected_bits == 0
    forged = done[:proto.HEADER_BYTES] + struct.pack("<QQI", 1, 0, 1)
    with pytest.raises(CascadeMessageError, match="DONE reports"):
        alice.receive(forged)
    assert alice.receive(done) == [] and alice.done


def test_done_reporting_more_corrected_bits_than_the_frame_holds_is_refused():
    """Alice reports the frame's QBER from Bob's corrected count: it cannot exceed the frame's length."""
    key = np.zeros(16, dtype=np.uint64)
    bob, alice = CascadeBob(key.copy(), 1000, 3, 0.02, seed=SEED), CascadeAlice(key, 1000, 3)
    (done,) = bob.receive(alice.receive(bob.start())[0])
    disclosed, _, round_trips = struct.unpack("<QQI", done[proto.HEADER_BYTES:])
    forged = done[:proto.HEADER_BYTES] + struct.pack("<QQI", disclosed, 2**64 - 1, round_trips)
    with pytest.raises(CascadeMessageError, match="corrected"):
        alice.receive(forged)
    assert not alice.done and alice.receive(done) == [] and alice.corrected_bits == 0


def test_wrong_buffers_raise():
    with pytest.raises(ValueError, match="needs 2"):
        CascadeBob(np.zeros(3, dtype=np.uint64), 100, 0, 0.02)
    with pytest.raises(TypeError):
        CascadeBob(np.zeros(2, dtype=np.int64), 100, 0, 0.02)
    with pytest.raises(TypeError):
        CascadeAlice(list(range(2)), 100, 0)
    with pytest.raises(ValueError, match="must be 1 to"):
        CascadeAlice(np.zeros(0, dtype=np.uint64), 0, 0)
    read_only = np.zeros(2, dtype=np.uint64)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        CascadeBob(read_only, 100, 0, 0.02)
    with pytest.raises(ValueError, match="QBER"):
        CascadeBob(np.zeros(2, dtype=np.uint64), 100, 0, 0.7)
    with pytest.raises(ValueError, match="unknown Cascade schedule"):
        CascadeBob(np.zeros(2, dtype=np.uint64), 100, 0, 0.02, schedule="nope")
    with pytest.raises(ValueError, match="frame_id"):
        CascadeAlice(np.zeros(2, dtype=np.uint64), 100, -1)


def test_schedules_follow_the_papers():
    # Brassard-Salvail: k1 = ceil(0.73/Q), doubling, four passes.
    assert [k for _, k in schedule("original", 0.02, 10 ** 6)] == [37, 74, 148, 296]
    # Yan et al.: k1 = ceil(0.8/Q), k2 = 5 k1.
    assert [k for _, k in schedule("yan", 0.02, 10 ** 6)][:2] == [40, 200]
    efficient = schedule("efficient", 0.02, 10 ** 6)
    assert len(efficient) == 14 and [k for _, k in efficient][:2] == [64, 512]


def test_lookahead_trades_parities_for_round_trips():
    n, qber = 100_000, 0.04
    results = {}
    for lookahead in (None, (64, 3)):
        rng = np.random.default_rng(21)
        alice_key, bob_key = noisy_pair(rng, n, qber, "exact")
        bob, alice = reconcile(alice_key, bob_key, n, qber, "efficient", 4, seed=SEED, lookahead=lookahead)
        assert np.array_equal(alice_key, bob_key)
        assert bob.disclosed_bits == alice.disclosed_bits
        results[lookahead] = bob
    assert results[(64, 3)].round_trips < results[None].round_trips
    assert results[(64, 3)].disclosed_bits > results[None].disclosed_bits
    with pytest.raises(ValueError, match="levels must be"):
        CascadeBob(np.zeros(2, dtype=np.uint64), 100, 0, 0.02, lookahead=(8, 9))


def test_alice_caps_what_she_discloses():
    n = 4096
    key = np.zeros(n // 64, dtype=np.uint64)
    # A START whose block parities alone would reveal the whole key (blocks of one bit) is refused.
    greedy = proto.encode(proto.MessageType.START, 5, 0, struct.pack("<Q32sH", n, SEED, 1) + struct.pack("<BI", 0, 1))
    alice = CascadeAlice(key, n, 5)
    with pytest.raises(CascadeMessageError, match="4096 block parities"):
        alice.receive(greedy)
    assert alice.state is proto.State.AWAIT_START
    # Questions past the cap are refused before any is answered.
    rng = np.random.default_rng(6)
    alice_key, bob_key = noisy_pair(rng, n, 0.05, "exact")
    bob = CascadeBob(bob_key, n, 5, 0.05, seed=SEED)
    alice = CascadeAlice(alice_key, n, 5, max_disclosed_bits=900)
    questions = bob.receive(alice.receive(bob.start())[0])[0]
    with pytest.raises(CascadeMessageError, match="more than the 900 allowed"):
        while True:
            questions = bob.receive(alice.receive(questions)[0])[0]
    assert alice.disclosed_bits <= 900


def test_mutated_messages_are_refused_or_harmless():
    # Flip random bytes of real messages: each end either refuses with a CascadeError or, when the
    # mutation leaves a well-formed message (say, a different parity bit), carries on; nothing crashes.
    rng = np.random.default_rng(77)
    n = 20_000
    for trial in range(150):
        alice_key, bob_key = noisy_pair(rng, n, 0.03, "exact")
        bob = CascadeBob(bob_key, n, 1, 0.03, seed=SEED)
        alice = CascadeAlice(alice_key, n, 1)
        message, to_alice = bob.start(), True
        target = int(rng.integers(0, 6))
        for step in range(40):
            if step == target:
                mutated = bytearray(message)
                for _ in range(int(rng.integers(1, 4))):
                    mutated[int(rng.integers(0, len(mutated)))] ^= int(rng.integers(1, 256))
                if rng.random() < 0.3:
                    mutated = mutated[:int(rng.integers(0, len(mutated)))]
                message = bytes(mutated)
            try:
                replies = alice.receive(message) if to_alice else bob.receive(message)
            except proto.CascadeError:
                break
            if not replies:
                break
            message, to_alice = replies[0], not to_alice


def test_bench_reconcile_takes_cascade_as_its_most_efficient_schedule(capsys):
    """`bench.reconcile --algo cascade` runs the "efficient" schedule and names the run after it."""
    from bench.reconcile import main
    main(["--algo", "cascade", "--n", "20000", "--qber", "0.02", "--frames", "2"])
    (line,) = capsys.readouterr().out.strip().splitlines()
    result = json.loads(line)
    assert result["algo"] == "efficient" and result["frame_errors"] == 0 and result["efficiency"] < 1.3
