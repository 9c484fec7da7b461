"""`/logs` and `/events` of a run: its captured output and its changes, as JSON or live."""

from __future__ import annotations

from aiohttp import web

from precheck.errors import Invalid
from precheck.events.streams import run_stream
from precheck.projections.runs import RunRecord
from precheck.web import keys
from precheck.web.access import find_run, shown_event
from precheck.web.follow import follow
from precheck.web.pruned import refuse_pruned
from precheck.web.render import event_document
from precheck.web.requests import query_bool, query_float, query_int
from precheck.web.sse import wants_stream

MAX_LINES = 10000


async def get_logs(request: web.Request) -> web.StreamResponse:
    """Lines after unix time `since` (or after line `after_line`), or the last `tail` lines.

    `last_timestamp` is the time of the last line returned, to pass as the next `since`;
    `last_line` likewise for `after_line`, which never skips lines that share a timestamp.
    """
    run = find_run(request)
    refuse_pruned(run, "logs", "its output lines")
    if wants_stream(request):
        return await _follow_logs(request, run)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "text"):
        raise Invalid("format: expected json or text")
    if fmt == "text":
        return await _raw_log(request, run)
    since = query_float(request, "since", 0.0)
    tail = query_int(request, "tail", None, low=0)
    after_line = query_int(request, "after_line", 0, low=0) or 0
    limit = query_int(request, "limit", MAX_LINES, low=1) or MAX_LINES
    stamps = query_bool(request, "timestamps")
    first, last = attempt_lines(request, run)
    store = request.app[keys.OUTPUT_LINES]
    if last is None:  # the latest attempt: its lines run to the end of the log
        lines, more = await store.read(
            run.id,
            after_line=max(after_line, first),
            since=since or None,
            tail=tail,
            limit=min(limit, MAX_LINES),
        )
        lines = [s for s in lines if s.line > first]  # a tail reaching back before it
    else:  # an earlier attempt: the lines between two retries
        lines, _ = await store.read(
            run.id, after_line=max(after_line, first), since=since or None, limit=MAX_LINES
        )
        lines = [s for s in lines if s.line <= last]
        lines = lines[-tail:] if tail else lines if tail is None else []
        more = len(lines) > limit
        lines = lines[:limit]
    return web.json_response(
        {
            "lines": [s.as_text(stamps) for s in lines],
            "since": since,
            "last_timestamp": lines[-1].ts if lines else since,
            "first_line": lines[0].line if lines else None,
            "last_line": lines[-1].line if lines else after_line,
            "has_more": more,
        }
    )


def attempt_lines(request: web.Request, run: RunRecord) -> tuple[int, int | None]:
    """The lines of attempt `?attempt=N` (default: the latest): they follow the first number
    and end at the second (None: at the end of the log)."""
    n = query_int(request, "attempt", run.attempt, low=1) or run.attempt
    if n > run.attempt:
        raise Invalid(f"attempt: the run has {run.attempt} attempt(s)")
    if n == run.attempt:
        return run.after_line, None
    ends = [a.after_line for a in run.attempts] + [run.after_line]
    return ends[n - 1], ends[n]


async def _raw_log(request: web.Request, run: RunRecord) -> web.StreamResponse:
    """The whole captured log (of one attempt) as a plain text download, page by page."""
    stamps = query_bool(request, "timestamps")
    after, last = attempt_lines(request, run)  # refused before the response starts
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Disposition": f'attachment; filename="precheck-{run.id}.log"',
        }
    )
    await response.prepare(request)
    store = request.app[keys.OUTPUT_LINES]
    while True:
        lines, more = await store.read(run.id, after_line=after, limit=MAX_LINES)
        if last is not None and lines and lines[-1].line >= last:
            lines, more = [s for s in lines if s.line <= last], False
        if lines:
            text = "".join(f"{s.as_text(stamps)}\n" for s in lines)
            await response.write(text.encode("utf-8", "replace"))
            after = lines[-1].line
        if not lines or not more:
            break
    await response.write_eof()
    return response


async def _follow_logs(request: web.Request, run: RunRecord) -> web.StreamResponse:
    """Every line as an SSE message (id = line number), live, then `end` with the exit code."""
    log_store = request.app[keys.OUTPUT_LINES]
    since = query_float(request, "since", 0.0)
    tail = query_int(request, "tail", None, low=0)
    first = 0
    if tail is not None:
        first = max(0, await log_store.end(run.id) - tail)
    elif since:
        lines, _ = await log_store.read(run.id, since=since, limit=1)
        first = lines[0].line - 1 if lines else await log_store.end(run.id)
    return await follow(
        request,
        run,
        events=False,
        logs=True,
        first_line=first,
        timestamps=query_bool(request, "timestamps"),
    )


async def run_events(request: web.Request) -> web.StreamResponse:
    """The run's changes: live as SSE (`logs=1` adds its log lines), else its events as JSON."""
    run = find_run(request)
    if wants_stream(request):
        return await follow(
            request,
            run,
            events=True,
            logs=query_bool(request, "logs"),
            timestamps=query_bool(request, "timestamps"),
        )
    recorded = await request.app[keys.STORE].read(0, 100000, stream=run_stream(run.id))
    return web.json_response([event_document(shown_event(request, r)) for r in recorded])


def setup_routes(app: web.Application) -> None:
    """Register the log route."""
    app.router.add_get("/api/v1/prechecks/{run_id}/logs", get_logs)
    app.router.add_get("/api/v1/prechecks/{run_id}/events", run_events)
