"""Fuzz target: the simulated device link (the TCP connection that stands in for the fiber and Bob's
detectors), read by both receivers: Bob's device reading Alice's simulator and Alice's simulator reading
Bob's device. The bytes arrive in two pieces.

Expected: checked messages or a WireError; a FRAME taken keeps its documented invariants (slots strictly
increasing below slot_count, outcomes 0/1, frame ids increasing).
"""
from __future__ import annotations

import numpy as np

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from qkdd.hal.sim import wire

MAX_DETECTIONS = 256


def _check_frame(frame: "wire.FrameMessage", last_frame_id: int | None) -> None:
    slots = frame.slots_array()
    if slots.size > MAX_DETECTIONS or not slots.size == frame.bases.size == frame.outcomes.size:
        raise Finding("FRAME columns of different lengths or past the cap")
    if slots.size and (int(slots[-1]) >= frame.slot_count or (slots.size > 1 and not bool(np.all(np.diff(slots) > 0)))):
        raise Finding("FRAME slots not strictly increasing below slot_count")
    if frame.outcomes.size and int(frame.outcomes.max()) > 1:
        raise Finding("FRAME outcome that is not a bit")
    if last_frame_id is not None and frame.frame_id <= last_frame_id:
        raise Finding("FRAME id did not increase")


def TestOneInput(data: bytes) -> None:
    half = len(data) // 2
    for role in ("bob", "alice"):
        receiver = wire.Receiver(role, max_detections=MAX_DETECTIONS)
        try:
            for piece in (data[:half], data[half:]):
                receiver.receive_data(piece)
                while True:
                    last_frame_id = receiver.last_frame_id
                    message = receiver.next_message()
                    if message is None:
                        break
                    if isinstance(message, wire.FrameMessage):
                        _check_frame(message, last_frame_id)
        except wire.WireError:
            continue


def seeds() -> list[bytes]:
    slots = np.array([3, 9, 10, 41], dtype=np.uint64)
    frame = wire.FrameMessage(7, 64, 1, 5.0, 1e-12, 0.02, 0.96, slots, np.array([0, 1, 1, 0], dtype=np.uint8),
                              np.array([1, 0, 1, 1], dtype=np.uint8))
    frame_bytes = b"".join(bytes(part) for part in wire.encode_frame(frame))
    hello = wire.encode_alice_hello(wire.AliceHello("bb84", 1e9, 1 << 30))
    return [hello + frame_bytes, wire.encode_bob_hello() + wire.encode_ack(7) + wire.encode_realign(2),
            wire.encode_alice_hello(wire.AliceHello("e91", 2.5e8, 4096))]


if __name__ == "__main__":
    fuzz(TestOneInput)
