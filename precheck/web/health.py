"""`/health` and `/api/v1/queue`."""

from __future__ import annotations

import os

from aiohttp import web

from precheck import __version__
from precheck.web import keys
from precheck.web.access import identity, visible_runs
from precheck.web.auth import CLI, AuthError, presented_key
from precheck.web.render import queue_document


def _detailed(request: web.Request) -> bool:
    """Does the caller see more than up or down: a valid key (or the CLI), or anyone with auth
    off? Without a key the answer names no engine, image, version or Docker error."""
    auth = request.app[keys.AUTH]
    if not auth.required or identity(request) is CLI:
        return True
    key = presented_key(request.headers.get("Authorization"), request.headers.get("X-API-Key"))
    if key is None:
        return False
    try:
        auth.check_address(request[keys.CLIENT])
        auth.identify(key)
    except AuthError:
        return False
    return True


async def health(request: web.Request) -> web.Response:
    """Liveness; with a key (or auth off) the state of storage (and, with a supervisor, of
    Docker)."""
    app = request.app
    storage, store = app[keys.STORAGE], app[keys.STORE]
    writable = os.access(storage.root, os.W_OK)
    supervisor = app.get(keys.SUPERVISOR)
    docker_ok = supervisor is None or supervisor.docker_reachable
    status = "healthy" if writable and docker_ok else "degraded"
    code = 200 if writable else 503
    if not _detailed(request):
        return web.json_response({"status": status}, status=code)
    body: dict[str, object] = {
        "status": status,
        "version": __version__,
        "storage": {
            "writable": writable,
            "events": store.head,
            "free_mb": storage.free_bytes() >> 20,
            "min_free_mb": app[keys.CONFIG].server.min_free_mb,
        },
    }
    if supervisor is not None:
        body["docker"] = {
            "reachable": supervisor.docker_reachable,
            "error": supervisor.docker_error or None,
            "image": app[keys.CONFIG].docker.image,
            "engines": supervisor.engine_documents(),
        }
    # Degraded still answers 200: the API serves reads and queues runs while Docker is away.
    return web.json_response(body, status=code)


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
