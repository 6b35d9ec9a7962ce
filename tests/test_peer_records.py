"""Framing and MACed records, sans-IO: caps before allocation, tamper, replay, reorder, truncation."""
from __future__ import annotations

import os

import pytest

from qkdd.peer.errors import FrameError, RecordError
from qkdd.peer.framing import (FRAME_VERSION, HEADER_BYTES, MAGIC, MAX_HANDSHAKE_BODY_BYTES, Frame,
                               FrameDecoder, FrameType, HEADER, encode_header)
from qkdd.peer.records import RECORD_OVERHEAD_BYTES, RecordOpener, RecordSealer

KEY = os.urandom(32)


def decode_all(data: bytes, decoder: FrameDecoder | None = None) -> list[Frame]:
    decoder = decoder or FrameDecoder()
    if data:  # b"" would mean end of stream
        decoder.receive_data(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_frames_round_trip_whole_and_split_at_every_byte():
    frames = [Frame(FrameType.DATA, b"x" * 100), Frame(FrameType.PING, b""), Frame(FrameType.ALERT, b"\x03")]
    wire = b"".join(f.to_bytes() for f in frames)
    assert decode_all(wire) == frames
    for cut in range(len(wire) + 1):
        decoder = FrameDecoder()
        assert decode_all(wire[:cut], decoder) + decode_all(wire[cut:], decoder) == frames


def test_oversized_length_is_refused_from_the_header_alone():
    decoder = FrameDecoder(max_record_bytes=1 << 20)
    with pytest.raises(FrameError, match="exceeds the cap of 1048576 bytes"):
        decoder.receive_data(encode_header(FrameType.DATA, (1 << 20) + 1))  # no body bytes at all
    assert decoder.buffered_bytes == HEADER_BYTES  # nothing was allocated for the claimed body
    with pytest.raises(FrameError, match=f"cap of {MAX_HANDSHAKE_BODY_BYTES}"):
        FrameDecoder().receive_data(encode_header(FrameType.INITIATOR_HELLO, 0xFFFFFFFF))
    # exactly at the cap is fine
    decoder = FrameDecoder(max_record_bytes=1 << 20)
    decoder.receive_data(encode_header(FrameType.DATA, 1 << 20))
    assert decoder.next_frame() is None


@pytest.mark.parametrize("data, error", [
    (b"GET / HTTP/1.1\r\n", "bad magic"),
    (b"\x16\x03\x01\x02\x00", "bad magic"),  # a TLS ClientHello where framing was expected
    (b"Q", None),  # a prefix of the magic: wait for more
    (HEADER.pack(MAGIC, FRAME_VERSION + 1, FrameType.DATA, 0), "unsupported frame version 2"),
    (HEADER.pack(MAGIC, FRAME_VERSION, 0x7F, 0), "unknown frame type 0x7f"),
])
def test_bad_headers_are_refused_early(data, error):
    decoder = FrameDecoder()
    if error is None:
        decoder.receive_data(data)
        assert decoder.next_frame() is None
        return
    with pytest.raises(FrameError, match=error):
        decoder.receive_data(data)
        decoder.next_frame()


def test_end_of_stream_inside_a_frame_is_a_truncated_frame():
    decoder = FrameDecoder()
    wire = Frame(FrameType.DATA, b"abcdef").to_bytes()
    decoder.receive_data(wire[:-2])
    decoder.receive_data(b"")
    with pytest.raises(FrameError, match="stream ended inside a frame"):
        decoder.next_frame()
    clean = FrameDecoder()
    clean.receive_data(wire)
    clean.receive_data(b"")
    assert clean.next_frame() is not None and clean.next_frame() is None and clean.at_eof


def test_records_open_in_order_with_channels_and_payloads():
    sealer, opener = RecordSealer(KEY), RecordOpener(KEY)
    sent = [sealer.data(1, b"sift"), sealer.ping(), sealer.data(65535, b""), sealer.data(7, b"\x00" * 5000),
            sealer.close()]
    opened = [opener.open(f) for f in decode_all(b"".join(f.to_bytes() for f in sent))]
    assert [(r.type, r.seq, r.channel, r.payload) for r in opened] == [
        (FrameType.DATA, 0, 1, b"sift"), (FrameType.PING, 1, 0, b""), (FrameType.DATA, 2, 65535, b""),
        (FrameType.DATA, 3, 7, b"\x00" * 5000), (FrameType.CLOSE, 4, 0, b"")]
    assert len(sent[0].body) == len(b"sift") + RECORD_OVERHEAD_BYTES


def test_every_single_bit_flip_is_rejected():
    sealer = RecordSealer(KEY)
    wire = sealer.data(3, b"parity block").to_bytes()
    for bit in range(len(wire) * 8):
        tampered = bytearray(wire)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((RecordError, FrameError)):
            for frame in decode_all(bytes(tampered)):
                RecordOpener(KEY).open(frame)
            raise FrameError("frame incomplete")  # a flipped length leaves the frame unfinished


def test_mac_failure_message_names_the_record_but_not_its_contents():
    frame = RecordSealer(KEY).data(3, b"top secret payload")
    tampered = Frame(frame.type, frame.body[:-1] + bytes([frame.body[-1] ^ 0x80]))
    with pytest.raises(RecordError) as error:
        RecordOpener(KEY).open(tampered)
    message = str(error.value)
    assert "MAC check failed" in message and "seq 0" in message
    assert "top secret" not in message and KEY.hex() not in message


def test_replay_reorder_deletion_and_foreign_key_are_rejected():
    sealer = RecordSealer(KEY)
    first, second, third = (sealer.data(1, bytes([i])) for i in range(3))

    opener = RecordOpener(KEY)
    opener.open(first)
    with pytest.raises(RecordError, match="sequence number 0 replayed, expected 1"):
        opener.open(first)
    with pytest.raises(RecordError, match="already failed"):
        opener.open(second)  # a failed stream stays failed

    with pytest.raises(RecordError, match="sequence number 1 out of order"):
        RecordOpener(KEY).open(second)  # reordered (or the first deleted)

    opener = RecordOpener(KEY)
    opener.open(first)
    with pytest.raises(RecordError, match="sequence number 2 out of order"):
        opener.open(third)  # one record deleted

    with pytest.raises(RecordError, match="MAC check failed"):
        RecordOpener(os.urandom(32)).open(first)  # other direction's or another session's key


def test_record_type_and_length_are_covered_by_the_mac():
    sealer = RecordSealer(KEY)
    ping = sealer.ping()
    with pytest.raises(RecordError, match="MAC check failed"):
        RecordOpener(KEY).open(Frame(FrameType.CLOSE, ping.body))  # a PING passed off as a CLOSE
    with pytest.raises(FrameError, match="where a record was expected"):
        RecordOpener(KEY).open(Frame(FrameType.RESPONDER_HELLO, ping.body))
    with pytest.raises(FrameError, match="shorter than"):
        RecordOpener(KEY).open(Frame(FrameType.DATA, b"\x00" * 10))


def test_while_handshaking_a_record_header_is_refused_before_its_body():
    decoder = FrameDecoder(accept_records=False)
    hello = Frame(FrameType.INITIATOR_HELLO, b"h" * 10).to_bytes()
    data = encode_header(FrameType.DATA, 50 << 20)  # a 50 MiB record announced by an unauthenticated peer
    decoder.receive_data(hello)
    assert decoder.next_frame().type is FrameType.INITIATOR_HELLO
    with pytest.raises(FrameError, match="DATA frame before the handshake completed"):
        decoder.receive_data(data)
    # a record right behind the last handshake frame, in the same chunk, is fine once records are on
    decoder = FrameDecoder(accept_records=False)
    decoder.receive_data(hello + Frame(FrameType.PING, b"p" * 40).to_bytes())
    assert decoder.next_frame().type is FrameType.INITIATOR_HELLO
    decoder.accept_records = True
    assert decoder.next_frame().type is FrameType.PING


def test_any_edit_cut_or_split_of_a_record_stream_gives_records_or_a_channel_error():
    """Whatever bytes arrive, in whatever chunks: whole frames and opened records, or FrameError /
    RecordError, never another exception, and never more buffered than was received."""
    from hypothesis import given, settings, strategies as st

    sealer = RecordSealer(KEY)
    wire = b"".join(frame.to_bytes() for frame in (sealer.data(3, b"abc" * 10), sealer.ping(),
                                                   sealer.data(0, b""), sealer.close()))

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=200),
                     st.tuples(st.integers(0, len(wire) - 1), st.integers(0, 255)).map(
                         lambda edit: wire[:edit[0]] + bytes([edit[1]]) + wire[edit[0] + 1:]),
                     st.integers(0, len(wire)).map(lambda cut: wire[:cut]),
                     st.integers(0, len(wire)).map(lambda cut: wire[cut:])),
           st.lists(st.integers(1, 50), max_size=8), st.booleans())
    def check(data, chunk_sizes, end_of_stream):
        decoder, opener = FrameDecoder(max_record_bytes=1 << 16), RecordOpener(KEY)
        starts = [sum(chunk_sizes[:i]) for i in range(len(chunk_sizes) + 1)]
        chunks = [data[start:end] for start, end in zip(starts, starts[1:] + [len(data)])]
        try:
            for chunk in [chunk for chunk in chunks if chunk] + ([b""] if end_of_stream else []):
                decoder.receive_data(chunk)                # b"": the end of the stream
                while (frame := decoder.next_frame()) is not None:
                    opener.open(frame)
                assert decoder.buffered_bytes <= len(data)
        except (FrameError, RecordError):
            pass

    check()


