"""HTTPServer over real sockets: routing, HEAD, JSON errors for bad input, handler failures, request log."""
import logging
import re

import httpx
import pytest

from http_support import INTERNAL_SECRET, connect, exchange, make_router, read_response, ResponseReader, wait_for
from qkdd.http import HTTPLimits
from qkdd.logs import LogfmtFormatter


@pytest.fixture
def server(http_server):
    return http_server(make_router(), limits=HTTPLimits(max_header_bytes=4096, max_body_bytes=1000,
                                                        handler_timeout_s=0.5))


def _assert_error(response, status):
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"message", "details"} and isinstance(body["details"], list)
    return body


def test_get_with_path_parameter_and_standard_headers(server):
    response = httpx.get(server.url("/v1/links/link%20one"))
    assert response.status_code == 200
    assert response.json() == {"link_id": "link one", "path": "/v1/links/link one"}
    assert response.headers["server"] == "qkdd"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-length"] == str(len(response.content))
    assert "date" in response.headers and re.fullmatch(r"[0-9a-f]{16}", response.headers["x-request-id"])


def test_unknown_path_404_and_wrong_method_405_with_allow(server):
    _assert_error(httpx.get(server.url("/nope")), 404)
    response = httpx.post(server.url("/v1/links/a"))
    _assert_error(response, 405)
    assert response.headers["allow"] == "DELETE, GET, HEAD"


def test_head_has_get_headers_and_no_body(server):
    get = httpx.get(server.url("/hello"))
    with connect(server.address) as sock:
        sock.sendall(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = ResponseReader(sock)
        head = reader.read("HEAD")
        following = reader.read("GET")
    assert head.status == 200 and head.body == b""
    assert head.getheader("content-length") == get.headers["content-length"]
    assert head.getheader("content-type") == "application/json"
    # The next response on the same connection parses cleanly: HEAD sent no body bytes.
    assert following.status == 200 and following.json == {"hello": "world"}


def test_post_json_echo_and_bad_json_400_and_wrong_type_415(server):
    assert httpx.post(server.url("/echo"), json={"a": [1, 2]}).json() == {"echo": {"a": [1, 2]}}
    _assert_error(httpx.post(server.url("/echo"), content=b"{not json",
                             headers={"content-type": "application/json"}), 400)
    body = _assert_error(httpx.post(server.url("/echo"), content=b"a=1",
                                    headers={"content-type": "application/x-www-form-urlencoded"}), 415)
    assert "application/json" in body["message"]


def test_hostile_json_is_400_not_500(http_server):
    server = http_server(make_router(), limits=HTTPLimits(max_body_bytes=200_000))
    for body in [b"[" * 100_000 + b"]" * 100_000, b"1" * 5000, b"\xff\xfe", b'{"a": NaN}', b"[Infinity]"]:
        response = httpx.post(server.url("/echo"), content=body, headers={"content-type": "application/json"})
        _assert_error(response, 400)


def test_handler_http_error_401_keeps_its_headers(server):
    response = httpx.get(server.url("/private"))
    _assert_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url("/private"), headers={"authorization": "Bearer let-me-in"}).json() == {"ok": True}


def test_http_error_raised_inside_a_handler_nursery_keeps_its_status(server):
    response = httpx.get(server.url("/nursery-error"))
    _assert_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


def test_handler_exception_is_500_without_internals(server, caplog):
    with caplog.at_level(logging.ERROR, logger="qkdd.http"):
        response = httpx.get(server.url("/boom"))
    body = _assert_error(response, 500)
    assert body == {"message": "internal server error", "details": []}
    assert INTERNAL_SECRET not in response.text and "RuntimeError" not in response.text
    # The traceback is kept server-side for the operator.
    assert any(record.exc_info and INTERNAL_SECRET in str(record.exc_info[1]) for record in caplog.records)


def test_handler_timeout_is_503_with_retry_after(server):
    response = httpx.get(server.url("/slow?s=5"))
    _assert_error(response, 503)
    assert int(response.headers["retry-after"]) > 0
    assert response.elapsed.total_seconds() < 2.0


def test_malformed_request_line_400(server):
    for raw in [b"GARBAGE\r\n\r\n", b"GET /hello HTTP/9\r\nHost: x\r\n\r\n", b"GET  /hello HTTP/1.1\r\n\r\n",
                b"GET /he llo HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n"]:
        response = exchange(server.address, raw)
        assert response.status == 400, raw
        assert response.json["message"] == "malformed HTTP request"
        assert response.getheader("connection") == "close"


