"""The link's envelope and small pipeline messages on peer bytes: valid encodings round-trip, and random,
truncated or mutated ones are an EnvelopeError or LinkMessageError, never another exception."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qkdd.link import envelope, linkmsg
from qkdd.protocols.bb84_finite import DecoySettings
from tests.mutations import edited, fields

DECOY = DecoySettings(mu_signal=0.4, mu_decoy=0.13, mu_vacuum=0.0, p_signal=0.08, p_decoy=0.56, q_x=0.63)
U64_EDGES = [0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1]


def slots_message(gaps: list[int], width: int = 8) -> bytes:
    return struct.pack("<QB7x", len(gaps), width) + np.array(gaps, dtype=f"<u{width}").tobytes()


def test_slot_numbers_that_wrap_past_2_64_are_refused_wherever_they_wrap():
    with pytest.raises(linkmsg.LinkMessageError, match="overflow"):
        linkmsg.decode_slots(slots_message([2**63, 2**63, 5]), 10)        # wraps in the middle
    with pytest.raises(linkmsg.LinkMessageError, match="overflow"):
        linkmsg.decode_slots(slots_message([5, 2**64 - 1, 1]), 10)        # wraps back onto slot 5
    top = linkmsg.decode_slots(slots_message([2**64 - 2, 1]), 10)
    assert top.tolist() == [2**64 - 2, 2**64 - 1]


def test_slots_go_as_a_varint_stream_and_the_fixed_widths_of_earlier_versions_still_decode():
    slots = np.cumsum(np.random.default_rng(5).integers(1, 100, 10_000, dtype=np.uint64), dtype=np.uint64)
    stream = linkmsg.encode_slots(slots)
    assert stream[8] == linkmsg.SLOT_STREAM and len(stream) < 16 + 2 * slots.size       # 4 bytes each before
    assert np.array_equal(linkmsg.decode_slots(memoryview(stream), slots.size), slots)
    fixed = linkmsg.encode_slots_fixed(slots)
    assert fixed[8] == 4 and np.array_equal(linkmsg.decode_slots(fixed, slots.size), slots)
    with pytest.raises(linkmsg.LinkMessageError, match="SLOTS"):
        linkmsg.decode_slots(stream[:-1], slots.size)
    with pytest.raises(linkmsg.LinkMessageError, match="SLOTS"):
        linkmsg.decode_slots(stream, slots.size - 1)



def test_a_slot_stream_is_recognised_as_the_slots_it_encodes_and_nothing_else():
    slots = np.cumsum(np.random.default_rng(6).integers(1, 300, 5_000, dtype=np.uint64), dtype=np.uint64)
    stream = linkmsg.encode_slots(slots)
    assert linkmsg.is_slot_stream_of(memoryview(stream), slots)
    other = slots.copy()
    other[-1] += 1
    assert not linkmsg.is_slot_stream_of(stream, other)                 # one slot differs
    assert not linkmsg.is_slot_stream_of(stream, slots[:-1])            # one fewer
    assert not linkmsg.is_slot_stream_of(linkmsg.encode_slots_fixed(slots), slots)   # another form: decode it
    assert not linkmsg.is_slot_stream_of(stream[:-1], slots)
    assert not linkmsg.is_slot_stream_of(stream[:10], slots)
    assert not linkmsg.is_slot_stream_of(stream, slots[::-1].copy())    # not increasing: cannot be encoded

def mutated(valid: bytes):
    return edited(valid, overwrites=fields(U64_EDGES, 8, "little"))


def _slots(seed: int) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).integers(1, 2**40, 6, dtype=np.uint64), dtype=np.uint64)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3).flatmap(lambda seed: mutated(linkmsg.encode_slots(_slots(seed)))))
def test_decoded_slots_are_strictly_increasing_or_refused(data):
    try:
        slots = linkmsg.decode_slots(memoryview(data), 16)
    except linkmsg.LinkMessageError:
        return
    assert slots.dtype == np.uint64 and slots.size <= 16
    assert bool(np.all(slots[1:] > slots[:-1]))


REVEAL_BITS = [70, 0, 5]
REVEAL = linkmsg.encode_reveal(DECOY, 10**9, 1e-10, 1e-15,
                               [(np.array([2**64 - 1, 0x3F], dtype=np.uint64), 70), (np.zeros(0, np.uint64), 0),
                                (np.array([0b10110], dtype=np.uint64), 5)])
VALID_MESSAGES = {
    "reveal": REVEAL,
    "errors": linkmsg.encode_errors([3, 0, 5]),
    "keys": linkmsg.encode_keys(bytes(range(32)), 4, 256, 1_800_000_000.5),
    "abort": linkmsg.encode_abort(linkmsg.AbortReason.QBER, "QBER 0.2 at or above 0.11 \u2013 dropped"),
}


def decode_any(kind: str, data: bytes):
    view = memoryview(data)
    if kind == "reveal":
        return linkmsg.decode_reveal(view, REVEAL_BITS)
    if kind == "errors":
        return linkmsg.decode_errors(view, [70, 0, 5])
    if kind == "keys":
        return linkmsg.decode_keys(view)
    return linkmsg.decode_abort(view)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALID_MESSAGES)).flatmap(
    lambda kind: st.tuples(st.just(kind), st.one_of(mutated(VALID_MESSAGES[kind]), st.binary(max_size=120)))))
def test_pipeline_messages_decode_or_are_a_link_message_error(kind_and_data):
    kind, data = kind_and_data
    try:
        decoded = decode_any(kind, data)
    except linkmsg.LinkMessageError:
        return
    if kind == "reveal":
        _, _, eps_sec, eps_cor, revealed = decoded
        assert linkmsg.MIN_EPS <= eps_sec < 1 and linkmsg.MIN_EPS <= eps_cor < 1
        assert [n for _, n in revealed] == REVEAL_BITS
    elif kind == "errors":
        assert all(e <= n for e, n in zip(decoded, [70, 0, 5]))
    elif kind == "keys":
        assert math.isfinite(decoded[3]) and decoded[3] > 0
    elif kind == "abort":
        assert len(decoded[1].encode()) <= 3 * linkmsg.MAX_ABORT_TEXT_BYTES


@pytest.mark.parametrize("expires_at", [float("nan"), float("inf"), -float("inf"), 0.0, -1.0])
def test_keys_with_an_expiry_that_is_not_a_positive_finite_time_are_refused(expires_at):
    with pytest.raises(linkmsg.LinkMessageError, match="expiry time"):
        linkmsg.decode_keys(memoryview(linkmsg.encode_keys(bytes(32), 4, 256, expires_at)))
    seed, count, key_bits, expiry = linkmsg.decode_keys(memoryview(linkmsg.encode_keys(bytes(32), 4, 256, 1.5e9)))
    assert (seed, count, key_bits, expiry) == (bytes(32), 4, 256, 1.5e9)


ENVELOPE = envelope.encode(2**40 + 3, [(envelope.Step.CASCADE, b"\x01" * 9), (envelope.Step.VERIFY, b""),
                                       (envelope.Step.ABORT, VALID_MESSAGES["abort"])])


@settings(max_examples=300, deadline=None)
@given(st.one_of(mutated(ENVELOPE), st.binary(max_size=80)))
def test_envelopes_decode_or_are_an_envelope_error(data):
    try:
        frame_id, parts = envelope.decode(data)
    except envelope.EnvelopeError:
        try:
            envelope.peek_frame_id(data)       # checks only the header: may accept what decode refuses
        except envelope.EnvelopeError:
            pass
        return
    assert envelope.peek_frame_id(data) == frame_id
    assert 1 <= len(parts) <= envelope.MAX_PARTS
    assert 16 + sum(8 + len(body) for _, body in parts) == len(data)
