"""`GET /metrics`: the server's measurements (`service/metrics.py`) in Prometheus' text form."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from precheck.web import keys
from precheck.web.access import require_admin


async def metrics(request: web.Request) -> web.Response:
    """Runs by state, queue length, run durations, append latency, events, streams, Docker."""
    require_admin(request)
    body = generate_latest(request.app[keys.METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_routes(app: web.Application) -> None:
    """Register the metrics route."""
    app.router.add_get("/metrics", metrics)
