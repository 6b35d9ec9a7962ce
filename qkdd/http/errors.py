"""Every error the server itself produces, as the JSON responses clients see.

Bodies are `{"message": ..., "details": [...]}`, each detail a name/value object: the Error data format of
ETSI GS QKD 014 §6.5, which the API listener serves. Details never quote request bytes back (a request line
may hold a secret in its query string) and never carry exception text from handlers.
"""
from __future__ import annotations

import re

import h11

from .messages import HTTPError

_QUOTED_BYTES_RE = re.compile(r"\s*:?\s*(?:b['\"]|bytearray\()")
_PROTOCOL_MESSAGES = {
    400: "malformed HTTP request",
    431: "request header fields too large",
    501: "unsupported transfer coding",
}


def protocol_error(exc: h11.RemoteProtocolError) -> HTTPError:
    """The HTTPError for a request h11 could not parse (400, 431 or 501)."""
    status = exc.error_status_hint if exc.error_status_hint in _PROTOCOL_MESSAGES else 400
    # h11 messages look like "illegal request line: b'...'": keep the part before the quoted bytes.
    detail = _QUOTED_BYTES_RE.split(str(exc), 1)[0].strip()[:120] or "unparseable request"
    return HTTPError(status, _PROTOCOL_MESSAGES[status], [{"request": detail}])


def header_too_large(limit_bytes: int) -> HTTPError:
    return HTTPError(431, _PROTOCOL_MESSAGES[431],
                     [{"headers": f"the request head must not exceed {limit_bytes} bytes"}])


def body_too_large(limit_bytes: int) -> HTTPError:
    return HTTPError(413, "request body too large", [{"body": f"the request body must not exceed {limit_bytes} bytes"}])


def request_timeout(what: str) -> HTTPError:
    return HTTPError(408, "request timeout", [{"request": f"the {what} did not arrive in time"}])


def ambiguous_framing() -> HTTPError:
    return HTTPError(400, "malformed HTTP request", [{"headers": "Content-Length and Transfer-Encoding are both set"}])


def bad_query() -> HTTPError:
    return HTTPError(400, "malformed query string", [{"query": "the query string is not valid UTF-8 form data"}])


def internal_error() -> HTTPError:
    return HTTPError(500, "internal server error", [])


def handler_timeout(retry_after_s: int) -> HTTPError:
    return HTTPError(503, "service unavailable", [{"reason": "the request took too long; try again later"}],
                     headers=[("Retry-After", str(retry_after_s))])


def too_many_connections(retry_after_s: int) -> HTTPError:
    return HTTPError(503, "service unavailable", [{"reason": "too many connections; try again later"}],
                     headers=[("Retry-After", str(retry_after_s))])


def server_busy(retry_after_s: int) -> HTTPError:
    return HTTPError(503, "service unavailable", [{"reason": "too many request bodies in progress; try again later"}],
                     headers=[("Retry-After", str(retry_after_s))])
