"""Admin-only run-time control of simulated links on port 8071 (attacks, drifts, Bob's monitor).

    GET  /v1/links/{link_id}/sim           attack, drift, frames (Alice) or monitor (Bob)
    POST /v1/links/{link_id}/sim/attack    {"attack": "none" | "intercept-resend[:P]" | "pns" | "blinding",
                                            "blinding_power_w": W (optional)}            Alice's end
                                           cvqkd: {"attack": "none" | "entangling-cloner[:XI]"} (Eve's
                                            extra excess noise, SNU, from the next frame generated)
    POST /v1/links/{link_id}/sim/drift     {"extra_loss_db": dB, "misalignment": e} (either; the other
                                            keeps its value)                              Alice's end
    POST /v1/links/{link_id}/sim/monitor   {"enabled": bool, "threshold_w": W (optional)} Bob's end

Admin means (qkdd.api.callers): a verified client certificate whose SHA-256 fingerprint ("sha256:<hex>")
or common name ("cn:<name>") is listed in `api.admin_clients`, or with that list empty, a client on this
host. Anything else gets 401 (no certificate) or 403 (certificate not listed, or another host) on the
request head, before its body is read or the link looked up. The device objects come from
`app.devices` (link_id -> Device).
"""
from __future__ import annotations

import math
from typing import Any

from qkdd.api.callers import admin_access
from qkdd.app import App
from qkdd.hal.sim.alice import SimAliceDevice
from qkdd.hal.sim.bob import SimBobDevice
from qkdd.hal.sim.params import Attack, Drift
from qkdd.http.messages import HTTPError, Request, Response
from qkdd.http.router import Router


def _body(request: Request, allowed: set[str]) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise HTTPError(400, "unknown fields",
                        [{"fields": f"allowed: {', '.join(sorted(allowed))}; got {', '.join(unknown)}"}])
    return body


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HTTPError(400, f"{name} must be a finite number", [{name: f"got {value!r}"}])
    return float(value)


def register(router: Router, app: App) -> None:
    # The CV-QKD device modules are imported by the handlers: a daemon without a cvqkd link never loads them
    # (its start-up, and so its restart after a crash, is shorter by their import).
    def device_of(request: Request, kind: type | None = None):
        from qkdd.hal.sim.cv_device import CvAliceDevice, CvBobDevice
        link_id = request.path_params["link_id"]
        link = app.config.link(link_id)
        if link is None:
            raise HTTPError(404, f"unknown link {link_id!r}")
        device = app.devices.get(link_id)
        if not isinstance(device, (SimAliceDevice, SimBobDevice, CvAliceDevice, CvBobDevice)):
            raise HTTPError(409, f"link {link_id!r} has no simulated device running",
                            [{"link_id": f'driver "{link.driver}", role {link.role}'}])
        if kind is not None and not isinstance(device, kind):
            end = "Alice's" if kind is SimAliceDevice else "Bob's"
            raise HTTPError(409, f"this control acts on {end} end of the link; this end is {link.role}")
        return device

    async def status(request: Request) -> Response:
        device = device_of(request)
        return Response.json({"link_id": request.path_params["link_id"], **device.control_status()})

    async def set_attack(request: Request) -> Response:
        from qkdd.hal.sim.cv_device import CvAliceDevice
        if isinstance(app.devices.get(request.path_params["link_id"]), CvAliceDevice):     # cvqkd: the cloner
            return _set_cloner(request)
        device = device_of(request, SimAliceDevice)
        body = _body(request, {"attack", "blinding_power_w"})
        text = body.get("attack")
        if not isinstance(text, str):
            raise HTTPError(400, "attack must be a string",
                            [{"attack": "none | intercept-resend[:P] | pns | blinding"}])
        try:
            attack = Attack.parse(text)
            power_w = _number(body, "blinding_power_w")
            if power_w is not None:
                attack = Attack(attack.kind, attack.fraction, power_w)
            device.set_attack(attack)
        except ValueError as exc:
            raise HTTPError(400, "invalid attack", [{"attack": str(exc)}]) from None
        return Response.json({"link_id": request.path_params["link_id"], **device.control_status()})

    def _set_cloner(request: Request) -> Response:
        from qkdd.hal.sim.cv_channel import parse_cloner
        from qkdd.hal.sim.cv_device import CvAliceDevice
        device = device_of(request, CvAliceDevice)
        text = _body(request, {"attack"}).get("attack")
        if not isinstance(text, str):
            raise HTTPError(400, "attack must be a string", [{"attack": "none | entangling-cloner[:XI]"}])
        try:
            device.set_cloner(parse_cloner(text))
        except ValueError as exc:
            raise HTTPError(400, "invalid attack", [{"attack": str(exc)}]) from None
        return Response.json({"link_id": request.path_params["link_id"], **device.control_status()})

    async def set_drift(request: Request) -> Response:
        device = device_of(request, SimAliceDevice)
        body = _body(request, {"extra_loss_db", "misalignment"})
        loss_db, misalignment = _number(body, "extra_loss_db"), _number(body, "misalignment")
        current = device.drift
        try:
            device.set_drift(Drift(extra_loss_db=current.extra_loss_db if loss_db is None else loss_db,
                                   misalignment=current.misalignment if misalignment is None else misalignment))
        except ValueError as exc:
            raise HTTPError(400, "invalid drift", [{"drift": str(exc)}]) from None
        return Response.json({"link_id": request.path_params["link_id"], **device.control_status()})

    async def set_monitor(request: Request) -> Response:
        device = device_of(request, SimBobDevice)
        body = _body(request, {"enabled", "threshold_w"})
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise HTTPError(400, "enabled must be true or false")
        try:
            device.set_monitor(enabled, _number(body, "threshold_w"))
        except ValueError as exc:
            raise HTTPError(400, "invalid monitor setting", [{"monitor": str(exc)}]) from None
        return Response.json({"link_id": request.path_params["link_id"], **device.control_status()})

    admin = admin_access(app.config.api)
    router.route("GET", "/v1/links/{link_id}/sim", status, access=admin)
    router.route("POST", "/v1/links/{link_id}/sim/attack", set_attack, access=admin)
    router.route("POST", "/v1/links/{link_id}/sim/drift", set_drift, access=admin)
    router.route("POST", "/v1/links/{link_id}/sim/monitor", set_monitor, access=admin)
