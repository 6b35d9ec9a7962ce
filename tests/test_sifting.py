"""Sifting: both ends through serialized messages against a numpy reference (sifted bits, index sets,
decoy counts, revealed errors), portable and SIMD kernels alike, and refusal of bad records/messages."""
import numpy as np
import pytest

from qkdd.bindings import NativeBufferError, NativeProtocolError, NativeRangeError, bits
from qkdd.bindings import sift as kernel
from qkdd.postprocess import sifting as sf
from qkdd.postprocess import wire
from qkdd.postprocess.wire import PeerMessageError

N_CLASSES = 3


def _frame(n_slots=50_000, detect=0.2, qber=0.03, seed=1):
    rng = np.random.default_rng(seed)
    value = rng.integers(0, 2, n_slots)
    basis = rng.integers(0, 2, n_slots)
    intensity = rng.choice(N_CLASSES, n_slots, p=[0.6, 0.3, 0.1])
    slots = np.flatnonzero(rng.random(n_slots) < detect).astype(np.uint64)
    bob_basis = rng.integers(0, 2, slots.size).astype(np.uint8)
    flips = rng.random(slots.size) < qber
    outcome = np.where(bob_basis == basis[slots], value[slots] ^ flips, rng.integers(0, 2, slots.size))
    records = sf.AliceRecords.from_columns(value, basis, intensity, N_CLASSES)
    detections = sf.BobDetections(n_slots, slots, bob_basis, outcome.astype(np.uint8))
    return (value, basis, intensity), records, detections


def _exchange(records, detections, revealed=(1, 2), frame_id=11):
    alice = sf.Sifting(sf.ALICE, frame_id, records, N_CLASSES, revealed_classes=revealed)
    bob = sf.Sifting(sf.BOB, frame_id, detections, N_CLASSES)
    [announce] = bob.start()
    [answer] = alice.receive(announce)
    [report] = bob.receive(answer)
    assert alice.receive(report) == []
    assert alice.state == bob.state == sf.DONE
    return alice.result, bob.result, (announce, answer, report)


def test_both_ends_agree_with_a_numpy_reference():
    (value, basis, intensity), records, det = _frame()
    a, b, _ = _exchange(records, det)
    s = det.slots.astype(int)
    matched = det.basis == basis[s]
    for c in range(N_CLASSES):
        for k in (0, 1):
            sent = np.sum((intensity == c) & (basis == k))
            detected = np.sum((intensity[s] == c) & (det.basis == k))
            keep = matched & (intensity[s] == c) & (det.basis == k)
            for result in (a, b):
                assert result.counts.sent[c, k] == sent
                assert result.counts.detected[c, k] == detected
                assert result.counts.matched[c, k] == keep.sum()
                assert np.array_equal(result.sifted_slots(c, k), det.slots[keep])
            words_a, n_a = a.key_bits(c, k)
            words_b, n_b = b.key_bits(c, k)
            assert n_a == n_b == keep.sum()
            assert np.array_equal(bits.unpack(words_a, n_a), value[s][keep])
            assert np.array_equal(bits.unpack(words_b, n_b), det.outcome[keep])
            errors = np.sum(value[s][keep] != det.outcome[keep])
            expected_errors = errors if c in (1, 2) else 0
            assert a.counts.errors[c, k] == b.counts.errors[c, k] == expected_errors
    assert a.counts.revealed_classes == b.counts.revealed_classes == (1, 2)
    assert 0 < a.counts.errors[1].sum() < a.counts.matched[1].sum() * 0.1


