"""Who may reach what: the one place that decides it.

Every upload and run has an owner, the actor that made it. An admin reaches everything; a user
reaches only what it owns, and anything else answers 404, as if it did not exist, so a user
cannot learn another's ids. Admin-only routes answer 403 to a user.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import attrs
from aiohttp import web

from precheck.errors import NotFound
from precheck.events.store import RecordedEvent
from precheck.events.types import RunReused, UploadInspected
from precheck.projections.runs import RunRecord
from precheck.projections.uploads import UploadRecord
from precheck.web import keys
from precheck.web.auth import ANONYMOUS, Identity


def identity(request: web.Request) -> Identity:
    """Who is asking (set by the middleware)."""
    found: Identity = request.get(keys.IDENTITY, ANONYMOUS)
    return found


def may_reach(request: web.Request, owner: str) -> bool:
    """May the caller reach a thing owned by `owner`?"""
    who = identity(request)
    return who.admin or who.name == owner


def require_admin(request: web.Request) -> None:
    """Refuse a caller that is not an admin with 403."""
    if not identity(request).admin:
        raise web.HTTPForbidden(text="Forbidden: this needs an admin key")


def find_run(request: web.Request, run_id: str | None = None) -> RunRecord:
    """The run named in the path (or `run_id`), or 404 when it is missing or not the caller's."""
    run_id = run_id if run_id is not None else request.match_info["run_id"]
    run = request.app[keys.PROJECTIONS].runs.get(run_id)
    if run is None or not may_reach(request, run.owner):
        raise NotFound(f"No such precheck: {run_id}")
    return run


def find_upload(request: web.Request, upload_id: str | None = None) -> UploadRecord:
    """The upload named in the path (or `upload_id`), or 404 likewise."""
    upload_id = upload_id if upload_id is not None else request.match_info["upload_id"]
    upload = request.app[keys.PROJECTIONS].uploads.get(upload_id)
    if upload is None or not may_reach(request, upload.owner):
        raise NotFound(f"No such upload: {upload_id}")
    return upload


def visible_runs(request: web.Request, runs: Iterable[RunRecord]) -> list[RunRecord]:
    """The runs among `runs` the caller may reach, in their order."""
    who = identity(request)
    return [r for r in runs if who.admin or r.owner == who.name]


def visible_uploads(request: web.Request, uploads: Iterable[UploadRecord]) -> list[UploadRecord]:
    """The uploads among `uploads` the caller may reach, in their order."""
    who = identity(request)
    return [u for u in uploads if who.admin or u.owner == who.name]


def owned_events(request: web.Request) -> Callable[[RecordedEvent], bool] | None:
    """For a user, which events of the log are its own: those of the uploads and runs it owns
    (as they are now: a deleted one's events are no longer shown). None for an admin: all."""
    who = identity(request)
    if who.admin:
        return None
    state = request.app[keys.PROJECTIONS]

    def owned(r: RecordedEvent) -> bool:
        kind, _, entity = r.stream.partition("-")
        found: RunRecord | UploadRecord | None = None
        if kind == "run":
            found = state.runs.get(entity)
        elif kind == "upload":
            found = state.uploads.get(entity)
        return found is not None and found.owner == who.name

    return owned


def owned_streams(request: web.Request) -> tuple[str, tuple[object, ...]]:
    """For a user, the SQL (a clause starting with AND, and its argument) that keeps the events
    of the uploads and runs it owns now, so the log reads no other row; empty for an admin."""
    who = identity(request)
    if who.admin:
        return "", ()
    state = request.app[keys.PROJECTIONS]
    streams = [f"upload-{u.id}" for u in state.uploads.by_id.values() if u.owner == who.name]
    streams += [f"run-{r.id}" for r in state.runs.by_id.values() if r.owner == who.name]
    return " AND stream IN (SELECT value FROM json_each(?))", (json.dumps(streams),)


def shown_event(request: web.Request, r: RecordedEvent) -> RecordedEvent:
    """`r` as the caller may see it: to a user, an inspection reused from an upload that is not
    its own does not name it (rows written before reuse was kept within one owner may), nor
    does a run answered from another owner's run."""
    e = r.event
    if isinstance(e, RunReused):
        if not e.across_owners or identity(request).admin:
            return r
        return r._replace(event=attrs.evolve(e, source_run_id=""))
    if not isinstance(e, UploadInspected) or e.reused_from is None or identity(request).admin:
        return r
    origin = request.app[keys.PROJECTIONS].uploads.get(e.reused_from)
    if origin is not None and origin.owner == identity(request).name:
        return r
    return r._replace(event=attrs.evolve(e, reused_from=None))
