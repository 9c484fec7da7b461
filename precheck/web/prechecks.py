"""`/api/v1/prechecks`: create, list, inspect and cancel runs."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from aiohttp import web

from precheck.domain.commands import CancelRun, DeleteRun, PruneRuns, QueueRun, decide
from precheck.domain.result_cache import output_format_of
from precheck.domain.status import ENDED, STATUSES
from precheck.errors import Invalid, NotFound
from precheck.events.types import RunDeleted
from precheck.projections.queue import queue_at
from precheck.projections.runs import RunRecord
from precheck.service.as_of import run_as_of
from precheck.service.run_waiter import wait_for_end
from precheck.web import keys, quota
from precheck.web.access import find_run, find_upload, identity, require_admin, visible_runs
from precheck.web.context import metadata
from precheck.web.notify_policy import requested
from precheck.web.render import run_document
from precheck.web.requests import (
    CreateRun,
    PruneRequest,
    RerunRequest,
    as_of_position,
    json_body,
    query_bool,
)
from precheck.web.result_cache import answered_from_cache

CANCEL_WAIT = 30.0


def _document(request: web.Request, run: RunRecord) -> web.Response:
    app = request.app
    return web.json_response(
        run_document(
            run,
            app[keys.PROJECTIONS],
            app[keys.CONFIG],
            waiting=True,
            now=app[keys.CLOCK](),
            admin=_admin(request),
        )
    )


def _admin(request: web.Request) -> bool:
    return identity(request).admin


async def create_precheck(request: web.Request) -> web.Response:
    """Queue a run of an upload, or answer it at once from an identical run that ended
    (`run.reused`), unless the body says `"cache": false` or `[cache] enabled` is false."""
    app = request.app
    config = app[keys.CONFIG]
    body = await json_body(request, CreateRun)
    find_upload(request, body.upload_id)  # only its owner (or an admin) runs an upload
    notify = requested(body.notify, config.notify, request[keys.ACTOR])
    quota.require_room(request)
    run_id = uuid.uuid4().hex
    command = QueueRun(
        run_id,
        body.upload_id,
        body.top_cell,
        body.die_id,
        body.slot or config.defaults.slot,
        body.cob,
        app[keys.CLOCK](),
        body.preflight,
        request[keys.ACTOR],
        config.server.max_queued_per_owner,
        config.server.max_running_per_owner,
        notify,
        output_format=body.output_format or config.defaults.output_format,
    )
    cached = body.cache and config.cache.enabled
    if not (cached and await answered_from_cache(app, command, metadata(request))):
        await app[keys.HANDLER].handle(command, metadata(request))
    return _document(request, app[keys.PROJECTIONS].runs.by_id[run_id])


async def list_prechecks(request: web.Request) -> web.Response:
    """Runs, newest first, optionally only those with the given `status` values."""
    wanted = set(request.query.getall("status", []))
    unknown = wanted - STATUSES
    if unknown:
        raise Invalid(
            f"unknown status {sorted(unknown)[0]!r}; use one of {', '.join(sorted(STATUSES))}"
        )
    state, config = request.app[keys.PROJECTIONS], request.app[keys.CONFIG]
    runs = [
        r
        for r in visible_runs(request, reversed(state.runs.by_id.values()))
        if not wanted or r.status in wanted
    ]
    now = request.app[keys.CLOCK]()
    admin = _admin(request)
    return web.json_response([run_document(r, state, config, now=now, admin=admin) for r in runs])


async def get_precheck(request: web.Request) -> web.Response:
    """One run; with `as_of` (a log position, or an ISO time), as it stood then."""
    run = find_run(request)
    if "as_of" not in request.query:
        return _document(request, run)
    app = request.app
    store, state = app[keys.STORE], app[keys.PROJECTIONS]
    position = await as_of_position(request)
    then = await run_as_of(store, run.id, position)
    if then is None:
        raise NotFound(f"precheck {run.id} did not exist yet at position {position}")
    queue = queue_at(state.runs.by_id.values(), then, position)
    doc = run_document(then, state, app[keys.CONFIG], queue=queue, admin=_admin(request))
    return web.json_response({**doc, "AsOf": position})


async def rerun_precheck(request: web.Request) -> web.Response:
    """Queue a new run of the same upload with the same parameters (while the upload exists).

    It notifies whom the run re-run did, unless the body gives its own `notify`.
    """
    return await _again(request, recheck=False)


async def recheck_precheck(request: web.Request) -> web.Response:
    """As a re-run, but its start resolves the image anew (pulled unless the engine's policy
    is `never`): the same layout checked with the latest image; `RecheckOf` names the run."""
    return await _again(request, recheck=True)


async def _again(request: web.Request, *, recheck: bool) -> web.Response:
    """Queue a new run of a run's upload and parameters."""
    app = request.app
    run = find_run(request)
    body = await json_body(request, RerunRequest) if request.body_exists else RerunRequest()
    if body.notify is None:
        notify = run.notify
    else:
        notify = requested(body.notify, app[keys.CONFIG].notify, request[keys.ACTOR])
    quota.require_room(request)
    run_id = uuid.uuid4().hex
    # A run queued despite pre-flight failures is re-run the same way.
    mode = run.preflight.mode if run.preflight is not None else "enforce"
    await app[keys.HANDLER].handle(
        QueueRun(
            run_id,
            run.upload_id,
            run.top_cell,
            run.die_id,
            run.slot,
            run.cob,
            app[keys.CLOCK](),
            mode,
            request[keys.ACTOR],
            app[keys.CONFIG].server.max_queued_per_owner,
            app[keys.CONFIG].server.max_running_per_owner,
            notify,
            run.id if recheck else "",
            output_format_of(run),
        ),
        metadata(request),
    )
    return _document(request, app[keys.PROJECTIONS].runs.by_id[run_id])


