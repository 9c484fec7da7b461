"""`/health` and `/api/v1/queue`."""

from __future__ import annotations

import os

from aiohttp import web

from precheck import __version__
from precheck.web import keys
from precheck.web.access import identity, visible_runs
from precheck.web.render import queue_document


async def health(request: web.Request) -> web.Response:
    """Liveness plus the state of storage (and, with a supervisor, of Docker)."""
    app = request.app
    storage, store = app[keys.STORAGE], app[keys.STORE]
    writable = os.access(storage.root, os.W_OK)
    supervisor = app.get(keys.SUPERVISOR)
    docker_ok = supervisor is None or supervisor.docker_reachable
    body: dict[str, object] = {
        "status": "healthy" if writable and docker_ok else "degraded",
        "version": __version__,
        "storage": {"writable": writable, "events": store.head},
    }
    if supervisor is not None:
        body["docker"] = {
            "reachable": supervisor.docker_reachable,
            "error": supervisor.docker_error or None,
            "image": app[keys.CONFIG].docker.image,
            "engines": supervisor.engine_documents(),
        }
    # Degraded still answers 200: the API serves reads and queues runs while Docker is away.
    return web.json_response(body, status=200 if writable else 503)


async def queue(request: web.Request) -> web.Response:
    """How many runs wait and run, and the order they wait in (a user's own runs only)."""
    state = request.app[keys.PROJECTIONS]
    doc = queue_document(state, request.app[keys.CONFIG])
    if not identity(request).admin:
        queued = [state.runs.by_id[i] for i in doc["order"] if i in state.runs.by_id]
        doc["order"] = [r.id for r in visible_runs(request, queued)]
    return web.json_response(doc)


def setup_routes(app: web.Application) -> None:
    """Register the health and queue routes."""
    app.router.add_get("/health", health)
    app.router.add_get("/api/v1/queue", queue)
