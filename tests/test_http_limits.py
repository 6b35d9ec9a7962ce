"""Connection-level limits over real sockets: slow clients, idle and excess connections, graceful shutdown."""
import json
import logging
import resource
import select
import socket
import threading
import time

import httpx
import pytest

from http_support import (ResponseReader, Signals, connect, is_closed, make_router, read_response, read_until_closed,
                          wait_for)
from qkdd.http import HTTPLimits

GET_HELLO = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"


def test_slow_loris_is_cut_off_at_header_timeout_while_others_are_served(http_server):
    server = http_server(make_router(), limits=HTTPLimits(header_timeout_s=1.0))
    outcome = {}

    def slow_client():
        with connect(server.address) as sock:
            started = time.monotonic()
            for byte in GET_HELLO[:-2] + b"X-Slow: " + b"a" * 100:
                readable, _, _ = select.select([sock], [], [], 0.2)    # one byte every 0.2 s
                if readable:
                    break
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    break
            outcome["received"], _ = read_until_closed(sock, 5.0)
            outcome["elapsed_s"] = time.monotonic() - started

    slow = threading.Thread(target=slow_client)
    slow.start()
    latencies = []
    with httpx.Client() as client:
        while slow.is_alive():
            started = time.monotonic()
            assert client.get(server.url("/hello")).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.1)
    slow.join()
    assert outcome["received"].startswith(b"HTTP/1.1 408 ")
    assert json.loads(outcome["received"].split(b"\r\n\r\n", 1)[1])["message"] == "request timeout"
    assert 0.9 < outcome["elapsed_s"] < 3.0
    # Served throughout, each well inside the slow client's header timeout.
    assert len(latencies) >= 5 and max(latencies) < 1.0


def test_body_timeout_408(http_server):
    server = http_server(make_router(), limits=HTTPLimits(body_timeout_s=0.5))
    with connect(server.address) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        response = read_response(sock)
        assert response.status == 408 and response.getheader("connection") == "close"
        assert 0.4 < time.monotonic() - started < 2.0
        assert is_closed(sock, 3.0)


def test_new_connection_that_sends_nothing_is_closed_at_header_timeout(http_server):
    server = http_server(make_router(), limits=HTTPLimits(header_timeout_s=0.5))
    with connect(server.address) as sock:
        received, elapsed_s = read_until_closed(sock, 5.0)
    assert received == b"" and 0.4 < elapsed_s < 2.0


def test_keepalive_idle_timeout_closes(http_server):
    server = http_server(make_router(), limits=HTTPLimits(keepalive_timeout_s=0.5))
    with connect(server.address) as sock:
        reader = ResponseReader(sock)
        for _ in range(2):
            sock.sendall(GET_HELLO)
            assert reader.read().status == 200
        received, elapsed_s = read_until_closed(sock, 5.0)
    assert received == b"" and 0.4 < elapsed_s < 2.0


def test_max_requests_per_connection(http_server):
    server = http_server(make_router(), limits=HTTPLimits(max_requests_per_connection=3))
    with connect(server.address) as sock:
        reader = ResponseReader(sock)
        responses = []
        for _ in range(3):
            sock.sendall(GET_HELLO)
            responses.append(reader.read())
        assert [response.status for response in responses] == [200, 200, 200]
        assert [response.getheader("connection") for response in responses] == [None, None, "close"]
        assert is_closed(sock, 2.0)


