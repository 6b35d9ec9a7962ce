"""Fuzz target: bytes from a serial QKD device (qkdd.hal.serial.frames: the resynchronising frame parser
and every payload parser), fed whole and then in two pieces.

Expected: events or a VersionError from the parser, the same events however the bytes are cut, and for
each frame's payload its parsed value or a SerialProtocolError; never another exception, and the parser
never buffers more than one bounded frame.
"""
from __future__ import annotations

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    import numpy as np

    from qkdd.hal.serial import frames as wire

MAX_FRAME_BYTES = 4096
PARSERS = {wire.FrameType.HELLO: wire.parse_hello, wire.FrameType.SETTINGS: wire.parse_settings,
           wire.FrameType.STATUS: wire.parse_status, wire.FrameType.DETECTIONS: wire.parse_detections}


def _events(pieces: list[bytes]):
    parser = wire.FrameParser(MAX_FRAME_BYTES)
    events = []
    for piece in pieces:
        events += parser.feed(piece)
        if parser.buffered_bytes > wire.HEADER_BYTES + MAX_FRAME_BYTES + wire.CRC.size + len(piece):
            raise Finding(f"parser buffers {parser.buffered_bytes} bytes")
    return events


def _frames(events):
    return [e for e in events if isinstance(e, wire.Frame)]


def TestOneInput(data: bytes) -> None:
    try:
        whole = _events([data])
    except wire.VersionError:
        return
    cut = len(data) // 3
    try:
        split = _events([data[:cut], data[cut:]])
    except wire.VersionError:
        raise Finding("a version error only when the bytes are cut") from None
    if _frames(whole) != _frames(split):
        raise Finding("frames depend on how the bytes arrive")
    for frame in _frames(whole):
        try:
            value = PARSERS[frame.type](frame.payload)
        except wire.SerialProtocolError:
            continue
        if isinstance(value, wire.DetectionsChunk) and value.records.size and \
                int(np.max(value.records["slot"])) >= value.slot_count:
            raise Finding("a record's slot beyond its frame was accepted")


def seeds() -> list[bytes]:
    records = np.zeros(3, dtype=wire.RECORD)
    records["slot"] = [1, 5, 9]
    chunk = wire.DetectionsChunk(4, 10, (1, 2, 3), True, records)
    return [wire.encode(wire.FrameType.HELLO, 0, wire.hello_payload("alice", "seed")),
            wire.encode(wire.FrameType.SETTINGS, 1, wire.settings_payload((0.4, 0.2, 0.0, 0.2, 0.5, 0.8))),
            wire.encode(wire.FrameType.STATUS, 2, wire.status_payload(wire.Status(True, 20.0, 1.0, "ok"))),
            b"garbageQK" + wire.encode(wire.FrameType.DETECTIONS, 3, wire.detections_payload(chunk))]


if __name__ == "__main__":
    fuzz(TestOneInput)
