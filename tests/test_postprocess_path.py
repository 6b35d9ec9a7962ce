"""A BB84 frame's post-processing path without frame-sized temporaries -- Alice's state bytes packed in one pass,
the sifted key groups concatenated on their packed words, the LDPC frame dealt to its codewords from the packed
key and back, each codeword laid out in a reused row -- each checked against the plain way of doing the same on
random frames."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qkdd.bindings import bits as bitops
from qkdd.bindings import ldpc as native
from qkdd.link import pipeline
from qkdd.postprocess import ldpc, randomness
from qkdd.postprocess.sifting import AliceRecords


def plain_states(value, basis, intensity_class) -> np.ndarray:
    return (value.astype(np.uint8) | (basis.astype(np.uint8) << 1) | (intensity_class.astype(np.uint8) << 2))


def plain_concatenate(groups):
    total = sum(n for _, n in groups)
    if total == 0:
        return np.zeros(0, dtype=np.uint64), 0
    return bitops.pack(np.concatenate([bitops.unpack(np.ascontiguousarray(w), n) for w, n in groups if n])), total


@pytest.mark.parametrize("n", [0, 1, 63, 4095, 4096, 4097, 100_003])
def test_state_bytes_in_one_pass_equal_the_shifts_and_ors(n):
    rng = np.random.default_rng(n)
    value, basis = rng.integers(0, 2, (2, n), dtype=np.uint8)
    intensity_class = rng.integers(0, 3, n, dtype=np.uint8)
    records = AliceRecords.from_columns(value, basis, intensity_class, 3)
    assert np.array_equal(records.states, plain_states(value, basis, intensity_class))
    wide = AliceRecords.from_columns(value.astype(np.int64), basis, intensity_class.astype(np.int32), 3)
    assert np.array_equal(wide.states, records.states)


@pytest.mark.parametrize("column, at, bad, message", [(0, 5000, 2, "0 or 1"), (1, 0, 3, "0 or 1"),
                                                       (2, 4099, 3, r"\[0, 3\)"), (2, 9, 200, r"\[0, 3\)")])
def test_state_bytes_refuse_what_the_plain_checks_refuse(column, at, bad, message):
    rng = np.random.default_rng(at)
    columns = [rng.integers(0, 2, 10_000, dtype=np.uint8), rng.integers(0, 2, 10_000, dtype=np.uint8),
               rng.integers(0, 3, 10_000, dtype=np.uint8)]
    columns[column][at] = bad
    with pytest.raises(ValueError, match=message):
        AliceRecords.from_columns(*columns, 3)


@pytest.mark.parametrize("seed", range(6))
def test_packed_concatenation_equals_unpack_concatenate_pack(seed, monkeypatch):
    monkeypatch.setattr(pipeline, "_SHIFT_CHUNK_WORDS", 3)      # chunk edges inside every string
    rng = np.random.default_rng(seed)
    groups = []
    for n in rng.choice([0, 1, 5, 63, 64, 65, 128, 200, 1000, 4097], size=rng.integers(1, 7)):
        words = rng.integers(0, 2**64, bitops.words_for_bits(int(n)) + int(rng.integers(0, 2)), dtype=np.uint64)
        groups.append((words, int(n)))          # bits past n (and a spare word) set: they must be left out
    got, total = pipeline._concatenate(groups)
    expected, expected_total = plain_concatenate(groups)
    assert total == expected_total and got.dtype == np.uint64 and np.array_equal(got, expected)


@pytest.mark.parametrize("n, rows", [(1, 1), (70, 3), (100_003, 25), (200_000, 700), (4096 * 3 + 5, 64)])
def test_deal_from_packed_words_equals_unpack_then_deal(n, rows):
    rng = np.random.default_rng(n)
    words = rng.integers(0, 2**64, bitops.words_for_bits(n), dtype=np.uint64)
    unpacked = bitops.unpack(words, n)
    dealt = bitops.deal_bits(words, n, rows)
    assert np.array_equal(dealt, ldpc.interleave(unpacked, rows))
    back = np.full(words.size, 2**64 - 1, dtype=np.uint64)
    bitops.undeal_bits(dealt, rows, out=back)
    assert np.array_equal(back, bitops.pack(unpacked))


def plain_rows(end, dtype, punctured: np.ndarray, shortened: int, key_values) -> np.ndarray:
    """An end's codeword rows the plain way: its unpacked frame interleaved, each group's rows in layout order
    (`punctured`, one row per codeword; `shortened`; `key_values` of the group's key bits), then placed."""
    info = native.code(end.plan.code)
    n, p = info.n_bits, end.plan.punctured
    bits = ldpc.interleave(bitops.unpack(end.key, end.n_bits), end.plan.codewords)
    rows = np.empty((end.plan.codewords, n), dtype=dtype)
    for first, count, k, start in end.plan.groups():
        ordered = np.empty((count, n), dtype=dtype)
        ordered[:, :p] = punctured[first:first + count]
        ordered[:, p:n - k] = shortened
        ordered[:, n - k:] = key_values(bits[start:start + count * k].reshape(count, k))
        for row, target in zip(ordered, rows[first:first + count]):
            np.take(row, end._layout._inverse, out=target)
    return rows


def plain_llr(bob: ldpc.LdpcBob) -> np.ndarray:
    """Bob's LLRs: punctured 0, shortened LLR_MAX, key bits -units for a 1 and +units for a 0."""
    zeros = np.zeros((bob.plan.codewords, bob.plan.punctured), dtype=np.int8)
    return plain_rows(bob, np.int8, zeros, native.LLR_MAX,
                      lambda bits: np.where(bits == 1, -bob.llr_units, bob.llr_units))


def plain_codewords(alice: ldpc.LdpcAlice, padding: np.ndarray) -> np.ndarray:
    """Alice's codewords: punctured the padding, shortened 0, the key bits."""
    return plain_rows(alice, np.uint8, padding, 0, lambda bits: bits)


@pytest.mark.parametrize("n_bits, qber, seed", [(30_001, 0.03, 1), (200_003, 0.02, 2), (150_000, 0.05, 3)])
def test_ldpc_rows_built_one_at_a_time_equal_the_plain_layout_and_the_key_comes_out_corrected(n_bits, qber, seed,
                                                                                              monkeypatch):
    rng = np.random.default_rng(seed)
    alice_bits = rng.integers(0, 2, n_bits, dtype=np.uint8)
    bob_bits = alice_bits ^ (rng.random(n_bits) < qber).astype(np.uint8)
    alice_key, bob_key = bitops.pack(alice_bits), bitops.pack(bob_bits)
    drawn = []
    fresh = randomness.fresh_bytes
    monkeypatch.setattr(randomness, "fresh_bytes", lambda size: drawn.append(fresh(size)) or drawn[-1])
    alice = ldpc.LdpcAlice(alice_key.copy(), n_bits, 9)
    bob = ldpc.LdpcBob(bob_key.copy(), n_bits, 9, qber)
    (syndromes,) = alice.receive(bob.start())
    p, k = alice.plan.punctured, alice.plan.codewords
    padding = np.unpackbits(np.frombuffer(drawn[-1], dtype=np.uint8), bitorder="little")[:k * p].reshape(k, p)
    assert np.array_equal(alice._words, plain_codewords(alice, padding))
    plain_syndromes = np.stack([native.syndrome(alice.plan.code, row) for row in alice._words])
    header_bytes = len(syndromes) - (plain_syndromes.size + 7) // 8
    assert syndromes[header_bytes:] == np.packbits(plain_syndromes.ravel(), bitorder="little").tobytes()
    prepared = []
    prepare = bob._prepare

    def prepare_and_compare():          # before any reveal changes the LLRs
        expected = plain_llr(bob)
        prepare()
        prepared.append(np.array_equal(bob._llr, expected))
    monkeypatch.setattr(bob, "_prepare", prepare_and_compare)
    message = syndromes
    while True:
        (message,) = bob.receive(message)
        if bob.done:
            break
        (message,) = alice.receive(message)
    assert prepared == [True]
    alice.receive(message)
    assert np.array_equal(bob.key, alice_key)
    assert bob.corrected_bits == alice.corrected_bits == int(np.count_nonzero(alice_bits != bob_bits))
    assert math.isclose(bob.corrected_bits / n_bits, qber, rel_tol=0.3)


def test_a_slots_part_is_the_slot_stream_and_records_join_views_as_bytes():
    from qkdd.link import envelope, linkmsg
    slots = np.cumsum(np.random.default_rng(4).integers(1, 300, 20_000, dtype=np.uint64), dtype=np.uint64)
    part = linkmsg.slots_part(slots)
    assert bytes(part) == linkmsg.encode_slots(slots) == struct_header(slots.size) + bytes(
        linkmsg.sift_kernel.encode_slots(slots, 2**64 - 1))
    words = np.arange(5, dtype="<u8")
    viewed = envelope.encode(3, [(envelope.Step.SLOTS, part), (envelope.Step.SIFT, memoryview(words)),
                                 (envelope.Step.ESTIMATE, words)])
    assert viewed == envelope.encode(3, [(envelope.Step.SLOTS, bytes(part)), (envelope.Step.SIFT, words.tobytes()),
                                         (envelope.Step.ESTIMATE, words.tobytes())])
    assert linkmsg.is_slot_stream_of(part, slots)
    for at in (0, 6, 7, slots.size - 1):
        other = slots.copy()
        other[at] += 1 if at == slots.size - 1 else 0
        if at < slots.size - 1:
            other[at:] += 1                                 # one gap longer, the rest alike
        assert not linkmsg.is_slot_stream_of(part, other)


def struct_header(count: int) -> bytes:
    return count.to_bytes(8, "little") + bytes([1]) + bytes(7)


def test_sifting_messages_as_parts_make_the_same_records_as_joined_messages():
    from qkdd.link import envelope
    from qkdd.postprocess import sifting
    rng = np.random.default_rng(8)
    n_slots, count = 5_001, 3_003
    states = plain_states(rng.integers(0, 2, n_slots), rng.integers(0, 2, n_slots), rng.integers(0, 3, n_slots))
    slots = np.sort(rng.choice(n_slots, count, replace=False)).astype(np.uint64)
    basis, outcome = rng.integers(0, 2, (2, count), dtype=np.uint8)
    records = []
    for as_parts in (False, True):
        bob = sifting.Sifting(sifting.BOB, 4, sifting.BobDetections(n_slots, slots, basis, outcome), 3,
                              message_parts=as_parts)
        alice = sifting.Sifting(sifting.ALICE, 4, sifting.AliceRecords(states, 3), 3, revealed_classes=(1,),
                                message_parts=as_parts)
        (detections,) = bob.start()
        (answer,) = alice.receive(envelope.decode(envelope.encode(4, [(envelope.Step.SIFT, detections)]))[1][0][1])
        assert isinstance(detections, tuple) == isinstance(answer, tuple) == as_parts
        records.append([envelope.encode(4, [(envelope.Step.SLOTS, b"x"), (envelope.Step.SIFT, m)])
                        for m in (detections, answer)])
    assert records[0] == records[1]
