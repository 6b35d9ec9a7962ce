"""Fuzz target: the classical channel after the handshake, as the session reads it: bytes in pieces into the
frame decoder, each record frame through the record opener (MAC and sequence check).

Expected: frames or a FrameError; records or a RecordError/FrameError, after which the opener refuses every
later record. The frames decoded are exactly the bytes received, in order, and no error quotes a record key.
"""
from __future__ import annotations

from tests.fuzz._common import Finding, check_silent, fuzz, instrumented

with instrumented():
    from qkdd.peer.errors import FrameError, RecordError
    from qkdd.peer.framing import HANDSHAKE_TYPES, FrameDecoder, FrameType
    from qkdd.peer.records import RecordOpener, RecordSealer

# The fixed direction keys the seed corpus was sealed with (a handshake derives fresh ones per session).
RECEIVE_KEY = bytes(range(32))
SEND_KEY = bytes(range(32, 64))
MAX_RECORD_BYTES = 64 * 1024
SECRETS = (RECEIVE_KEY, SEND_KEY)


def _pieces(data: bytes) -> list[bytes]:
    """The input as a stream delivers it: in three pieces at places that depend on its length."""
    first, second = len(data) // 3, len(data) // 3 + len(data) % 7
    return [data[:first], data[first:second], data[second:]]


def TestOneInput(data: bytes) -> None:
    decoder = FrameDecoder(MAX_RECORD_BYTES)
    opener = RecordOpener(RECEIVE_KEY)
    received = bytearray()
    failed = False
    try:
        for piece in _pieces(data) + [b""]:
            if piece or not decoder.at_eof:
                decoder.receive_data(piece)
            while (frame := decoder.next_frame()) is not None:
                received += frame.to_bytes()
                if frame.type in HANDSHAKE_TYPES:
                    continue                  # the session refuses these after the handshake
                try:
                    record = opener.open(frame)
                except (RecordError, FrameError) as error:
                    check_silent(str(error), SECRETS, "record error")
                    failed = True
                    continue
                if failed:
                    raise Finding("the opener took a record after a refused one")
                if record.type is not frame.type or (record.type is not FrameType.DATA and record.payload):
                    raise Finding(f"record {record!r} from a {frame.type.name} frame")
    except FrameError as error:
        check_silent(str(error), SECRETS, "frame error")
    if bytes(received) != data[:len(received)]:
        raise Finding("decoded frames are not the bytes received")


def seeds() -> list[bytes]:
    sealer = RecordSealer(RECEIVE_KEY)
    stream = [sealer.data(3, b"sifting message"), sealer.ping(), sealer.data(0, bytes(40)), sealer.close()]
    return [b"".join(frame.to_bytes() for frame in stream),
            RecordSealer(RECEIVE_KEY).data(7, b"\x01" * 300).to_bytes(),
            RecordSealer(SEND_KEY).ping().to_bytes()]


if __name__ == "__main__":
    fuzz(TestOneInput)