def test_bad_header_encoding_400(server):
    response = exchange(server.address, b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Name: caf\xe9\r\n\r\n")
    assert response.status == 400 and response.json["details"] == [{"headers": "header x-name is not valid UTF-8"}]
    response = exchange(server.address, b"GET /hello HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n")
    assert response.status == 400


def test_conflicting_or_ambiguous_content_length_400(server):
    for framing in [b"Content-Length: 3\r\nContent-Length: 4\r\n", b"Content-Length: 3, 4\r\n",
                    b"Content-Length: -1\r\n", b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"]:
        response = exchange(server.address, b"POST /upload HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\nabc")
        assert response.status == 400, framing
        assert response.json["message"] == "malformed HTTP request"


def test_protocol_error_details_do_not_quote_the_request(server):
    for raw in [b"GET /hello?token=s3cr3t HTTP/1.1\r\nHost: x\r\nBad Header s3cr3t\r\n\r\n",
                b"GET /hello?token=s3cr3t HTTP/1.1 extra\r\nHost: x\r\n\r\n",
                b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\ns3cr3t\r\n"]:
        response = exchange(server.address, raw)
        assert response.status == 400 and b"s3cr3t" not in response.body, response.body


def test_unsupported_transfer_coding_501(server):
    response = exchange(server.address, b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert response.status == 501 and set(response.json) == {"message", "details"}


def test_header_limit_431(server):
    big = b"X-Filler: " + b"a" * 5000 + b"\r\n"
    response = exchange(server.address, b"GET /hello HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert response.status == 431
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 50) for i in range(100))
    response = exchange(server.address, b"GET /hello HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert response.status == 431
    assert response.json["message"] == "request header fields too large"


def test_body_limit_413_by_content_length_without_reading_the_body(server):
    with connect(server.address) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        # No body sent at all: the declared length alone is refused.
        response = read_response(sock)
    assert response.status == 413 and response.json["message"] == "request body too large"
    assert httpx.post(server.url("/upload"), content=b"x" * 1000).json() == {"received_bytes": 1000}


def test_body_limit_413_for_chunked_body_while_streaming(server):
    with connect(server.address) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            sock.sendall(b"190\r\n" + b"z" * 400 + b"\r\n")     # 1200 bytes, the final 0-chunk never sent
        response = read_response(sock)
    assert response.status == 413
    ok = httpx.post(server.url("/upload"), content=iter([b"y" * 500, b"y" * 500]))   # chunked, at the limit
    assert ok.json() == {"received_bytes": 1000}


def test_expect_100_continue(server):
    with connect(server.address) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"hello")
        assert read_response(sock).json == {"received_bytes": 5}
    refused = exchange(server.address, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                                       b"Expect: 100-continue\r\n\r\n")
    assert refused.status == 413


def test_query_is_parsed_and_bad_query_is_400(server):
    response = exchange(server.address, b"GET /v1/links/a?x=%ff HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 400 and response.json["message"] == "malformed query string"


def test_request_log_line_without_secrets(server, caplog):
    formatter = LogfmtFormatter(journal=True)
    with caplog.at_level(logging.INFO, logger="qkdd.http"):
        response = httpx.post(server.url("/echo?token=query-secret-55"), json={"key": "body-secret-77"},
                              headers={"authorization": "Bearer auth-secret-99"})
        assert response.status_code == 200
        httpx.get(server.url("/nope"))
        request_id = response.headers["x-request-id"]

        def lines():
            return [formatter.format(record) for record in caplog.records if record.name == "qkdd.http"]

        assert wait_for(lambda: sum(" status=" in line for line in lines()) == 2)
    lines = lines()
    [line] = [line for line in lines if request_id in line]
    # One logfmt line, each field once: the message does not repeat the fields.
    assert line.count(request_id) == 1 and line.count("status=") == 1 and " msg=request " in line
    assert f" request_id={request_id} " in line and " method=POST " in line and " path=/echo " in line
    assert " status=200 " in line and " duration_ms=" in line and " client=127.0.0.1:" in line
    assert any(" path=/nope " in line and " status=404 " in line for line in lines)
    everything = "\n".join(lines + [caplog.text])
    for secret in ["query-secret-55", "body-secret-77", "auth-secret-99", "token="]:
        assert secret not in everything


def test_invalid_response_header_from_handler_becomes_500(server):
    response = exchange(server.address, b"GET /header-injection HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 500 and response.getheader("set-cookie") is None
    assert response.json == {"message": "internal server error", "details": []}


def test_204_has_no_body_and_keeps_the_connection(server):
    with connect(server.address) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"DELETE /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        no_content = reader.read()
        assert no_content.status == 204 and no_content.getheader("content-length") is None
        assert reader.read().json == {"hello": "world"}
