"""`/api/v1/prechecks/{id}/logs`: the captured output, during and after the run."""

from __future__ import annotations

from aiohttp import web

from precheck import keys
from precheck.web.prechecks import find_run
from precheck.web.requests import query_bool, query_float, query_int

MAX_LINES = 10000


async def get_logs(request: web.Request) -> web.Response:
    """Lines after unix time `since` (or after line `after_line`), or the last `tail` lines.

    `last_timestamp` is the time of the last line returned, to pass as the next `since`;
    `last_line` likewise for `after_line`, which never skips lines that share a timestamp.
    """
    run = find_run(request)
    since = query_float(request, "since", 0.0)
    tail = query_int(request, "tail", None, low=0)
    after_line = query_int(request, "after_line", 0, low=0) or 0
    limit = query_int(request, "limit", MAX_LINES, low=1) or MAX_LINES
    stamps = query_bool(request, "timestamps")
    lines, more = await request.app[keys.LOGS].read(
        run.id, after_line=after_line, since=since or None, tail=tail, limit=min(limit, MAX_LINES)
    )
    return web.json_response(
        {
            "lines": [f"{s.time} {s.text}" if stamps else s.text for s in lines],
            "since": since,
            "last_timestamp": lines[-1].ts if lines else since,
            "first_line": lines[0].line if lines else None,
            "last_line": lines[-1].line if lines else after_line,
            "has_more": more,
        }
    )


def setup_routes(app: web.Application) -> None:
    """Register the log route."""
    app.router.add_get("/api/v1/prechecks/{run_id}/logs", get_logs)
