"""`/v1/relay` routes on port 8071 (HIP-0071 "API Endpoints", "Trusted Node Relay Architecture"):

    GET  /v1/relay/routes[?dst=NODE][&min_trust=N]  -> {"node", "routes": [{"dst", "path", "links", "hops", "cost",
                                                        "key_rate_bps" (the bottleneck), "stock_bits", "trust"}]}
    POST /v1/relay/keys/request {"dst", "bits"[, "route": [...]][, "min_trust": N][, "paths": k]}
                                                    -> {"key_id", "bits", "key", "dst", "route", "hops"[, "routes"]}

With "paths": k (2..8) the key is the XOR of shares relayed over k node-disjoint routes ("routes").

The destination serves the same key once under the same key_id with GET /v1/keys/{key_id}. Who may call:
the key request as the /v1 key routes (api.key_clients, or local clients), routes as the link reads.
Errors are JSON {"message","details"}: bad input 400, unknown node 404, a route that is not a chain of live
links 409, no route / relay aborted 503 with Retry-After; 404 on a node that is not a relay node.
"""
from __future__ import annotations

import base64

from qkdd.api.callers import key_access, reader_access
from qkdd.app import App
from qkdd.http.messages import HTTPError, Request, Response
from qkdd.http.router import Router

RETRY_AFTER_S = 2


def register(router: Router, app: App) -> None:
    def relay():
        if app.relay is None:
            raise HTTPError(404, "not a relay node", [{"node": "this daemon has no [node] section"}])
        return app.relay

    def trust_of(value) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise HTTPError(400, "invalid min_trust", [{"min_trust": "must be an integer in [0, 255]"}])
        return value

    # The relay's modules are imported by the handlers: a daemon that is no relay node never loads them
    # (its start-up, and so its restart after a crash, is shorter by their import).
    async def routes(request: Request) -> Response:
        service = relay()
        from qkdd.relay.linkstate import valid_node_id
        dst = request.query.get("dst", [None])[0]
        if dst is not None and not valid_node_id(dst):
            raise HTTPError(400, "invalid dst", [{"dst": "is not a node id"}])
        raw_trust = request.query.get("min_trust", [None])[0]
        try:
            min_trust = trust_of(int(raw_trust)) if raw_trust is not None else None
        except ValueError:
            raise HTTPError(400, "invalid min_trust", [{"min_trust": "must be an integer in [0, 255]"}]) from None
        topology = service.topology()
        if dst is not None and dst not in topology.trust:
            raise HTTPError(404, "unknown node", [{"dst": f"no node {dst!r} in the relay network"}])
        found = service.routes(dst, min_trust=min_trust)
        return Response.json({"node": service.node_id, "routes": [{"dst": r.path[-1], **r.as_json(topology)}
                                                                  for r in found]})

    async def request_key(request: Request) -> Response:
        service = relay()
        from qkdd.relay.linkstate import valid_node_id
        from qkdd.relay.protocol import MAX_BITS, MAX_NODES_ON_ROUTE, MAX_SHARES
        body = request.json()
        if not isinstance(body, dict):
            raise HTTPError(400, "request body must be a JSON object")
        missing = [name for name in ("dst", "bits") if name not in body]
        if missing:
            raise HTTPError(400, "missing fields", [{name: "is required"} for name in missing])
        dst, bits, path = body["dst"], body["bits"], body.get("route")
        if not isinstance(dst, str) or not valid_node_id(dst):
            raise HTTPError(400, "invalid dst", [{"dst": "must be a node id"}])
        if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0 or bits % 8 or bits > MAX_BITS:
            raise HTTPError(400, "invalid bits", [{"bits": f"must be a positive multiple of 8, at most {MAX_BITS}"}])
        if path is not None and (not isinstance(path, list) or not 2 <= len(path) <= MAX_NODES_ON_ROUTE
                                 or not all(isinstance(n, str) and valid_node_id(n) for n in path)):
            raise HTTPError(400, "invalid route", [{"route": "must be a list of 2 to 33 node ids, this node first"}])
        paths = body.get("paths", 1)
        if isinstance(paths, bool) or not isinstance(paths, int) or not 1 <= paths <= MAX_SHARES:
            raise HTTPError(400, "invalid paths", [{"paths": f"must be an integer in [1, {MAX_SHARES}]"}])
        from qkdd.relay.service import RelayError
        try:
            key_id, key, routes = await service.request_key(dst, bits, path, trust_of(body.get("min_trust")), paths)
        except RelayError as exc:
            headers = [("Retry-After", str(RETRY_AFTER_S))] if exc.status == 503 else None
            raise HTTPError(exc.status, "relay failed" if exc.status == 503 else "relay refused",
                            [{"reason": str(exc)}], headers=headers) from None
        answer = {"key_id": key_id, "bits": bits, "key": base64.b64encode(key).decode(), "dst": dst,
                  "route": list(routes[0].path), "hops": routes[0].hops}
        if paths > 1:
            answer["routes"] = [list(r.path) for r in routes]
        return Response.json(answer)

    api = app.config.api
    router.route("GET", "/v1/relay/routes", routes, access=reader_access(api))
    router.route("POST", "/v1/relay/keys/request", request_key, access=key_access(api))
