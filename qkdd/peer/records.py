"""Authenticated records after the handshake (sans-IO): sequence number + HMAC-SHA-256 per record.

Body of a record frame (big-endian):

    seq     8 bytes   records sent in this direction before this one (starts at 0)
    channel 2 bytes   DATA only: the purpose the payload belongs to (link engine's multiplexing)
    payload ...       DATA only
    mac     32 bytes  HMAC-SHA-256(direction key, frame header || seq || channel || payload)

Why HMAC and not AES-GCM: the channel needs integrity, not secrecy (TLS 1.3 already hides metadata),
HMAC-SHA-256 (RFC 2104, FIPS 198-1) is a PRF with no nonce to manage, and an explicit sequence number
checked for equality with the expected one rejects replay, reordering and deletion at once (the same
construction as the TLS 1.2 record MAC, RFC 5246 §6.2.3.1, with the sequence number sent explicitly so
the receiver can say which check failed). The MAC covers the frame header, so a changed type or length
fails too. Each direction has its own key (handshake.py), so a record cannot be reflected back.
Truncation: the sender ends with a CLOSE record, which is MACed like any other; an end of stream
without it is an error (SessionTruncatedError, raised by the session).

Transcript channels (links with auth "its"): records of a channel named in `transcript_channels` travel as
TRANSCRIPT_DATA, `seq | channel | payload` with no MAC, because their consumer authenticates them itself
with information-theoretic Wegman-Carter tags over its whole transcript (the frame path:
qkdd.auth.wegman_carter) and the post-quantum MAC would add a computational check the mode promises not
to rest on. The sequence number is still checked (a gap is refused at once rather than at the tag). Both
ends must name the same channels: a TRANSCRIPT_DATA record on any other channel, or a MACed DATA record
on a transcript channel, is refused with a RecordError saying the ends' auth settings differ, so a
record without a MAC is never delivered to a consumer that relies on the MAC.
"""
from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from .errors import FrameError, RecordError
from .framing import Frame, FrameType, encode_header

SEQ = struct.Struct(">Q")
CHANNEL = struct.Struct(">H")
MAC_BYTES = 32
MAX_CHANNEL = 0xFFFF
# seq + channel + MAC: what a DATA record adds to its payload
RECORD_OVERHEAD_BYTES = SEQ.size + CHANNEL.size + MAC_BYTES


@dataclass(frozen=True)
class Record:
    type: FrameType  # DATA, PING or CLOSE
    seq: int
    channel: int = 0
    payload: bytes = b""


INCREMENTAL_MAC_BYTES = 1 << 16     # larger contents are MACed in place, not copied behind the header first


def _mac(key: bytes, header: bytes, content: bytes | memoryview) -> bytes:
    if len(content) < INCREMENTAL_MAC_BYTES:
        return hmac.digest(key, header + content, "sha256")     # one-shot: the same HMAC, without an HMAC object
    mac = hmac.new(key, header, "sha256")
    mac.update(content)                 # OpenSSL's HMAC, the GIL released over large inputs
    return mac.digest()


class RecordSealer:
    """Outgoing direction: numbers and MACs records under this direction's key (records of the
    `transcript_channels` are numbered only: TRANSCRIPT_DATA)."""

    def __init__(self, key: bytes, transcript_channels: frozenset[int] = frozenset()) -> None:
        if len(key) != 32:
            raise ValueError("record key must be 32 bytes")
        self._key = key
        self._transcript_channels = frozenset(transcript_channels)
        self.next_seq = 0

    def __repr__(self) -> str:  # never show the key
        return f"RecordSealer(next_seq={self.next_seq})"

    def data(self, channel: int, payload: bytes) -> Frame:
        if not 0 <= channel <= MAX_CHANNEL:
            raise ValueError(f"channel {channel} outside 0..{MAX_CHANNEL}")
        if channel in self._transcript_channels:
            content = SEQ.pack(self.next_seq) + CHANNEL.pack(channel) + bytes(payload)
            self.next_seq += 1
            return Frame(FrameType.TRANSCRIPT_DATA, content)
        return self._seal(FrameType.DATA, CHANNEL.pack(channel) + bytes(payload))

    def data_pieces(self, channel: int, payload: bytes | memoryview) -> list[bytes | memoryview]:
        """data()'s frame as it goes on the wire (header included), in pieces that leave `payload` where it
        is: for large records, whose copies would hold the GIL."""
        if not 0 <= channel <= MAX_CHANNEL:
            raise ValueError(f"channel {channel} outside 0..{MAX_CHANNEL}")
        view = memoryview(payload)
        prefix = SEQ.pack(self.next_seq) + CHANNEL.pack(channel)
        if channel in self._transcript_channels:
            self.next_seq += 1
            return [encode_header(FrameType.TRANSCRIPT_DATA, len(prefix) + view.nbytes) + prefix, view]
        header = encode_header(FrameType.DATA, len(prefix) + view.nbytes + MAC_BYTES)
        mac = hmac.new(self._key, header + prefix, "sha256")
        mac.update(view)
        self.next_seq += 1
        return [header + prefix, view, mac.digest()]

    def ping(self) -> Frame:
        return self._seal(FrameType.PING, b"")

    def close(self) -> Frame:
        return self._seal(FrameType.CLOSE, b"")

    def _seal(self, frame_type: FrameType, rest: bytes) -> Frame:
        content = SEQ.pack(self.next_seq) + rest
        header = encode_header(frame_type, len(content) + MAC_BYTES)
        self.next_seq += 1
        return Frame(frame_type, content + _mac(self._key, header, content))


