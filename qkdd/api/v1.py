"""The qkdd `/v1` API on port 8071 (HIP-0071 "API Endpoints"); this part: the configured links, for whoever
may take keys or administer (qkdd.api.callers)."""
from __future__ import annotations

from qkdd.api.callers import reader_access
from qkdd.app import App
from qkdd.http.messages import Request, Response
from qkdd.http.router import Router


def register(router: Router, app: App) -> None:
    async def list_links(request: Request) -> Response:
        """GET /v1/links: every configured link with its role, driver, protocol, current state and its key
        consumers' state (WireGuard, KMS push, IKEv2: epoch, key age, fallback, last error)."""
        links = []
        for link in app.config.links:
            state = app.health.link_state(link.link_id)
            links.append({"link_id": link.link_id, "role": link.role, "driver": link.driver,
                          "protocol": link.protocol, "state": state.state, "detail": state.detail,
                          "qber_threshold": link.qber_threshold,
                          "consumers": [consumer.status() for consumer in app.consumers
                                        if consumer.config.link_id == link.link_id]})
        return Response.json({"links": links})

    router.route("GET", "/v1/links", list_links, access=reader_access(app.config.api))