async def cancel_precheck(request: web.Request) -> web.Response:
    """Cancel a queued run at once; a running one is killed, answered once it is recorded.

    If the kill takes longer than `CANCEL_WAIT` seconds the answer is 202: it goes on.
    With `remove=1` an ended run is deleted instead, with its files and log (`reason=` says why).
    """
    run = find_run(request)
    if query_bool(request, "remove"):
        reason = request.query.get("reason", "") or "removed through the API"
        await request.app[keys.HANDLER].handle(
            DeleteRun(run.id, reason[:500], request.app[keys.CLOCK]()), metadata(request)
        )
        return web.json_response({"message": "Precheck deleted", "Id": run.id})
    await request.app[keys.HANDLER].handle(
        CancelRun(run.id, request.app[keys.CLOCK]()), metadata(request)
    )
    app = request.app
    ended = await wait_for_end(app[keys.STORE], app[keys.PROJECTIONS], run.id, CANCEL_WAIT)
    run = find_run(request)
    if ended is None:
        body = {"message": "Precheck cancel requested", "Id": run.id, "Status": run.status}
        return web.json_response(body, status=202)
    return web.json_response({"message": "Precheck cancelled", "Id": run.id, "Status": run.status})


async def prune_prechecks(request: web.Request) -> web.Response:
    """Delete ended runs: body `{"status": [...], "older_than_days": N, "dry_run": bool}`."""
    require_admin(request)
    body = await json_body(request, PruneRequest)
    if body.status is not None and not body.status:
        raise Invalid("status must name at least one status, or be left out for all ended ones")
    statuses = frozenset(body.status or ENDED)
    now = request.app[keys.CLOCK]()
    before = None
    if body.older_than_days is not None:
        try:
            before = now - timedelta(days=body.older_than_days)
        except OverflowError:  # before any date there can be: no run ended that long ago
            before = datetime.min.replace(tzinfo=now.tzinfo)
    command = PruneRuns(statuses, before, body.reason or "pruned through the API", now)
    if body.dry_run:
        events = list(decide(command, request.app[keys.PROJECTIONS]).events)
    else:
        events = [
            r.event for r in await request.app[keys.HANDLER].handle(command, metadata(request))
        ]
    chosen = [e.run_id for e in events if isinstance(e, RunDeleted)]
    return web.json_response({"RunsDeleted": chosen, "DryRun": body.dry_run})


def setup_routes(app: web.Application) -> None:
    """Register the run routes."""
    app.router.add_post("/api/v1/prechecks", create_precheck)
    app.router.add_post("/api/v1/prechecks/prune", prune_prechecks)
    app.router.add_get("/api/v1/prechecks", list_prechecks)
    app.router.add_get("/api/v1/prechecks/{run_id}", get_precheck)
    app.router.add_delete("/api/v1/prechecks/{run_id}", cancel_precheck)
    app.router.add_post("/api/v1/prechecks/{run_id}/rerun", rerun_precheck)
    app.router.add_post("/api/v1/prechecks/{run_id}/recheck", recheck_precheck)
