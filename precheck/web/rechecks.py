"""`POST /api/v1/rechecks/scan`: resolve the configured image on each engine and plan the
re-checks owed for it (`precheck-server recheck --scan` with a server running). Admins only."""

from __future__ import annotations

from aiohttp import web

from precheck.errors import Conflict
from precheck.ops.rechecks import resolve, scan_document
from precheck.web import keys
from precheck.web.access import require_admin
from precheck.web.context import metadata


async def scan_rechecks(request: web.Request) -> web.Response:
    """Plan the re-checks of every upload whose newest verdict came from an older image than
    the one the engines have now; answer what each engine has and what was queued."""
    require_admin(request)
    app = request.app
    if keys.RECHECKER not in app:
        raise Conflict("re-checks are off: set [recheck] enabled = true")
    if keys.SUPERVISOR not in app:
        raise Conflict("this server runs no containers: it has no engines to look at")
    image = app[keys.CONFIG].docker.image
    followers = app[keys.SUPERVISOR].followers.values()
    found = await resolve(image, [(f.name, f.config.pull, f.engine) for f in followers])
    ref, recorded = await app[keys.RECHECKER].scan([e.ref for e in found], metadata(request))
    return web.json_response(scan_document(image, ref, found, recorded))


def setup_routes(app: web.Application) -> None:
    """Register the re-check route."""
    app.router.add_post("/api/v1/rechecks/scan", scan_rechecks)