def test_pipelined_requests_are_answered_in_order(http_server):
    server = http_server(make_router())
    with connect(server.address) as sock:
        sock.sendall(b"GET /v1/links/one HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/links/two HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = ResponseReader(sock)
        assert [reader.read().json["link_id"] for _ in range(2)] == ["one", "two"]


def test_excess_connections_are_refused_at_once_with_503(http_server):
    server = http_server(make_router(), limits=HTTPLimits(max_connections=3))
    held = [connect(server.address) for _ in range(3)]
    try:
        # The held connections are accepted in order, so the next one is over the limit.
        with connect(server.address) as excess:
            started = time.monotonic()
            received, _ = read_until_closed(excess, 5.0)
            assert time.monotonic() - started < 1.0
        head, body = received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1\r\n" in head
        assert json.loads(body) == {"message": "service unavailable",
                                    "details": [{"reason": "too many connections; try again later"}]}
        # A client that sends its request straight away still reads the 503 (no reset).
        refused = httpx.get(server.url("/hello"))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        held[0].sendall(GET_HELLO)
        assert read_response(held[0]).status == 200          # the held ones are served normally
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 3.0
    while server.server.connection_count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(server.url("/hello")).status_code == 200   # slots free again once they close


def test_refused_connections_are_logged_rate_limited_and_counted_without_a_further_refusal(http_server, caplog,
                                                                                          monkeypatch):
    from qkdd import log_limit

    monkeypatch.setattr(log_limit, "SUMMARY_INTERVAL_S", 0.3)
    server = http_server(make_router(), limits=HTTPLimits(max_connections=1))
    flood = log_limit.DEFAULT_BURST + 15
    held = connect(server.address)
    try:
        held.sendall(GET_HELLO)
        assert read_response(held).status == 200                  # accepted: the one allowed connection
        with caplog.at_level(logging.INFO, logger="qkdd.http"):
            for _ in range(flood):
                with connect(server.address) as excess:
                    read_until_closed(excess, 5.0)

            def refusals() -> list[str]:
                return [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]

            def summaries() -> list[str]:
                return [r.getMessage() for r in caplog.records if "similar messages suppressed" in r.getMessage()]

            # every refusal is either a line of its own or counted in a summary, with no further refusal
            assert wait_for(lambda: len(refusals()) + sum(int(text.split()[0]) for text in summaries()) == flood)
        assert log_limit.DEFAULT_BURST <= len(refusals()) < flood
        assert all(text.endswith("(connection-limit)") for text in summaries())
        assert "1 open, max_connections=1" in refusals()[0]
    finally:
        held.close()


def test_500_idle_connections_while_requests_are_answered(http_server):
    idle_count = 500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * idle_count + 200          # client and server ends both live in this process
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    server = http_server(make_router(), limits=HTTPLimits(header_timeout_s=30.0))
    idle = []
    try:
        for _ in range(idle_count):
            idle.append(socket.create_connection(server.address, timeout=5.0))
        deadline = time.monotonic() + 5.0
        while server.server.connection_count < idle_count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.server.connection_count >= idle_count
        with httpx.Client() as client:
            for _ in range(3):
                started = time.monotonic()
                assert client.get(server.url("/hello")).status_code == 200
                assert time.monotonic() - started < 1.0
        readable = select.poll()            # (not select(): past earlier tests these fds may exceed FD_SETSIZE)
        for sock in idle:
            readable.register(sock, select.POLLIN)
        assert not readable.poll(0)                            # idle ones still open, nothing sent
    finally:
        for sock in idle:
            sock.close()


def test_graceful_shutdown_finishes_in_flight_and_refuses_new(http_server):
    signals = Signals()
    server = http_server(make_router(signals), limits=HTTPLimits(shutdown_grace_s=5.0))
    idle = connect(server.address)
    result = {}

    def in_flight():
        result["response"] = httpx.get(server.url("/slow?s=1"), timeout=5.0)

    client = threading.Thread(target=in_flight)
    client.start()
    assert signals.slow_started.wait(5.0)
    started = time.monotonic()
    server.shutdown()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=1.0)
    assert is_closed(idle, 1.0)                   # idle keep-alive connections close at once
    idle.close()
    client.join(5.0)
    response = result["response"]
    assert response.status_code == 200 and response.json() == {"slept": True}
    assert response.headers["connection"] == "close"
    assert server.wait_stopped(3.0)
    assert time.monotonic() - started < 2.5


def test_shutdown_grace_bounds_a_stuck_handler(http_server):
    signals = Signals()
    server = http_server(make_router(signals), limits=HTTPLimits(shutdown_grace_s=0.5, handler_timeout_s=60))
    with connect(server.address) as sock:
        sock.sendall(b"GET /slow?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert signals.slow_started.wait(5.0)
        started = time.monotonic()
        server.shutdown()
        assert server.wait_stopped(3.0)
        assert 0.4 < time.monotonic() - started < 2.0
        assert is_closed(sock, 1.0)
