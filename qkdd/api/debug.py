"""Test-only routes, mounted on the API listener only when `daemon.debug_routes = true` (off by
default): `GET /debug/sleep?seconds=S` answers after S seconds (at most 30), to test that shutdown
lets requests in flight finish."""
from __future__ import annotations

import trio

from qkdd.app import App
from qkdd.http.messages import HTTPError, Request, Response
from qkdd.http.router import Router

MAX_SLEEP_S = 30.0


def register(router: Router, app: App) -> None:
    async def sleep(request: Request) -> Response:
        text = (request.query.get("seconds") or ["1"])[0]
        try:
            seconds = float(text)
        except ValueError:
            raise HTTPError(400, "seconds must be a number", [f"got {text[:32]!r}"]) from None
        if not 0 <= seconds <= MAX_SLEEP_S:
            raise HTTPError(400, f"seconds must be in [0, {MAX_SLEEP_S:g}]", [])
        await trio.sleep(seconds)
        return Response.json({"slept_s": seconds})

    router.route("GET", "/debug/sleep", sleep)
