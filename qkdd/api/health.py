"""Port 8072: `GET /healthz` (JSON, 200 healthy / 503 not, see qkdd.health) and `GET /metrics`."""
from __future__ import annotations

from qkdd.app import App
from qkdd.health import RETRY_AFTER_S
from qkdd.http.messages import Request, Response
from qkdd.http.router import Router
from qkdd.metrics import CONTENT_TYPE


def register(router: Router, app: App) -> None:
    async def healthz(request: Request) -> Response:
        report = app.health.report()
        if app.consumers:
            report["consumers"] = [consumer.status() for consumer in app.consumers]
        if app.health.healthy():
            return Response.json(report)
        return Response.json(report, 503, headers=[("retry-after", str(RETRY_AFTER_S))])

    async def metrics(request: Request) -> Response:
        return Response(200, app.metrics.exposition(), CONTENT_TYPE)

    router.route("GET", "/healthz", healthz)
    router.route("GET", "/metrics", metrics)
