"""Fuzz target: the bytes an ETSI GS QKD 004 application sends (qkdd.etsi004.wire). Each input goes to a
FrameReader in two parts (split where its first byte says), and every request it yields is answered by the
stream bookkeeping the listener uses (OPEN's QoS negotiation, the stream table), without a link.

Expected: requests or a WireError; every request encodes again, and an OPEN's answer is a response the
application can read.
"""
from __future__ import annotations

from tests.fuzz._common import Finding, fuzz, instrumented

with instrumented():
    from qkdd.etsi004.streams import Streams, negotiate
    from qkdd.etsi004.wire import (Close, FrameReader, GetKey, OpenConnect, QoS, WireError, decode_response,
                                   encode_request, open_connect_response)


def TestOneInput(data: bytes) -> None:
    cut = data[0] % (len(data) + 1) if data else 0
    reader = FrameReader()
    try:
        requests = reader.feed(data[:cut]) + reader.feed(data[cut:])
    except WireError:
        return
    streams = Streams()
    for request in requests:
        if isinstance(request, OpenConnect):
            status, qos = negotiate(request.qos, 10_000.0)
            try:
                response = open_connect_response(status, qos, request.key_stream_id)
            except ValueError:
                if len(qos.metadata_mimetype.encode()) < 256:
                    raise Finding(f"OPEN answer not encodable for {qos!r}") from None
                continue
            answer, rest = decode_response(response)
            if rest or answer.status != status:
                raise Finding(f"OPEN answer reads back as {answer!r}")
            streams.open(request.key_stream_id, "l1", "me", qos)
        elif isinstance(request, (GetKey, Close)):
            streams.get(request.key_stream_id, "me")
        else:
            raise Finding(f"not a request: {request!r}")
        try:
            encode_request(request)
        except ValueError as exc:
            raise Finding(f"a decoded request does not encode: {exc}") from None


def seeds() -> list[bytes]:
    ksid = "0f0e0d0c-0b0a-4908-8706-050403020100"
    qos = QoS(32, 4000, 0, 0, 0, 5000, 3600, "application/json")
    return [encode_request(OpenConnect("app://a", "app://b", qos, ksid)),
            encode_request(GetKey(ksid, 3, 1024)) + encode_request(Close(ksid)),
            encode_request(OpenConnect("", "", QoS(0, 0, 0, 0, 0, 0, 0, ""), "00000000-0000-0000-0000-000000000000"))]


if __name__ == "__main__":
    fuzz(TestOneInput)
