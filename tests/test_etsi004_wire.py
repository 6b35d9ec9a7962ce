"""The ETSI 004 wire format (qkdd.etsi004.wire) pinned in hex, as the public open-source 004 client frames
it (version 1.0.1, service type, u32 payload length; big-endian fields), and hostile bytes: anything that
is not a well-formed request is a WireError, never another exception."""
from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings, strategies as st

from qkdd.etsi004.wire import (MAX_PAYLOAD_BYTES, NIL_KSID, Close, FrameReader, GetKey, OpenConnect, QoS, Status,
                               WireError, close_response, decode_response, encode_request, get_key_response,
                               open_connect_response)

KSID = "0f0e0d0c-0b0a-4908-8706-050403020100"
KSID_HEX = "0f0e0d0c0b0a49088706050403020100"
QOS = QoS(512, 40000, 5000, 10, 0, 5000, 3600, "application/json")
QOS_HEX = ("00000200" "00009c40" "00001388" "0000000a" "00000000" "00001388" "00000e10"
           + "application/json".encode().hex().ljust(512, "0"))


@pytest.mark.parametrize("message, expected_hex", [
    (OpenConnect("a://s", "b://d", QOS, NIL_KSID),
     "01000102" "00000138" + "613a2f2f7300" "623a2f2f6400" + QOS_HEX + "00" * 16),
    (GetKey(KSID, 7, 1024), "01000104" "00000018" + KSID_HEX + "00000007" "00000400"),
    (Close(KSID), "01000108" "00000010" + KSID_HEX),
])
def test_004_requests_are_framed_as_the_open_source_client_frames_them(message, expected_hex):
    data = encode_request(message)
    assert data == bytes.fromhex(expected_hex)
    assert FrameReader().feed(data) == [message]


def test_004_responses_are_framed_as_the_open_source_client_reads_them():
    assert open_connect_response(Status.SUCCESSFUL, QOS, KSID) == bytes.fromhex(
        "01000103" "00000130" "00000000" + QOS_HEX + KSID_HEX)
    assert open_connect_response(Status.KSID_IN_USE) == bytes.fromhex("01000103" "00000004" "00000005")
    assert get_key_response(Status.SUCCESSFUL, 3, b"\xaa\xbb", b"{}") == bytes.fromhex(
        "01000105" "00000014" "00000000" "00000003" "00000002" "aabb" "00000002" "7b7d")
    assert get_key_response(Status.TIMEOUT) == bytes.fromhex("01000105" "00000004" "00000006")
    assert close_response(Status.SUCCESSFUL) == bytes.fromhex("01000109" "00000004" "00000000")
    response, rest = decode_response(get_key_response(Status.SUCCESSFUL, 3, b"\xaa\xbb", b"{}") + b"x")
    assert (response.index, response.key, response.metadata, rest) == (3, b"\xaa\xbb", b"{}", b"x")


def test_004_a_request_split_anywhere_is_read_whole():
    data = encode_request(OpenConnect("a://s", "b://d", QOS, KSID)) + encode_request(GetKey(KSID, 1, 0))
    for cut in range(1, len(data)):
        reader = FrameReader()
        assert reader.feed(data[:cut]) + reader.feed(data[cut:]) == [OpenConnect("a://s", "b://d", QOS, KSID),
                                                                      GetKey(KSID, 1, 0)]


@pytest.mark.parametrize("data, problem", [
    (bytes.fromhex("02000104" "00000018") + bytes(24), "protocol version 2"),
    (bytes.fromhex("01000106" "00000000"), "unknown service type 6"),
    (bytes.fromhex("01000104" "00000017") + bytes(23), "GET_KEY: payload of 23 bytes"),
    (bytes.fromhex("01000102") + (MAX_PAYLOAD_BYTES + 1).to_bytes(4, "big"), "exceeds"),
    (bytes.fromhex("01000102" "00000010") + b"no terminator!!!", "not NUL-terminated"),
    (bytes.fromhex("01000102" "00000004") + b"\xff\x00a\x00", "not UTF-8"),
])
def test_004_malformed_requests_are_wire_errors(data, problem):
    with pytest.raises(WireError, match=problem):
        FrameReader().feed(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([2, 4, 8]))
def test_004_any_bytes_are_requests_or_a_wire_error(payload, service):
    data = bytes([1, 0, 1, service]) + len(payload).to_bytes(4, "big") + payload
    try:
        requests = FrameReader().feed(data)
    except WireError:
        return
    for request in requests:
        assert encode_request(request) == data or isinstance(request, OpenConnect)
        uuid.UUID(request.key_stream_id)
