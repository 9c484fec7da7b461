"""`POST /api/v1/cleanup`: remove labelled containers no live run owns, for the operator's CLI.

Only the CLI on this machine may ask (with the admin token the server left in its storage
folder). The running supervisor's engine lists the containers and its own view of the runs
decides which are stray, so a container it is starting or finishing stays. Each removal is
recorded as `StrayContainerRemoved`, as the supervisor records the ones it finds on reconcile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from aiohttp import web

from precheck.errors import Invalid
from precheck.events.types import Event
from precheck.ops.strays import container_document, find_strays, is_stray, remove_strays
from precheck.ops.writes import ADMIN_HEADER
from precheck.runner.container_spec import LABEL_RUN
from precheck.runner.engine import ContainerState
from precheck.runner.supervisor import Supervisor
from precheck.web import keys
from precheck.web.context import metadata
from precheck.web.requests import require_json

_ONE_AT_A_TIME = web.AppKey("cleanup_lock", asyncio.Lock)


def _dry_run(raw: bytes) -> bool:
    """The body: nothing, or `{"dry_run": true|false}`."""
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise Invalid("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object")
    extra = set(body) - {"dry_run"}
    if extra:
        raise Invalid(f"unknown field {sorted(extra)[0]}")
    dry_run = body.get("dry_run", False)
    if type(dry_run) is not bool:
        raise Invalid("dry_run: expected true or false")
    return dry_run


def live_container_owned(supervisor: Supervisor, container: ContainerState) -> bool:
    """Does a run the supervisor is starting, running or finishing own this container?

    An unsettled run owns its recorded container, and a queued one the container the
    supervisor may be creating for it right now; a run being finished keeps its container
    until the supervisor removes it.
    """
    if container.labels.get(LABEL_RUN, "") in supervisor.busy_run_ids():
        return True
    return not is_stray(container, supervisor.state, server_running=True)


async def cleanup(request: web.Request) -> web.Response:
    """List the stray containers and, unless `dry_run`, remove and record each."""
    if not request.app[keys.AUTH].is_admin(request.headers.get(ADMIN_HEADER)):
        raise web.HTTPForbidden(text="Forbidden: only the operator's CLI may clean up containers")
    require_json(request)
    dry_run = _dry_run(await request.read())
    if keys.SUPERVISOR not in request.app:
        raise web.HTTPServiceUnavailable(text="this server runs no containers")
    supervisor = request.app[keys.SUPERVISOR]
    if not supervisor.docker_reachable:
        raise web.HTTPServiceUnavailable(text=f"Docker: {supervisor.docker_error}")
    store, meta = request.app[keys.STORE], metadata(request)

    async def append(events: Sequence[Event]) -> object:
        return await store.append(list(events), meta)

    found = []
    async with request.app[_ONE_AT_A_TIME]:
        for f in supervisor.followers.values():
            strays = await find_strays(f.engine, supervisor.state, server_running=True)
            if not dry_run:
                strays = await remove_strays(
                    f.engine,
                    strays,
                    append,
                    request.app[keys.CLOCK],
                    keep=lambda c: live_container_owned(supervisor, c),
                )
            found += strays
    return web.json_response(
        {"Containers": [container_document(c) for c in found], "DryRun": dry_run}
    )


def setup_routes(app: web.Application) -> None:
    """Register the cleanup route."""
    app[_ONE_AT_A_TIME] = asyncio.Lock()
    app.router.add_post("/api/v1/cleanup", cleanup)
