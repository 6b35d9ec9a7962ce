"""The link's wire envelope: one classical-channel record carries one or more pipeline step messages of
one frame, each tagged with its step, so that both ends route them by (frame id, step).

Layout (version 1, little-endian)::

    offset  size  field
    0       4     magic b"QKLK"
    4       1     version (1)
    5       1     number of parts (1..MAX_PARTS)
    6       2     reserved, zero
    8       8     frame id
    16      ...   parts, each: u8 step | 3 zero bytes | u32 length | length bytes (the step's own message)

The step messages keep their own headers (sifting, Cascade, verification and amplification carry the
frame id again and check it); the link's own small messages are described in `linkmsg.py`.
"""
from __future__ import annotations

import enum
import struct

MAGIC = b"QKLK"
VERSION = 1
MAX_PARTS = 8
_HEADER = struct.Struct("<4sBBHQ")
_PART = struct.Struct("<B3xI")


class Step(enum.IntEnum):
    SLOTS = 1        # Bob -> Alice: the frame's detected slot numbers
    SIFT = 2         # qkdd.postprocess.sifting
    ESTIMATE = 3     # test-basis reveal and its error counts (linkmsg.py)
    CASCADE = 4      # qkdd.postprocess.cascade
    VERIFY = 5       # qkdd.postprocess.verification
    AMPLIFY = 6      # qkdd.postprocess.amplification
    KEYS = 7         # Alice -> Bob: key-id seed and key count (linkmsg.py)
    COMMIT = 8       # Alice -> Bob: her keys are stored AVAILABLE, commit yours
    ABORT = 9        # either way: drop the frame (linkmsg.py: reason)
    LDPC = 10        # qkdd.postprocess.ldpc (instead of CASCADE on links with reconciliation = "ldpc")
    AUTH = 11        # links with auth "its"/"both": a Wegman-Carter transcript tag (qkdd.auth.wegman_carter)
    CV = 20          # protocol "cvqkd": GG02 estimation and 8-D reconciliation (qkdd.link.cv_pipeline)


_STEPS = {int(s): s for s in Step}


class EnvelopeError(ValueError):
    """A link record is malformed: bad magic or version, truncated, unknown step, too many parts."""


def encode(frame_id: int, parts: list[tuple[Step, bytes]]) -> bytes:
    if not 1 <= len(parts) <= MAX_PARTS:
        raise ValueError(f"an envelope carries 1..{MAX_PARTS} parts, got {len(parts)}")
    if not 0 <= frame_id < 2 ** 64:
        raise ValueError("frame id must fit in 64 bits")
    chunks = [_HEADER.pack(MAGIC, VERSION, len(parts), 0, frame_id)]
    for step, body in parts:
        # a body is a buffer, or a tuple of buffers that make one part (qkdd.postprocess.wire.message_parts);
        # joined below: copied once
        views = [b if isinstance(b, bytes) else memoryview(b).cast("B") for b in
                 (body if isinstance(body, tuple) else (body,))]
        chunks.append(_PART.pack(int(step), sum(len(v) for v in views)))
        chunks.extend(views)
    return b"".join(chunks)


def peek_frame_id(record: bytes) -> int:
    """The frame id of a record, checking only the header (for routing)."""
    if len(record) < _HEADER.size:
        raise EnvelopeError(f"link record of {len(record)} bytes is shorter than its header")
    magic, version, count, reserved, frame_id = _HEADER.unpack_from(record)
    if magic != MAGIC:
        raise EnvelopeError("not a link record (bad magic)")
    if version != VERSION:
        raise EnvelopeError(f"link record version {version}, this end speaks {VERSION}")
    if reserved or not 1 <= count <= MAX_PARTS:
        raise EnvelopeError(f"link record header malformed ({count} parts)")
    return frame_id


def decode(record: bytes) -> tuple[int, list[tuple[Step, memoryview]]]:
    """(frame id, [(step, message)]) of a record; EnvelopeError names what is wrong."""
    frame_id = peek_frame_id(record)
    count = record[5]
    view = memoryview(record)
    offset = _HEADER.size
    parts: list[tuple[Step, memoryview]] = []
    for index in range(count):
        if len(view) < offset + _PART.size:
            raise EnvelopeError(f"link record truncated in the header of part {index}")
        step_code, length = _PART.unpack_from(view, offset)
        if step_code not in _STEPS:
            raise EnvelopeError(f"link record part {index} has unknown step {step_code}")
        if bytes(view[offset + 1:offset + 4]) != bytes(3):
            raise EnvelopeError(f"link record part {index}: reserved bytes not zero")
        offset += _PART.size
        if len(view) < offset + length:
            raise EnvelopeError(f"link record truncated in part {index} ({Step(step_code).name})")
        parts.append((_STEPS[step_code], view[offset:offset + length]))
        offset += length
    if offset != len(view):
        raise EnvelopeError(f"link record has {len(view) - offset} bytes past its last part")
    return frame_id, parts
