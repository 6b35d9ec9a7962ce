"""What the request head decides, over real sockets: a request for no route, for a method the route does not
take, or from a caller the route's access check refuses is answered before its body is read; bodies that
are read share one budget per listener."""
from __future__ import annotations

import json
import threading
import time

import httpx

from http_support import ResponseReader, connect, make_router, read_response, read_until_closed, wait_for
from qkdd.http import HTTPError, HTTPLimits, Request, Response

MIB = 1 << 20


def guarded_router():
    """make_router plus /guarded (GET and POST), which only callers from 127.0.0.2 may use."""
    router = make_router()
    calls = []

    def from_127_0_0_2(caller) -> None:
        if caller.client is None or caller.client[0] != "127.0.0.2":
            raise HTTPError(403, "not you", [{"client": "only 127.0.0.2"}])

    async def guarded(request: Request) -> Response:
        calls.append(len(request.body))
        return Response.json({"received_bytes": len(request.body)})

    router.route("GET", "/guarded", guarded, access=from_127_0_0_2)
    router.route("POST", "/guarded", guarded, access=from_127_0_0_2)
    return router, calls


def head(method: str, path: str, length: int) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def test_refused_unroutable_and_wrong_method_requests_are_answered_on_their_head(http_server):
    router, calls = guarded_router()
    # A long body timeout: an answer that waited for the body would come 30 s late.
    server = http_server(router, limits=HTTPLimits(body_timeout_s=30.0))
    for request, status in ((head("POST", "/guarded", MIB), 403), (head("POST", "/nowhere", MIB), 404),
                            (head("POST", "/hello", MIB), 405), (head("POST", "/upload", 2 * MIB), 413)):
        with connect(server.address) as sock:
            started = time.monotonic()
            sock.sendall(request)                        # the head only; the body never comes
            response = read_response(sock)
            assert response.status == status and time.monotonic() - started < 1.0, request
            assert response.getheader("connection") == "close"
            received, _ = read_until_closed(sock, 5.0)   # and the connection ends: its body is not wanted
            assert received == b""
    assert calls == [] and server.server.body_budget.peak_bytes == 0


def test_a_refused_request_without_a_body_keeps_its_connection(http_server):
    router, _ = guarded_router()
    server = http_server(router)
    with connect(server.address) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"GET /guarded HTTP/1.1\r\nHost: x\r\n\r\n")
        refused = reader.read()
        assert refused.status == 403 and refused.getheader("connection") is None
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.read().json == {"hello": "world"}


def test_an_allowed_caller_gets_its_body_read(http_server):
    router, calls = guarded_router()
    server = http_server(router, host="0.0.0.0")
    import socket
    with socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.2", 0), timeout=5) as sock:
        sock.sendall(head("POST", "/guarded", 1000) + b"a" * 1000)
        assert read_response(sock).json == {"received_bytes": 1000}
    assert calls == [1000]
    assert wait_for(lambda: server.server.body_budget.in_use_bytes == 0)


def test_a_flood_of_refused_bodies_is_dropped_unread(http_server):
    """Whole 1 MiB bodies sent to a refused route: each is answered 403 at once, and no byte of them is
    ever held in the listener's body budget."""
    router, calls = guarded_router()
    server = http_server(router)
    statuses = []

    def client() -> None:
        with connect(server.address) as sock:
            try:
                sock.sendall(head("POST", "/guarded", MIB) + b"a" * MIB)
            except OSError:
                pass                                     # the server closed while we were still sending
            try:
                statuses.append(read_response(sock).status)
            except OSError:
                statuses.append("reset")

    threads = [threading.Thread(target=client) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(statuses) == 20 and set(statuses) <= {403, "reset"} and 403 in statuses
    assert calls == [] and server.server.body_budget.peak_bytes == 0
    assert httpx.get(server.url("/hello")).status_code == 200


def test_bodies_share_the_listener_budget_and_a_request_without_room_gets_503(http_server):
    limits = HTTPLimits(max_body_bytes=100_000, max_buffered_body_bytes=200_000, body_wait_s=0.5)
    server = http_server(make_router(), limits=limits)
    budget = server.server.body_budget
    holders = [connect(server.address) for _ in range(2)]
    try:
        for sock in holders:                              # two bodies announced, barely begun: all room taken
            sock.sendall(head("POST", "/upload", 100_000) + b"a" * 10)
        assert wait_for(lambda: budget.in_use_bytes == 200_000)
        with connect(server.address) as third:
            started = time.monotonic()
            third.sendall(head("POST", "/upload", 100_000))
            refused = read_response(third)
            waited_s = time.monotonic() - started
        assert refused.status == 503 and refused.getheader("retry-after") == "1"
        assert json.loads(refused.body)["details"] == [{"reason": "too many request bodies in progress; "
                                                                  "try again later"}]
        assert 0.4 < waited_s < 2.0
        assert httpx.get(server.url("/hello")).status_code == 200        # requests without a body go on
        # One body completes: its room goes to the next request, which now gets in.
        holders[0].sendall(b"a" * (100_000 - 10))
        assert read_response(holders[0]).json == {"received_bytes": 100_000}
        assert httpx.post(server.url("/upload"), content=b"b" * 50_000).json() == {"received_bytes": 50_000}
    finally:
        for sock in holders:
            sock.close()
    assert wait_for(lambda: budget.in_use_bytes == 0)      # every byte given back, also by the abandoned one
    assert budget.peak_bytes == 200_000


def test_a_waiting_request_gets_the_room_a_finished_one_gives_back(http_server):
    limits = HTTPLimits(max_body_bytes=100_000, max_buffered_body_bytes=100_000, body_wait_s=5.0)
    server = http_server(make_router(), limits=limits)
    with connect(server.address) as first, connect(server.address) as second:
        first.sendall(head("POST", "/upload", 100_000) + b"a" * 10)
        assert wait_for(lambda: server.server.body_budget.in_use_bytes == 100_000)
        second.sendall(head("POST", "/upload", 60_000) + b"b" * 60_000)
        assert wait_for(lambda: server.server.body_budget.waiting == 1)
        first.sendall(b"a" * (100_000 - 10))
        assert read_response(first).json == {"received_bytes": 100_000}
        assert read_response(second).json == {"received_bytes": 60_000}


def test_chunked_bodies_take_room_as_they_arrive(http_server):
    limits = HTTPLimits(max_body_bytes=100_000, max_buffered_body_bytes=100_000, body_wait_s=0.3)
    server = http_server(make_router(), limits=limits)
    with connect(server.address) as holder:
        holder.sendall(head("POST", "/upload", 90_000) + b"a" * 10)
        assert wait_for(lambda: server.server.body_budget.in_use_bytes == 90_000)
        with connect(server.address) as chunked:
            chunk = b"c" * 5000
            chunked.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 3 + b"0\r\n\r\n")
            assert read_response(chunked).status == 503          # the third chunk found no room
    assert wait_for(lambda: server.server.body_budget.in_use_bytes == 0)
    chunks = iter([b"d" * 4000] * 5)
    assert httpx.post(server.url("/upload"), content=chunks).json() == {"received_bytes": 20_000}