def test_portable_and_simd_kernels_agree():
    _, records, det = _frame(n_slots=10_000, seed=2)
    bases = np.zeros((det.slots.size + 63) // 64, np.uint64)
    packed = np.packbits(det.basis, bitorder="little")
    bases.view(np.uint8)[:packed.size] = packed
    code = kernel.encode_slots(det.slots, det.n_slots)
    assert np.array_equal(kernel.decode_slots(code, det.slots.size, det.n_slots), det.slots)
    fast = kernel.alice(records.states, code, det.slots.size, bases, N_CLASSES)
    slow = kernel.alice(records.states, code, det.slots.size, bases, N_CLASSES, portable=True)
    for name in ("match", "classes", "counts", "key", "group_bits"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
    for n_classes in (1, 4, 5, 16):  # SIMD path up to four classes, histogram above
        states = np.random.default_rng(n_classes).integers(0, 4 * n_classes, 100_003, dtype=np.uint8)
        reference = np.bincount(states >> 1, minlength=2 * n_classes).reshape(n_classes, 2)
        assert np.array_equal(kernel.sent_counts(states, n_classes), reference)
        assert np.array_equal(kernel.sent_counts(states, n_classes, portable=True), reference)
        states[77_777] = 4 * n_classes  # a class too many, found by both paths
        for portable in (False, True):
            with pytest.raises(NativeBufferError, match="malformed state at slot 77777"):
                kernel.sent_counts(states, n_classes, portable=portable)
    fast_b = kernel.bob(det.basis, det.outcome, fast.match, fast.classes, N_CLASSES)
    slow_b = kernel.bob(det.basis, det.outcome, fast.match, fast.classes, N_CLASSES, portable=True)
    assert np.array_equal(fast_b.key, slow_b.key) and np.array_equal(fast_b.counts, slow_b.counts)


def test_no_detections_and_no_revealed_classes():
    _, records, _ = _frame(n_slots=1000)
    empty = sf.BobDetections(1000, np.zeros(0, np.uint64), np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    a, b, _ = _exchange(records, empty, revealed=())
    assert a.counts.detected.sum() == b.counts.matched.sum() == 0
    assert a.counts.sent.sum() == 1000
    assert a.key_bits(0, 0)[1] == 0


def test_bad_local_records_are_refused():
    with pytest.raises(NativeProtocolError, match="duplicate slot 5 at index 2"):
        sf.BobDetections(10, np.array([1, 5, 5], np.uint64), np.zeros(3, np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(NativeProtocolError, match="unsorted slot 2 at index 2"):
        sf.BobDetections(10, np.array([1, 5, 2], np.uint64), np.zeros(3, np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(NativeRangeError, match="slot 10 at index 1 is outside the frame of 10 slots"):
        sf.BobDetections(10, np.array([1, 10], np.uint64), np.zeros(2, np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="one entry per slot"):
        sf.BobDetections(10, np.array([1, 2], np.uint64), np.zeros(3, np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="intensity classes"):
        sf.AliceRecords.from_columns(np.zeros(4), np.zeros(4), np.array([0, 1, 3, 0]), 3)
    with pytest.raises(NativeBufferError, match="malformed state at slot 2") as refused:
        kernel.sent_counts(np.array([0, 1, 0x41], np.uint8), 3)
    assert "0x41" not in str(refused.value) and "65" not in str(refused.value)  # the state holds a key bit
    with pytest.raises(NativeBufferError, match="detection 1: outcome must be 0 or 1"):
        kernel.bob(np.zeros(2, np.uint8), np.array([0, 2], np.uint8), np.zeros(1, np.uint64),
                   np.zeros(2, np.uint8), 3)
    with pytest.raises(NativeBufferError, match="match words"):
        kernel.bob(np.zeros(2, np.uint8), np.zeros(2, np.uint8), np.zeros(2, np.uint64), np.zeros(2, np.uint8), 3)
    with pytest.raises(TypeError):
        kernel.bob(np.zeros(2, np.int8), np.zeros(2, np.uint8), np.zeros(1, np.uint64), np.zeros(2, np.uint8), 3)


def _varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _detections_message(n_slots, gaps, frame_id=11, seq=0, bases=None, count=None, code=None, pad=None):
    """A DETECTIONS message written by hand: `gaps` are the stream values (first slot, then gap - 1)."""
    code = b"".join(_varint(g) for g in gaps) if code is None else code
    count = len(gaps) if count is None else count
    words = np.zeros((count + 63) // 64, "<u8") if bases is None else bases
    pad = bytes(-len(code) % 8) if pad is None else pad
    payload = np.array([n_slots, count, len(code)], "<u8").tobytes() + code + pad + words.tobytes()
    return wire.encode(sf.DETECTIONS, frame_id, seq, payload)


def test_hand_written_stream_is_read_as_documented():
    _, records, _ = _frame(n_slots=200)
    alice = sf.Sifting(sf.ALICE, 11, records, N_CLASSES)
    bob_basis = np.array([0b101], "<u8")  # detections 0 and 2 measured in X
    [answer] = alice.receive(_detections_message(200, [3, 0, 150], bases=bob_basis))  # slots 3, 4, 155
    states = records.states[[3, 4, 155]]
    match = np.frombuffer(answer, "<u8", count=1, offset=wire.HEADER_BYTES + 24 + 16 * N_CLASSES)[0]
    expected = sum(1 << i for i, b in enumerate([1, 0, 1]) if (states[i] >> 1 & 1) == b)
    assert int(match) == expected
    assert list(np.frombuffer(answer, np.uint8, count=3, offset=wire.HEADER_BYTES + 32 + 16 * N_CLASSES)) == \
        list(states >> 2)


def test_bad_detections_messages_raise_clear_errors():
    _, records, det = _frame(n_slots=2000)
    [good] = sf.Sifting(sf.BOB, 11, det, N_CLASSES).start()

    def alice():
        return sf.Sifting(sf.ALICE, 11, records, N_CLASSES)

    cases = [
        (good[:20], "truncated message: 20 bytes"),
        (good[:-1], "truncated message: payload"),
        (good + b"\0" * 8, "past its declared payload"),
        (_detections_message(2000, [1, 2], frame_id=12), "frame 12, this exchange is frame 11"),
        (_detections_message(2000, [1, 2], seq=1), "out-of-order"),
        (wire.encode(sf.REPORT, 11, 0, bytes(8)), "unexpected REPORT in state AWAIT_DETECTIONS"),
        (_detections_message(2000, [3, 1996]), "slot of detection 1 is outside the frame of 2000"),
        (_detections_message(2000, [2000]), "slot of detection 0 is outside the frame"),
        (_detections_message(2000, [3, 2], count=3), "cannot hold 3 slots"),
        (_detections_message(2000, [3, 2, 1], count=2), "bytes after the last of its 2 detections"),
        (_detections_message(2000, [], count=2, code=b"\x81\x82"), "truncated or with an overlong varint at "
                                                                     "detection 0"),
        (_detections_message(2000, [], count=1, code=b"\xff" * 9 + b"\x02"), "overlong varint"),
        (_detections_message(2000, [3], pad=b"\x01" + bytes(6)), "padding not zero"),
        (_detections_message(1999, [3]), "frame of 1999 slots"),
        (_detections_message(2000, [3], bases=np.array([2], "<u8")), "basis bits set past the last"),
        (wire.encode(sf.DETECTIONS, 11, 0, bytes(24 + 8 * 2500 + 8 * 32 + 8)), "oversized"),
        (wire.encode(sf.DETECTIONS, 11, 0, np.array([2000, 3000, 0], "<u8").tobytes()), "3000 detections in 2000"),
        (wire.encode(sf.DETECTIONS, 11, 0, np.array([2000, 5, 5], "<u8").tobytes()), "payload too short"),
    ]
    for message, reason in cases:
        end = alice()
        with pytest.raises(PeerMessageError, match=reason):
            end.receive(message)
        assert end.state == sf.FAILED
    end = alice()
    end.receive(good)
    with pytest.raises(PeerMessageError, match="duplicate message"):
        end.receive(good)


def test_bad_answer_and_report_messages_raise_clear_errors():
    _, records, det = _frame(n_slots=3000)
    _, _, (announce, answer, report) = _exchange(records, det)
    header = bytes(answer[:wire.HEADER_BYTES])
    payload = bytearray(answer[wire.HEADER_BYTES:])
    count = det.slots.size

    def bob_after_start():
        bob = sf.Sifting(sf.BOB, 11, det, N_CLASSES)
        bob.start()
        return bob

    def patched(offset, data):
        changed = bytearray(payload)
        changed[offset:offset + len(data)] = data
        return wire.encode(sf.ANSWER, 11, 0, bytes(changed))

    classes_at = 24 + 16 * N_CLASSES + 8 * ((count + 63) // 64)
    cases = [
        (patched(0, (count + 1).to_bytes(8, "little")), "different number of detections"),
        (patched(8, bytes([4])), "4 intensity classes"),
        (patched(16, (8).to_bytes(8, "little")), "does not exist"),
        (patched(classes_at, bytes([N_CLASSES])), "intensity class 3 of detection 0"),
        (header + bytes(payload[:-8]), "truncated"),
        (patched(len(payload) - 8, b"\xff" * 8), "revealed bits set past"),
    ]
    for message, reason in cases:
        bob = bob_after_start()
        with pytest.raises(PeerMessageError, match=reason):
            bob.receive(message)
        assert bob.state == sf.FAILED
    bob = bob_after_start()
    with pytest.raises(PeerMessageError, match="unexpected DETECTIONS in state AWAIT_ANSWER"):
        bob.receive(_detections_message(3000, [1]))
    with pytest.raises(PeerMessageError, match="oversized"):
        bob_after_start().receive(wire.encode(sf.ANSWER, 11, 0, bytes(100_000)))

    alice = sf.Sifting(sf.ALICE, 11, records, N_CLASSES, revealed_classes=(1, 2))
    alice.receive(announce)
    bad_report = bytearray(report[wire.HEADER_BYTES:])
    bad_report[8:16] = (5).to_bytes(8, "little")  # errors for class 0, which was not revealed
    with pytest.raises(PeerMessageError, match="not revealed"):
        alice.receive(wire.encode(sf.REPORT, 11, 1, bytes(bad_report)))
    with pytest.raises(PeerMessageError, match="already failed"):
        alice.receive(report)


def test_local_misuse_raises_state_errors():
    _, records, det = _frame(n_slots=500)
    bob = sf.Sifting(sf.BOB, 1, det, N_CLASSES)
    bob.start()
    with pytest.raises(sf.SiftingStateError):
        bob.start()
    with pytest.raises(sf.SiftingStateError):
        bob.result
    with pytest.raises(TypeError):
        sf.Sifting(sf.ALICE, 1, det, N_CLASSES)
    with pytest.raises(ValueError):
        sf.Sifting(sf.ALICE, 1, records, N_CLASSES, revealed_classes=(3,))


def test_every_slot_frame_sends_the_same_messages_as_its_slot_array():
    """A frame sifted by detection number (the link's case): no slot array is built, and DETECTIONS, the
    ANSWER's handling and the result are those of the explicit slots 0 .. n - 1."""
    rng = np.random.default_rng(11)
    n = 5000
    basis = rng.integers(0, 2, n, dtype=np.uint8)
    outcome = rng.integers(0, 2, n, dtype=np.uint8)
    states = rng.integers(0, 4 * 3, n, dtype=np.uint8)
    explicit = sf.BobDetections(n, np.arange(n, dtype=np.uint64), basis, outcome)
    dense = sf.BobDetections.every_slot(basis, outcome)
    assert dense.slots is None and dense.count == n
    assert np.array_equal(dense.slot_code(), explicit.slot_code())
    ends = []
    for det in (explicit, dense):
        alice = sf.Sifting(sf.ALICE, 3, sf.AliceRecords(states, 3), 3, revealed_classes=(1, 2))
        bob = sf.Sifting(sf.BOB, 3, det, 3)
        (detections,) = bob.start()
        (answer,) = alice.receive(detections)
        (report,) = bob.receive(answer)
        alice.receive(report)
        ends.append((detections, answer, report, bob.result.sifted_slots(0, 1), bob.result.key_bits(0, 1)[0]))
    for a, b in zip(*ends):
        assert np.array_equal(np.asarray(a), np.asarray(b)) if isinstance(a, np.ndarray) else a == b
    with pytest.raises(ValueError):
        sf.BobDetections(n, None, basis, outcome[:-1])
