"""Handlers of both listeners. `build_routers(app)` returns one Router per listener name ("api" on
8071, "health" on 8072). Each module here exposes `register(router, app)`; a later part adds its routes
by adding one line below (e.g. `etsi014.register(api, app)`).
"""
from __future__ import annotations

from qkdd.api import etsi014, health, keys, relay, sim_control, v1
from qkdd.app import App
from qkdd.config import LISTENERS
from qkdd.http.router import Router

__all__ = ["LISTENERS", "build_routers"]


def build_routers(app: App) -> dict[str, Router]:
    api, health_router = Router(), Router()
    v1.register(api, app)
    keys.register(api, app)
    sim_control.register(api, app)
    relay.register(api, app)
    if app.kme is not None:
        etsi014.register(api, app.kme)
    health.register(health_router, app)
    return {"api": api, "health": health_router}