def test_large_records_go_out_in_pieces_byte_for_byte_as_whole_records_and_open_from_a_view():
    payload = os.urandom((1 << 20) + 3)               # over ZERO_COPY_BYTES and INCREMENTAL_MAC_BYTES
    for transcript in (frozenset(), frozenset({7})):
        whole, pieces = RecordSealer(KEY, transcript), RecordSealer(KEY, transcript)
        wire = b"".join(bytes(p) for p in pieces.data_pieces(7, payload))
        assert wire == whole.data(7, payload).to_bytes() and pieces.next_seq == whole.next_seq == 1
        wire += RecordSealer(KEY, transcript).data(7, b"").to_bytes()[:5]     # the start of the next frame
        decoder = FrameDecoder(max_record_bytes=2 << 20)
        for start in range(0, len(wire), 256 * 1024):
            decoder.receive_data(wire[start:start + 256 * 1024])
        assert decoder.complete_frame_bytes() == len(payload) + RECORD_OVERHEAD_BYTES - (32 if transcript else 0)
        frame = decoder.next_frame()
        assert isinstance(frame.body, memoryview) and frame.body.readonly
        assert decoder.buffered_bytes == 5 and decoder.next_frame() is None
        assert RecordOpener(KEY, transcript).open(frame).payload == payload
    with pytest.raises(RecordError):
        RecordOpener(os.urandom(32)).open(decode_all(b"".join(bytes(p) for p in RecordSealer(KEY).data_pieces(
            1, payload)), FrameDecoder(max_record_bytes=2 << 20))[0])
