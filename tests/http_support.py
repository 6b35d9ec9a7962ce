"""Helpers for the HTTP tests: a router with handlers that exercise the server, and raw-socket clients."""
from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import trio

from qkdd.http import HTTPError, Request, Response, Router

INTERNAL_SECRET = "internal-detail-7f3a9c"   # appears only in a handler's exception text


class Signals:
    """Lets a test see from its own thread that a handler has started."""

    def __init__(self) -> None:
        self.slow_started = threading.Event()


def make_router(signals: Signals | None = None) -> Router:
    signals = signals or Signals()
    router = Router()

    async def hello(request: Request) -> Response:
        return Response.json({"hello": "world"})

    async def link(request: Request) -> Response:
        return Response.json({"link_id": request.path_params["link_id"], "path": request.path})

    async def echo(request: Request) -> Response:
        return Response.json({"echo": request.json()})

    async def upload(request: Request) -> Response:
        return Response.json({"received_bytes": len(request.body)})

    async def whoami(request: Request) -> Response:
        cert = request.peer_cert
        if cert is None:
            return Response.json({"peer_cert": None})
        return Response.json({"peer_cert": {"subject": cert.subject, "common_name": cert.common_name,
                                            "san_uris": list(cert.san_uris), "san_dns": list(cert.san_dns),
                                            "sha256_fingerprint": cert.sha256_fingerprint}})

    async def boom(request: Request) -> Response:
        raise RuntimeError(f"database password is {INTERNAL_SECRET}")

    async def slow(request: Request) -> Response:
        signals.slow_started.set()
        await trio.sleep(float(request.query.get("s", ["1"])[0]))
        return Response.json({"slept": True})

    async def private(request: Request) -> Response:
        if request.header("authorization") != "Bearer let-me-in":
            raise HTTPError(401, "unauthorized", ["a bearer token is required"],
                            headers=[("WWW-Authenticate", "Bearer")])
        return Response.json({"ok": True})

    async def header_injection(request: Request) -> Response:
        return Response.json({}, headers=[("X-Echo", "a\r\nSet-Cookie: injected=1")])

    async def no_content(request: Request) -> Response:
        return Response(204, b"")

    async def error_in_nursery(request: Request) -> Response:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(private, request)       # raises HTTPError 401 inside the nursery
        return Response.json({})

    router.get("/hello", hello)
    router.get("/nursery-error", error_in_nursery)
    router.get("/header-injection", header_injection)
    router.route("DELETE", "/hello", no_content)
    router.get("/v1/links/{link_id}", link)
    router.route("DELETE", "/v1/links/{link_id}", link)
    router.post("/echo", echo)
    router.post("/upload", upload)
    router.get("/whoami", whoami)
    router.get("/boom", boom)
    router.get("/slow", slow)
    router.get("/private", private)
    return router


def connect(address: tuple[str, int], timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout_s)
    sock.settimeout(timeout_s)
    return sock


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]          # names lower case; a repeated header keeps its last value
    body: bytes

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def json(self):
        return json.loads(self.body) if self.body else None


class ResponseReader:
    """Reads successive HTTP/1.1 responses (Content-Length framed, as the server sends) from one socket."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket):
        self._file = sock.makefile("rb")

    def read(self, method: str = "GET") -> RawResponse:
        status_line = self._file.readline(65537)
        if not status_line:
            raise ConnectionError("connection closed before a response")
        version, status, _ = status_line.decode("latin-1").split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = {}
        while (line := self._file.readline(65537)) not in (b"\r\n", b""):
            name, value = line.decode("latin-1").split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = 0 if method == "HEAD" or int(status) < 200 else int(headers.get("content-length", "0"))
        return RawResponse(int(status), headers, self._file.read(length))


def read_response(sock: socket.socket | ssl.SSLSocket, method: str = "GET") -> RawResponse:
    """Parse one HTTP response from `sock` (use ResponseReader for several on one connection)."""
    return ResponseReader(sock).read(method)


def exchange(address: tuple[str, int], raw_request: bytes, method: str = "GET") -> RawResponse:
    """Send raw bytes on a fresh connection and parse the response."""
    with connect(address) as sock:
        sock.sendall(raw_request)
        return read_response(sock, method)


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or resets) the connection, and when that happened."""
    started = time.monotonic()
    sock.settimeout(timeout_s)
    received = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def is_closed(sock: socket.socket, timeout_s: float) -> bool:
    """True when the server closes the connection (EOF or reset) within timeout_s without sending data."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout):
        return False


def wait_for(predicate, timeout_s: float = 3.0) -> bool:
    """Poll `predicate` until it is true (the server logs a request just after the client has its answer)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
