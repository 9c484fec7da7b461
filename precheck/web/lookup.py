"""Finding the resource a request's path names, or answering 404."""

from __future__ import annotations

from aiohttp import web

from precheck import keys
from precheck.errors import NotFound
from precheck.projections.runs import RunRecord


def find_run(request: web.Request) -> RunRecord:
    """The run named in the path, or 404."""
    run_id = request.match_info["run_id"]
    run = request.app[keys.PROJECTIONS].runs.get(run_id)
    if run is None:
        raise NotFound(f"No such precheck: {run_id}")
    return run
