"""What handlers see and return: requests, responses, errors, the peer certificate, listener settings.

This is the contract between the HTTP server (server.py) and everything that serves routes (api/).
Handlers are `async def handler(request: Request) -> Response`; they raise HTTPError for client errors.
Each route may carry an `Access` check, which the server runs on the `Caller` (peer address and client
certificate) once the request head is in, before a byte of the body is read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal


@dataclass(frozen=True)
class PeerCertificate:
    """The verified client certificate of a TLS peer."""

    subject: str                      # RFC 4514 string, e.g. "CN=sae-a,O=Example"
    common_name: str | None           # the subject's CN; None when it has none, or more than one
    san_uris: tuple[str, ...]
    san_dns: tuple[str, ...]
    sha256_fingerprint: str           # lowercase hex of SHA-256 over the DER certificate
    common_names: tuple[str, ...] = ()    # every CN of the subject (a name is never taken from two)

    def __post_init__(self) -> None:
        if not self.common_names and self.common_name:
            object.__setattr__(self, "common_names", (self.common_name,))


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as the connection alone tells: known before the request's body is read."""

    client: tuple[str, int] | None              # peer address
    peer_cert: PeerCertificate | None           # verified TLS client certificate, if any


@dataclass
class Request:
    """One parsed request. Query, headers (Authorization) and body are left out of repr(): a repr in a
    log line or traceback must not carry credentials or key material."""

    method: str                       # upper case, e.g. "GET"
    path: str                         # percent-decoded path without the query string
    query: dict[str, list[str]] = field(repr=False)
    headers: list[tuple[str, str]] = field(repr=False)    # names lower case, in arrival order
    body: bytes = field(repr=False)
    request_id: str
    client: tuple[str, int] | None = None
    peer_cert: PeerCertificate | None = None
    path_params: dict[str, str] = field(default_factory=dict)
    raw_path: str = ""                # the path as sent (percent-encoded), without the query string

    def header(self, name: str) -> str | None:
        """First value of header `name` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        """The body parsed as JSON; 415 for another content type, 400 for malformed JSON."""
        content_type = (self.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HTTPError(415, "request body must be application/json",
                            [{"content-type": f"was {content_type or 'missing'}"}])
        try:
            return json.loads(self.body.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HTTPError(400, "request body is not valid JSON", [{"body": str(exc)}]) from None
        except RecursionError:
            raise HTTPError(400, "request body is not valid JSON", [{"body": "nested too deeply"}]) from None
        except ValueError as exc:  # NaN/Infinity, or an integer beyond Python's digit limit
            detail = str(exc) if isinstance(exc, _NotJSON) else "a number is too large"
            raise HTTPError(400, "request body is not valid JSON", [{"body": detail}]) from None


class _NotJSON(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not JSON (RFC 8259)")


@dataclass
class Response:
    """What a handler returns. The body (keys, for the key-delivery routes) is left out of repr()."""

    status: int = 200
    body: bytes = field(default=b"", repr=False)
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> "Response":
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), "application/json",
                   list(headers or []))

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> "Response":
        return cls(status, text.encode(), content_type)


class HTTPError(Exception):
    """A client-visible error; rendered as JSON {"message": ..., "details": [...]} with `status`. Each
    detail is an object naming what it is about ({"bits": "must be ..."}), as in the Error data format of
    ETSI GS QKD 014 §6.5, so every route of the listener answers errors of one shape."""

    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None,
                 headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = list(details or [])
        self.headers = list(headers or [])

    def to_response(self) -> Response:
        return Response.json({"message": self.message, "details": self.details}, self.status, self.headers)


Handler = Callable[[Request], Awaitable[Response]]

# Decides from the request head alone whether the caller may use a route: returns to let it through,
# raises HTTPError (401, 403) to refuse. The server then answers without reading the body.
Access = Callable[[Caller], None]

ClientCertMode = Literal["none", "optional", "required"]


@dataclass(frozen=True)
class TLSSettings:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_cert: ClientCertMode = "none"


@dataclass(frozen=True)
class HTTPLimits:
    """Per-listener limits; the defaults are safe for a key-delivery API on an appliance."""

    max_header_bytes: int = 16 * 1024          # 431 beyond
    max_body_bytes: int = 1024 * 1024          # 413 beyond
    header_timeout_s: float = 10.0             # time to receive the full header block
    body_timeout_s: float = 30.0               # time to receive the full body
    keepalive_timeout_s: float = 60.0          # idle time between requests
    max_requests_per_connection: int = 1000
    max_connections: int = 1024                # excess connections are refused at once (see slots.py)
    max_connections_per_source: int = 128      # from one IPv4 address or IPv6 /64; loopback is not limited
    authenticated_reserve: int = 256           # of max_connections, kept for clients with a verified certificate
    max_buffered_body_bytes: int = 16 * 1024 * 1024    # request bodies held at once, all connections together
    body_wait_s: float = 1.0                   # a body waits this long for room in that budget, then 503
    unauthenticated_idle_s: float = 5.0        # idle time allowed a connection without a verified certificate
    handler_timeout_s: float = 30.0            # a handler taking longer yields 503
    shutdown_grace_s: float = 10.0             # in-flight requests get this long on shutdown
    tls_handshake_timeout_s: float = 5.0       # time to finish the TLS handshake
    send_timeout_s: float = 30.0               # time to hand a response to a client that reads slowly

    def __post_init__(self) -> None:
        if self.max_body_bytes > self.max_buffered_body_bytes:
            raise ValueError(f"max_body_bytes ({self.max_body_bytes}) must not exceed max_buffered_body_bytes "
                             f"({self.max_buffered_body_bytes}): a body that large could never be read")
