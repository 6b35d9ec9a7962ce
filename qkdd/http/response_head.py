"""The head of every response the server sends: the handler's status and headers plus the headers the
server owns (Date, Server, Content-Type/Length, Cache-Control: no-store, X-Request-Id, Connection)."""
from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

import h11

from .messages import Response

NO_BODY_STATUSES = frozenset({204, 304})
# Headers the server owns; a handler's own values for these are dropped.
SERVER_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "date", "server", "x-request-id",
                            "content-type", "cache-control", "keep-alive", "upgrade"})


def response_body(response: Response) -> bytes:
    """The bytes that go on the wire after the head (none for 204 and 304)."""
    return b"" if response.status in NO_BODY_STATUSES else response.body


def response_head(response: Response, request_id: str, close: bool) -> h11.Response:
    """The h11 response event; h11 validates it on construction (LocalProtocolError for a bad header or
    status, TypeError for a header that is not a string)."""
    headers = [
        ("Date", _http_date()),
        ("Server", "qkdd"),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Request-Id", request_id),
    ]
    if response.status not in NO_BODY_STATUSES:
        headers += [("Content-Type", response.content_type), ("Content-Length", str(len(response.body)))]
    headers += [(name, value) for name, value in response.headers if name.lower() not in SERVER_HEADERS]
    if close:
        headers.append(("Connection", "close"))
    return h11.Response(status_code=response.status, headers=headers, reason=reason_phrase(response.status))


_date_cache = [-1, ""]      # [second, its IMF-fixdate text]: formatted once a second, not per response


def _http_date() -> str:
    second = int(time.time())
    if second != _date_cache[0]:
        _date_cache[:] = [second, formatdate(second, usegmt=True)]
    return _date_cache[1]


_PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


def reason_phrase(status: int) -> bytes:
    return _PHRASES.get(status, b"")
