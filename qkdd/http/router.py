"""Map (method, path) to a handler: literal segments and `{name}` parameters, nothing else.

Matching works on the raw (still percent-encoded) request path, one segment at a time, and decodes
each segment on its own. Paths that could mean two things are rejected before any route is tried:
a percent-encoded slash (`%2F`), a dot segment (`.`, `..`, also encoded), a NUL or control
character, or bytes that are not UTF-8 give 400. Empty segments (`//`, a trailing `/`) are kept and
never match a parameter (unless the route opts in with `empty_params`), so `/v1/links/` and
`/v1//links` are simply 404.

Each handler may come with an `Access` check (messages.py): the connection resolves the route and runs
the check as soon as the request head is in, so a caller that may not use the route, and a request for
no route, are answered before their body is read.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from .messages import Access, Caller, Handler, HTTPError

_PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_LITERAL_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]+$")
_METHOD_RE = re.compile(r"^[A-Z]+$")
_PERCENT_ENCODED_RE = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class _Segment:
    text: str          # the literal, or the parameter name
    is_param: bool


def open_access(caller: Caller) -> None:
    """The check of a route anyone who reaches the listener may use."""


@dataclass(frozen=True)
class RouteMatch:
    """What a request resolves to: its handler, the path parameters, and who may call it."""

    handler: Handler
    params: dict[str, str]
    access: Access


@dataclass
class _Route:
    pattern: str
    segments: tuple[_Segment, ...]
    handlers: dict[str, Handler]
    access: dict[str, Access]      # per method, as handlers
    empty_params: bool = False     # a blank parameter matches (the handler answers 400 rather than 404)
    head: bool = True              # HEAD is served by the GET handler; False: refused (405), never advertised

    def match(self, segments: tuple[str, ...]) -> dict[str, str] | None:
        if len(segments) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for wanted, got in zip(self.segments, segments):
            if wanted.is_param:
                if not got and not self.empty_params:
                    return None
                params[wanted.text] = got
            elif wanted.text != got:
                return None
        return params

    def specificity(self) -> tuple[int, ...]:
        """Sorts literal segments before parameters, position by position (lower is more specific)."""
        return tuple(int(segment.is_param) for segment in self.segments)


def _parse_pattern(pattern: str) -> tuple[_Segment, ...]:
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern must start with '/': {pattern!r}")
    segments = []
    names = set()
    for part in pattern[1:].split("/"):
        param = _PARAM_RE.match(part)
        if param:
            name = param.group(1)
            if name in names:
                raise ValueError(f"route pattern {pattern!r} repeats parameter {name!r}")
            names.add(name)
            segments.append(_Segment(name, True))
        elif _LITERAL_RE.match(part) and part not in (".", ".."):
            segments.append(_Segment(part, False))
        else:
            raise ValueError(f"route pattern {pattern!r} has an invalid segment {part!r}")
    return tuple(segments)


def split_path(raw_path: str) -> tuple[str, ...]:
    """The decoded segments of a raw request path; HTTPError 400 for an ambiguous or malformed path."""
    if not raw_path.startswith("/"):
        raise HTTPError(400, "malformed request path", [{"path": "must start with '/'"}])
    return _split_remembered(raw_path) if len(raw_path) <= _REMEMBERED_PATH_CHARS else _split(raw_path)


# Clients repeat their paths and each request splits its path twice (its decoded path, its route), so
# the splits of recent short paths are remembered (at most 1024 x 256 characters; errors never are).
_REMEMBERED_PATH_CHARS = 256


def _split(raw_path: str) -> tuple[str, ...]:
    segments = []
    for raw_segment in raw_path[1:].split("/"):
        if "%" in raw_segment:
            if not _PERCENT_ENCODED_RE.fullmatch(raw_segment):
                raise HTTPError(400, "malformed request path", [{"path": "invalid percent-encoding"}])
            try:
                segment = unquote_to_bytes(raw_segment).decode("utf-8")
            except UnicodeDecodeError:
                raise HTTPError(400, "malformed request path", [{"path": "is not UTF-8"}]) from None
        else:
            segment = raw_segment
        if "/" in segment:
            raise HTTPError(400, "malformed request path",
                            [{"path": "encoded '/' (%2F) is not allowed in a path segment"}])
        if segment in (".", ".."):
            raise HTTPError(400, "malformed request path", [{"path": "dot segments ('.', '..') are not allowed"}])
        if _CONTROL_RE.search(segment):
            raise HTTPError(400, "malformed request path", [{"path": "control characters are not allowed"}])
        segments.append(segment)
    return tuple(segments)


_split_remembered = lru_cache(maxsize=1024)(_split)


def decode_path(raw_path: str) -> str:
    """The percent-decoded form of a raw path that split_path accepted."""
    return "/" + "/".join(split_path(raw_path))


class Router:
    """Routes requests to handlers. HEAD is served by the GET handler unless HEAD has its own, or the
    route is registered with `head=False`."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []
        self._by_length: dict[int, list[_Route]] = {}      # routes by their number of segments

    def route(self, method: str, pattern: str, handler: Handler, *, empty_params: bool = False,
              head: bool = True, access: Access = open_access) -> None:
        """Serve `method` on `pattern`. With `empty_params`, a blank `{name}` segment matches too (APIs
        whose specification makes a blank identifier a 400, such as ETSI GS QKD 014). With `head=False`,
        HEAD is refused with 405 and left out of Allow (a GET that takes something away, such as an ETSI
        014 Get key, must not run for a response whose body is dropped). `access` decides who may call
        it, before the request's body is read (HEAD follows GET's); the default lets anyone through."""
        method = method.upper()
        if not _METHOD_RE.match(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        if method == "HEAD" and not head:
            raise ValueError(f"route HEAD {pattern} is registered with head=False")
        segments = _parse_pattern(pattern)
        for existing in self._routes:
            if existing.segments == segments:
                if (existing.empty_params, existing.head) != (empty_params, head):
                    raise ValueError(f"route {pattern} is registered with other empty_params or head settings")
                if method in existing.handlers:
                    raise ValueError(f"route {method} {pattern} is already registered")
                existing.handlers[method] = handler
                existing.access[method] = access
                return
        route = _Route(pattern, segments, {method: handler}, {method: access}, empty_params, head)
        self._routes.append(route)
        self._by_length.setdefault(len(segments), []).append(route)

    def get(self, pattern: str, handler: Handler, *, access: Access = open_access) -> None:
        self.route("GET", pattern, handler, access=access)

    def post(self, pattern: str, handler: Handler, *, access: Access = open_access) -> None:
        self.route("POST", pattern, handler, access=access)

    def routes(self) -> list[tuple[str, str]]:
        """(method, pattern) of every registered route, in registration order."""
        return [(method, route.pattern) for route in self._routes for method in route.handlers]

    def resolve(self, method: str, raw_path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path parameters for a request (see resolve_route)."""
        match = self.resolve_route(method, raw_path)
        return match.handler, match.params

    def resolve_route(self, method: str, raw_path: str) -> RouteMatch:
        """The handler, path parameters and access check for a request.

        `raw_path` is the request target's path as sent (percent-encoded, without the query string).
        Raises HTTPError 400 (ambiguous path), 404 (no route) or 405 with an `Allow` header.
        """
        segments = split_path(raw_path)
        matches = []
        for route in self._by_length.get(len(segments), ()):
            params = route.match(segments)
            if params is not None:
                matches.append((route.specificity(), route, params))
        if not matches:
            raise HTTPError(404, "not found", [{"path": f"no route for {raw_path}"}])
        matches.sort(key=lambda match: match[0])
        wanted = [method] + (["GET"] if method == "HEAD" else [])
        for candidate in wanted:
            for _, route, params in matches:
                if candidate in route.handlers and (candidate == method or route.head):
                    return RouteMatch(route.handlers[candidate], params, route.access[candidate])
        allowed = set()
        for _, route, _ in matches:
            allowed.update(route.handlers)
            if "GET" in route.handlers and route.head:
                allowed.add("HEAD")
        allow = ", ".join(sorted(allowed))
        raise HTTPError(405, "method not allowed", [{"method": f"{method} is not allowed here; allowed: {allow}"}],
                        headers=[("Allow", allow)])
