"""The simulated quantum channel's parser on arbitrary bytes: valid streams with bytes flipped, cut, inserted or
replaced, in random chunks. Every outcome is a checked message, a wait for more bytes, or a WireError."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from qkdd.hal.sim import wire
from tests.mutations import edited

HELLO = wire.encode_alice_hello(wire.AliceHello("bb84", 1e9, 1 << 40))


def frame(frame_id: int, n: int) -> bytes:
    slots = np.arange(1, 3 * n + 1, 3, dtype=np.uint64)
    message = wire.FrameMessage(frame_id, 3 * n + 5, 0, 5.0, 1e-12, 0.02, 0.96, slots,
                                (slots % 2).astype(np.uint8), (slots % 3 == 1).astype(np.uint8))
    return b"".join(bytes(part) for part in wire.encode_frame(message))


VALID = {
    "bob": HELLO + frame(7, 0) + frame(8, 5) + frame(9, 2),
    "alice": wire.encode_bob_hello() + wire.encode_ack(7) + wire.encode_realign(3) + wire.encode_ack(8),
}


def mangled(role: str):
    edges = [bytes(8), b"\xff" * 8, (2**63).to_bytes(8, "little"), np.float64(np.nan).tobytes(),
             np.float64(-np.inf).tobytes()]
    return edited(VALID[role], edits=4, max_cut=64, max_insert=16, overwrites=edges)


def feed(role: str, data: bytes, chunk_bytes: int) -> list:
    receiver = wire.Receiver(role, max_detections=64)
    messages = []
    try:
        for start in range(0, len(data), chunk_bytes):
            receiver.receive_data(data[start:start + chunk_bytes])
            while (message := receiver.next_message()) is not None:
                messages.append(message)
    except wire.WireError:
        pass
    return messages


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["bob", "alice"]).flatmap(lambda role: st.tuples(st.just(role), mangled(role))),
       st.integers(1, 97))
def test_mangled_streams_give_checked_messages_or_a_wire_error(role_and_data, chunk_bytes):
    role, data = role_and_data
    for message in feed(role, data, chunk_bytes):
        if isinstance(message, wire.FrameMessage):
            slots = message.slots_array()
            assert slots.size == message.bases.size == message.outcomes.size <= 64
            assert np.all(slots[1:] > slots[:-1]) and (slots.size == 0 or int(slots[-1]) < message.slot_count)
            assert np.all(message.outcomes <= 1) and np.all(message.bases <= 1)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["bob", "alice"]), st.binary(max_size=200), st.integers(1, 97))
def test_random_bytes_after_a_valid_hello_give_a_wire_error_or_wait(role, tail, chunk_bytes):
    hello = VALID[role][:wire.HEADER.size + (24 if role == "bob" else 0)]
    feed(role, hello + tail, chunk_bytes)
    # a header naming FRAME with any body length is the interesting case for Bob
    for body_bytes in (0, 1, 55, 56, 57):
        feed("bob", HELLO + wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.FRAME, 0, body_bytes) + tail,
             chunk_bytes)


def test_a_large_frame_is_announced_complete_before_parsing_and_its_byte_columns_are_views_of_its_body():
    receiver = wire.Receiver("bob", max_detections=1 << 20)
    data = HELLO + frame(11, 100_000) + frame(12, 3)
    receiver.receive_data(data[:len(HELLO) + 40])
    assert receiver.next_message() == wire.AliceHello("bb84", 1e9, 1 << 40)
    assert receiver.ready_body_bytes() == 0                   # the frame's header is in, its body is not
    for start in range(len(HELLO) + 40, len(data), 1 << 16):
        receiver.receive_data(data[start:start + (1 << 16)])
    # the caller's cue for a thread: the body (fixed part, 100 000 one-byte gaps, two byte columns) is in
    assert receiver.ready_body_bytes() == 56 + 100_000 * (1 + wire.COLUMN_BYTES_PER_DETECTION)
    big = receiver.next_message()
    assert big.frame_id == 11 and big.slots is None                      # checked, not decoded
    assert np.array_equal(big.slots_array(), np.arange(1, 300_001, 3, dtype=np.uint64))
    for column in (big.slot_stream, big.bases, big.outcomes):
        assert not column.flags.owndata                                  # views of the body, no copies
    assert receiver.next_message().frame_id == 12 and receiver.next_message() is None
