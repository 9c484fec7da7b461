"""`GET /metrics` in the Prometheus text format."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from precheck import keys


async def metrics(request: web.Request) -> web.Response:
    """Runs by state, queue length, run durations, append latency, events, streams, Docker."""
    body = generate_latest(request.app[keys.METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_routes(app: web.Application) -> None:
    """Register the metrics route."""
    app.router.add_get("/metrics", metrics)