class RecordOpener:
    """Incoming direction: checks MAC and sequence number of each record, in order.

    Any failure raises RecordError and leaves the opener unusable (the session must be torn down):
    after a rejected record the stream position is no longer trustworthy.
    """

    def __init__(self, key: bytes, transcript_channels: frozenset[int] = frozenset()) -> None:
        if len(key) != 32:
            raise ValueError("record key must be 32 bytes")
        self._key = key
        self._transcript_channels = frozenset(transcript_channels)
        self.expected_seq = 0
        self._failed = False

    def __repr__(self) -> str:  # never show the key
        return f"RecordOpener(expected_seq={self.expected_seq})"

    def open(self, frame: Frame) -> Record:
        if self._failed:
            raise RecordError("record stream already failed")
        try:
            return self._open(frame)
        except (RecordError, FrameError):
            self._failed = True
            raise

    def _open(self, frame: Frame) -> Record:
        if frame.type == FrameType.TRANSCRIPT_DATA:
            return self._open_transcript(frame)
        if frame.type == FrameType.DATA:
            minimum = SEQ.size + CHANNEL.size + MAC_BYTES
        elif frame.type in (FrameType.PING, FrameType.CLOSE):
            minimum = SEQ.size + MAC_BYTES
        else:
            raise FrameError(f"{frame.type.name} frame where a record was expected")
        body = memoryview(frame.body)  # slices without copying (records reach tens of MiB)
        if len(body) < minimum:
            raise FrameError(f"{frame.type.name} record of {len(body)} bytes is shorter than {minimum}")
        content, tag = body[:-MAC_BYTES], body[-MAC_BYTES:]
        if frame.type != FrameType.DATA and len(content) != SEQ.size:
            raise FrameError(f"{frame.type.name} record carries {len(content) - SEQ.size} unexpected bytes")
        (seq,) = SEQ.unpack_from(content)
        if not hmac.compare_digest(tag, _mac(self._key, frame.header(), content)):
            raise RecordError(
                f"{frame.type.name} record rejected: MAC check failed "
                f"(claimed seq {seq}, expected {self.expected_seq}, {len(body)} bytes)"
            )
        if seq != self.expected_seq:
            what = "replayed" if seq < self.expected_seq else "out of order (records missing)"
            raise RecordError(
                f"{frame.type.name} record rejected: sequence number {seq} {what}, expected {self.expected_seq}"
            )
        self.expected_seq += 1
        if frame.type == FrameType.DATA:
            (channel,) = CHANNEL.unpack_from(content, SEQ.size)
            if channel in self._transcript_channels:
                raise RecordError(f"DATA record with the session MAC on channel {channel}, which this end takes "
                                  "without it (auth its): the ends' auth settings differ")
            return Record(frame.type, seq, channel, bytes(content[SEQ.size + CHANNEL.size:]))
        return Record(frame.type, seq)

    def _open_transcript(self, frame: Frame) -> Record:
        body = memoryview(frame.body)
        if len(body) < SEQ.size + CHANNEL.size:
            raise FrameError(f"TRANSCRIPT_DATA record of {len(body)} bytes is shorter than {SEQ.size + CHANNEL.size}")
        (seq,) = SEQ.unpack_from(body)
        (channel,) = CHANNEL.unpack_from(body, SEQ.size)
        if channel not in self._transcript_channels:
            raise RecordError(f"TRANSCRIPT_DATA record (no session MAC) on channel {channel}, which this end "
                              "authenticates with the session MAC: the ends' auth settings differ")
        if seq != self.expected_seq:
            raise RecordError(f"TRANSCRIPT_DATA record rejected: sequence number {seq}, expected {self.expected_seq}")
        self.expected_seq += 1
        return Record(FrameType.TRANSCRIPT_DATA, seq, channel, bytes(body[SEQ.size + CHANNEL.size:]))
