"""`/api/v1/events`: the audit feed, every event of the log, as pages or as a live stream."""

from __future__ import annotations

from aiohttp import web

from precheck.errors import Invalid
from precheck.events.filters import EventQuery, event_query
from precheck.web import keys
from precheck.web.access import owned_events, owned_streams, require_admin, shown_event
from precheck.web.render import event_document
from precheck.web.requests import MAX_INT, query_int
from precheck.web.sse import Stream, last_event_id, message, wants_stream

MAX_PAGE = 1000


def _query(request: web.Request) -> EventQuery:
    """Events matching `stream=`, `type=` (repeatable; `run.` matches every run event), `run=`."""
    return event_query(
        request.query.get("stream"), request.query.getall("type", []), request.query.get("run")
    )


def _start(request: web.Request) -> int:
    resume = last_event_id(request)
    if resume is not None:
        try:
            return min(max(0, int(resume)), MAX_INT)  # SQLite's integers are 64-bit
        except ValueError:
            raise Invalid(f"Last-Event-ID {resume!r} is not a position") from None
    return query_int(request, "after", 0) or 0


async def events(request: web.Request) -> web.StreamResponse:
    """A page of events after `after` (JSON), or every event from there on, live (SSE).

    An admin gets every event; a user only those of the uploads and runs it owns (a page may
    then hold fewer than `limit`: `next` says where to go on).
    """
    query = _query(request)
    owned = owned_events(request)
    keep = query.matches if owned is None else (lambda r: query.matches(r) and owned(r))
    after = _start(request)
    store = request.app[keys.STORE]
    if not wants_stream(request):
        limit = min(query_int(request, "limit", 100, low=1) or 100, MAX_PAGE)
        head = store.head
        # One query the database answers from its own rows: a filter that matches nothing
        # reads no event into Python. A full page goes on after its last event; a short one
        # has reached the head.
        found = await store.read(after, limit, where=_where(request, query, head))
        last = found[-1].position if found else 0
        position = last if len(found) == limit else max(after, head, last)
        shown = found if owned is None else [r for r in found if owned(r)]
        return web.json_response(
            {
                "events": [event_document(shown_event(request, r)) for r in shown],
                "next": position,
                "head": store.head,
                "has_more": position < store.head,
            }
        )
    stream = Stream(request)
    await stream.open()
    position = after
    try:
        while True:
            if owned is None:
                batch = await store.read_from(position, 500)
                reached = batch[-1].position if batch else position
            else:
                # A user's events are found by the log, not by reading everyone's into Python.
                head = store.head
                batch = await store.read(position, 500, where=_where(request, query, head))
                reached = batch[-1].position if len(batch) == 500 else max(position, head)
            if reached == position:
                await stream.wait_for(store.wait_beyond(position))
                if position >= store.head:
                    break  # the store closed
                continue
            text = "".join(
                message(event_document(shown_event(request, r)), id=r.position, event=r.type)
                for r in batch
                if keep(r)
            )
            position = reached
            if text:
                await stream.write(text)
    except ConnectionResetError:
        pass
    finally:
        await stream.close()
    return stream.response


def _where(request: web.Request, query: EventQuery, head: int) -> tuple[str, tuple[object, ...]]:
    """The feed's query as SQL: its filters, a user's own streams, and no row past `head` (the
    streams a user owns are known up to there)."""
    clause, args = query.sql()
    mine, owned_args = owned_streams(request)
    return f"{clause}{mine} AND position <= ?", (*args, *owned_args, head)


async def head(request: web.Request) -> web.Response:
    """The log's last position and its chain hash: an anchor to keep elsewhere, so that a
    later `precheck-server verify --anchor POS:HASH` proves the log still holds it."""
    require_admin(request)
    store = request.app[keys.STORE]
    last = await store.read(store.head - 1, 1) if store.head else []
    return web.json_response({"Position": store.head, "Hash": last[0].hash if last else None})


def setup_routes(app: web.Application) -> None:
    """Register the audit feed."""
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/events/head", head)
