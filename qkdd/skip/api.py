"""SKIP's HTTP routes (draft-cisco-skip-02 section 4): GET /capabilities, GET /key?remoteSystemID=&size=,
GET /key/{keyId}?remoteSystemID=, GET /entropy?minentropy=. Keys and key ids in hex, sizes in bits.

    400  a malformed or unknown parameter, a size that is not a multiple of 8 in 8..the link's key size,
         a keyId that is not 32 hex digits
    404  an unknown remoteSystemID; a keyId this end does not hold for SKIP (never reserved for a router,
         or fetched already: each key is handed over once, then erased)
    503  no key both ends hold (the link's keys are exhausted, or the other end is unreachable)

/entropy comes from the operating system's CSPRNG (os.urandom), not from QKD keys: entropy needs no
agreement with the other end, and QKD key is the scarce resource.

Metrics: keys handed over (new / by id) and their bytes per link, GET /key's time, and every error answer
by its status (`refused`); never a key id.
"""
from __future__ import annotations

import os
import re
import uuid
from typing import Awaitable, Callable

import trio

from qkdd.http.messages import HTTPError, Request, Response
from qkdd.http.router import Router
from qkdd.keystore import KeyAlreadyDelivered, KeyNotFound, KeyStoreError, KeyUnavailable
from qkdd.skip.keys import SkipKeys

DEFAULT_SIZE_BITS = 256
MAX_ENTROPY_BITS = 8192
_KEY_ID = re.compile(r"[0-9a-fA-F]{32}")
_NO_STORE = [("Cache-Control", "no-store")]


def register(router: Router, local_system_id: str, remotes: dict[str, SkipKeys], *,
             refused: Callable[[int], None] | None = None) -> None:
    async def capabilities(request: Request) -> Response:
        _only(request, ())
        return Response.json({"entropy": True, "key": True, "algorithm": "QKD", "localSystemID": local_system_id,
                              "remoteSystemID": sorted(remotes)})

    async def new_key(request: Request) -> Response:
        _only(request, ("remoteSystemID", "size"))
        keys = _remote(request, remotes)
        size = _bits(request, "size", min(DEFAULT_SIZE_BITS, keys.key_bits), keys.key_bits)
        started = trio.current_time()
        try:
            key = await keys.request_key(size)
        except KeyStoreError as exc:
            raise HTTPError(503, "no key available for that remote system", [{"key": str(exc)[:200]}]) from None
        if keys.metrics is not None:
            keys.metrics.skip_key("new", len(key.material), trio.current_time() - started)
        return Response.json({"keyId": uuid.UUID(key.key_id).hex, "key": key.material.hex()}, headers=_NO_STORE)

    async def key_by_id(request: Request) -> Response:
        _only(request, ("remoteSystemID",))
        keys = _remote(request, remotes)
        key_id = request.path_params["keyId"]
        if not _KEY_ID.fullmatch(key_id):
            raise HTTPError(400, "malformed keyId", [{"keyId": "must be 32 hex digits"}])
        try:
            key = await keys.fetch_key(str(uuid.UUID(key_id)))
        except (KeyNotFound, KeyAlreadyDelivered, KeyUnavailable):
            raise HTTPError(404, "no such key", [{"keyId": "unknown here, or handed over already"}]) from None
        if keys.metrics is not None:
            keys.metrics.skip_key("by_id", len(key.material))
        return Response.json({"keyId": key_id.lower(), "key": key.material.hex()}, headers=_NO_STORE)

    async def entropy(request: Request) -> Response:
        _only(request, ("minentropy",))
        bits = _bits(request, "minentropy", DEFAULT_SIZE_BITS, MAX_ENTROPY_BITS)
        return Response.json({"randomStr": os.urandom(bits // 8).hex(), "minentropy": bits}, headers=_NO_STORE)

    def counted(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        if refused is None:
            return handler

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPError as exc:
                refused(exc.status)
                raise
        return answer

    router.get("/capabilities", counted(capabilities))
    # head=False: HEAD would run the GET handler and drop the body, a key handed out to nobody.
    router.route("GET", "/key", counted(new_key), head=False)
    router.route("GET", "/key/{keyId}", counted(key_by_id), head=False)
    router.route("GET", "/entropy", counted(entropy), head=False)


def _only(request: Request, allowed: tuple[str, ...]) -> None:
    for name, values in request.query.items():
        if name not in allowed:
            raise HTTPError(400, f"unknown parameter {name}", [{name: "not a parameter of this method"}])
        if len(values) != 1:
            raise HTTPError(400, f"parameter {name} given {len(values)} times", [{name: "give it once"}])


def _remote(request: Request, remotes: dict[str, SkipKeys]) -> SkipKeys:
    values = request.query.get("remoteSystemID")
    if not values or not values[0]:
        raise HTTPError(400, "remoteSystemID is required", [{"remoteSystemID": "required"}])
    keys = remotes.get(values[0])
    if keys is None:
        raise HTTPError(404, "unknown remoteSystemID", [{"remoteSystemID": "not a remote system of this end"}])
    return keys


def _bits(request: Request, name: str, default: int, most: int) -> int:
    values = request.query.get(name)
    if not values:
        return default
    text = values[0]
    if not text.isdigit() or not 8 <= int(text) <= most or int(text) % 8:
        raise HTTPError(400, f"bad {name}", [{name: f"must be a multiple of 8 in [8, {most}] bits"}])
    return int(text)
