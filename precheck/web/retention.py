"""`POST /api/v1/retention/prune`: the retention pass on demand (the CLI's `prune --retention`
speaks it when a server holds the folder)."""

from __future__ import annotations

from aiohttp import web

from precheck.web import keys
from precheck.web.access import require_admin
from precheck.web.context import metadata
from precheck.web.requests import RetentionPruneRequest, json_body


async def prune_retention(request: web.Request) -> web.Response:
    """Remove the final runs' files that `[retention]` says are due (`dry_run`: only list
    them); each removal is a `run.files-pruned` event."""
    require_admin(request)
    body = await json_body(request, RetentionPruneRequest)
    retention = request.app[keys.RETENTION]
    removals = await retention.prune(dry_run=body.dry_run, metadata=metadata(request))
    return web.json_response(
        {
            "DryRun": body.dry_run,
            "Removals": [
                {"Id": r.run_id, "What": list(r.kinds), "Reason": r.reason, "Bytes": r.bytes}
                for r in removals
            ],
        }
    )


def setup_routes(app: web.Application) -> None:
    """Register the retention route."""
    app.router.add_post("/api/v1/retention/prune", prune_retention)
