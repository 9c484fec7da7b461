"""The OpenAPI 3.1 description of every route, served at `/openapi.json`, shown at `/docs`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from precheck import __version__
from precheck.config import SLOTS
from precheck.domain.status import STATUSES
from precheck.events.types import TAGS
from precheck.web.page import STATIC

Schema = dict[str, Any]


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(required: list[str] | None = None, **props: Schema) -> Schema:
    # `required=[]`: nothing is required; None: every property is.
    required = list(props) if required is None else required
    return {"type": "object", "properties": props, "required": required}


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
SHA: Schema = _obj(sha256={"type": "string", "pattern": "^[0-9a-f]{64}$"})
SCALAR: Schema = {"type": ["number", "integer", "string", "null"]}

SCHEMAS: dict[str, Schema] = {
    "Error": _obj(message=STR),
    "Upload": _obj(
        Id=STR,
        Name=STR,
        Created=TIME,
        Size=INT,
        Format={"enum": ["gds", "gds.gz", "oas"]},
        Checksums=SHA,
        ExpiresAt=TIME,
        State=_obj(Status={"enum": ["available", "expired"]}, Expired=BOOL),
        Runs={"type": "array", "items": STR},
    ),
    "CreateRun": {
        **_obj(
            ["upload_id", "top_cell"],
            upload_id=STR,
            top_cell={"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_$-]{0,127}$"},
            die_id={"type": "string", "pattern": "^[A-Za-z0-9]{8}$", "default": "FFFFFFFF"},
            slot=_nullable({"enum": list(SLOTS)}),
            cob={"type": "boolean", "default": False},
        ),
        "additionalProperties": False,
    },
    "Run": _obj(
        Id=STR,
        Name=STR,
        Created=TIME,
        State=_obj(
            Status={"enum": sorted(STATUSES)},
            Running=BOOL,
            Paused=BOOL,
            OOMKilled=BOOL,
            StartedAt=STR,
            FinishedAt=STR,
            ExitCode=INT,
            Error=STR,
            CancelRequested=BOOL,
        ),
        Config=_obj(
            Image=STR,
            Cmd={"type": "array", "items": STR},
            Labels=_obj(
                upload_id=STR, top_cell=STR, die_id=STR, slot=STR, cob={"enum": ["true", "false"]}
            ),
        ),
        HostConfig=_obj(Binds={"type": "array", "items": STR}, NetworkMode=STR),
        Queue=_obj(Position=_nullable(INT), Length=INT),
        ContainerId=_nullable(STR),
        Image=_nullable(STR),
        Input=_obj(Filename=STR, Size=INT, Format=STR, Checksums=SHA),
        Output=_obj(
            Available=BOOL,
            Filename=_nullable(STR),
            Size=_nullable(INT),
            Checksums=_nullable(SHA),
            Passed=_nullable(BOOL),
        ),
        Progress=_nullable(_obj(Step=INT, Total=INT, Name=STR)),
        Result=_nullable(
            _obj(
                Passed=BOOL,
                FailedStep=_nullable(STR),
                Classification=_nullable({"enum": ["design", "system"]}),
                DeferredErrors={"type": "object", "additionalProperties": INT},
                Metrics={"type": "object", "additionalProperties": SCALAR},
            )
        ),
    ),
    "Queue": _obj(
        queued=INT, running=INT, max_concurrent=INT, order={"type": "array", "items": STR}
    ),
    "Health": _obj(
        ["status", "version", "storage"],
        status={"enum": ["healthy", "degraded"]},
        version=STR,
        storage=_obj(writable=BOOL, events=INT),
        docker=_obj(reachable=BOOL, error=_nullable(STR), image=STR),
    ),
    "Logs": _obj(
        lines={"type": "array", "items": STR},
        since=NUM,
        last_timestamp=NUM,
        first_line=_nullable(INT),
        last_line=INT,
        has_more=BOOL,
    ),
    "Wait": _obj(
        StatusCode=INT, Status={"enum": sorted(STATUSES)}, Error=_nullable(_obj(Message=STR))
    ),
    "Report": _obj(Name=STR, Size=INT, Checksums=SHA),
    "Event": _obj(
        position=INT,
        stream=STR,
        version=INT,
        type={"enum": sorted(TAGS.values())},
        time=TIME,
        data={"type": "object"},
        metadata=_obj(["actor"], actor=STR, client=STR, request_id=STR),
    ),
    "EventPage": _obj(
        events={"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
        next=INT,
        head=INT,
        has_more=BOOL,
    ),
    "Message": _obj(["message"], message=STR, Id=STR, Status=STR),
    "Prune": {
        **_obj(
            [],
            status=_nullable(
                {"type": "array", "items": {"enum": ["completed", "failed", "cancelled"]}}
            ),
            older_than_days=_nullable({"type": "number", "minimum": 0}),
            dry_run=BOOL,
            reason=STR,
        ),
        "additionalProperties": False,
    },
    "Pruned": _obj(RunsDeleted={"type": "array", "items": STR}, DryRun=BOOL),
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str | Schema, description: str = "OK") -> Schema:
    schema = _ref(name) if isinstance(name, str) else name
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json("Error", description)


def _file(media: str, description: str) -> Schema:
    return {
        "description": description,
        "content": {media: {"schema": {"type": "string", "format": "binary"}}},
    }


# In OpenAPI 3.1 the schema of an event stream describes each event (3.2 calls it itemSchema).
SSE = {"text/event-stream": {"schema": _obj([], event=STR, id=STR, data=STR, retry=INT)}}
AUTH_ERRORS = {"401": _error("API key missing or wrong"), "403": _error("address not allowed")}
RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": STR}
UPLOAD_ID = {"name": "upload_id", "in": "path", "required": True, "schema": STR}


def _q(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


COUNT: Schema = {"type": "integer", "maximum": 2**63 - 1}  # SQLite's integers are 64-bit
FLAG: Schema = {"enum": ["0", "1", "true", "false", "yes", "no"]}
FOLLOW = _q("follow", FLAG, "stream as Server-Sent Events")
EVENT_TYPES = sorted(TAGS.values())
EVENT_PREFIXES = sorted({t[: i + 1] for t in EVENT_TYPES for i, c in enumerate(t) if c == "."})
EVENT_TYPE: Schema = {"enum": EVENT_TYPES + EVENT_PREFIXES}  # a type, or a prefix ending in '.'
LAST_ID = _q(
    "lastEventId",
    {"type": "string", "pattern": "^[0-9]+$"},
    "resume after this id (as the Last-Event-ID header)",
)
RUN_LAST_ID = _q(
    "lastEventId",
    {"type": "string", "pattern": "^[0-9]+(:[0-9]+)?$"},
    "resume after this id (as the Last-Event-ID header): a position, or position:line with logs=1",
)


def _op(
    summary: str,
    responses: dict[str, Schema],
    *,
    params: list[Schema] | None = None,
    body: Schema | None = None,
    tag: str = "runs",
    auth: bool = True,
) -> Schema:
    op: Schema = {"summary": summary, "tags": [tag], "responses": {**responses}}
    if auth:
        op["responses"].update(AUTH_ERRORS)
    else:
        op["security"] = []
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


def _paths() -> dict[str, Schema]:
    run_404 = {"404": _error("no such run")}
    stream_ok = {"description": "JSON, or an SSE stream with `follow=1`", "content": {}}
    return {
        "/health": {
            "get": _op(
                "Liveness, storage and Docker state",
                {"200": _json("Health"), "503": _json("Health")},
                tag="server",
                auth=False,
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {"200": {"description": "text format", "content": {"text/plain": {"schema": STR}}}},
                tag="server",
            )
        },
        "/openapi.json": {
            "get": _op(
                "This description", {"200": _json({"type": "object"})}, tag="server", auth=False
            )
        },
        "/docs": {
            "get": _op(
                "The API documentation page",
                {"200": {"description": "HTML", "content": {"text/html": {"schema": STR}}}},
                tag="server",
                auth=False,
            )
        },
        "/": {
            "get": _op(
                "The web page",
                {"200": {"description": "HTML", "content": {"text/html": {"schema": STR}}}},
                tag="server",
                auth=False,
            )
        },
        "/static/{filename}": {
            "get": _op(
                "Files of the web page",
                {
                    "200": {"description": "a file", "content": {"*/*": {"schema": STR}}},
                    "404": {"description": "no such file"},
                },
                tag="server",
                auth=False,
                params=[{"name": "filename", "in": "path", "required": True, "schema": STR}],
            )
        },
        "/api/v1/queue": {"get": _op("Queue state", {"200": _json("Queue")}, tag="queue")},
        "/api/v1/uploads": {
            "post": _op(
                "Upload a layout (GDSII, gzip-compressed GDSII or OASIS)",
                {
                    "200": _json("Upload"),
                    "400": _error("not a layout, or no file"),
                    "413": _error("too large"),
                },
                params=[_q("name", STR, "file name label for a raw body")],
                body={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": _obj(file={"type": "string", "format": "binary"})
                        },
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                tag="uploads",
            ),
            "get": _op(
                "List uploads, newest first",
                {"200": _json({"type": "array", "items": _ref("Upload")})},
                tag="uploads",
            ),
        },
        "/api/v1/uploads/{upload_id}": {
            "get": _op(
                "One upload",
                {"200": _json("Upload"), "404": _error("no such upload")},
                params=[UPLOAD_ID],
                tag="uploads",
            ),
            "delete": _op(
                "Delete an upload",
                {
                    "200": _json("Message"),
                    "404": _error("no such upload"),
                    "409": _error("used by an active run"),
                },
                params=[UPLOAD_ID],
                tag="uploads",
            ),
        },
        "/api/v1/prechecks": {
            "post": _op(
                "Queue a precheck run",
                {
                    "200": _json("Run"),
                    "400": _error("invalid request or expired upload"),
                    "404": _error("no such upload"),
                    "413": _error("body too large"),
                },
                body={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateRun")}},
                },
            ),
            "get": _op(
                "List runs, newest first",
                {
                    "200": _json({"type": "array", "items": _ref("Run")}),
                    "400": _error("unknown status"),
                },
                params=[
                    {
                        **_q(
                            "status",
                            {"type": "array", "items": {"enum": sorted(STATUSES)}},
                            "only these statuses",
                        ),
                        "style": "form",
                        "explode": True,
                    }
                ],
            ),
        },
        "/api/v1/prechecks/prune": {
            "post": _op(
                "Delete ended runs in bulk",
                {"200": _json("Pruned"), "400": _error("invalid request")},
                body={"required": True, "content": {"application/json": {"schema": _ref("Prune")}}},
            )
        },
        "/api/v1/prechecks/{run_id}": {
            "get": _op("One run", {"200": _json("Run"), **run_404}, params=[RUN_ID]),
            "delete": _op(
                "Cancel a run (queued at once, running killed); with remove=1 delete an ended run",
                {
                    "200": _json("Message"),
                    "202": _json("Message", "cancel requested, still stopping"),
                    "400": _error("invalid request"),
                    **run_404,
                    "409": _error("already ended, or active when removing"),
                },
                params=[
                    RUN_ID,
                    _q("remove", FLAG, "delete an ended run"),
                    _q("reason", STR, "recorded with the deletion"),
                ],
            ),
        },
        "/api/v1/prechecks/{run_id}/events": {
            "get": _op(
                "The run's changes: its events as JSON, or live as SSE"
                " (status, progress, log with logs=1, end)",
                {
                    "200": {
                        **stream_ok,
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": _ref("Event")}
                            },
                            **SSE,
                        },
                    },
                    "204": {"description": "the stream already ended"},
                    "400": _error("bad id or value"),
                    **run_404,
                },
                params=[
                    RUN_ID,
                    FOLLOW,
                    RUN_LAST_ID,
                    _q("logs", FLAG, "include log lines"),
                    _q("access_token", STR, "API key, for EventSource (streams only)"),
                ],
            )
        },
        "/api/v1/prechecks/{run_id}/logs": {
            "get": _op(
                "Captured log lines (JSON), or live as SSE with follow=1",
                {
                    "200": {
                        **stream_ok,
                        "content": {"application/json": {"schema": _ref("Logs")}, **SSE},
                    },
                    "204": {"description": "the stream already ended"},
                    "400": _error("bad value"),
                    **run_404,
                },
                params=[
                    RUN_ID,
                    FOLLOW,
                    LAST_ID,
                    _q("since", {"type": "number", "minimum": 0}, "unix time: lines after it"),
                    _q("tail", {**COUNT, "minimum": 0}, "only the last N lines"),
                    _q("after_line", {**COUNT, "minimum": 0}, "lines after this number"),
                    _q("limit", {**COUNT, "minimum": 1}, "at most this many lines (10000)"),
                    _q("timestamps", FLAG, "prefix Docker's timestamp"),
                    _q("access_token", STR, "API key, for EventSource (streams only)"),
                ],
            )
        },
        "/api/v1/prechecks/{run_id}/wait": {
            "post": _op(
                "Wait for the run to end",
                {
                    "200": _json("Wait"),
                    "400": _error("bad timeout"),
                    **run_404,
                    "408": _error("timed out"),
                },
                params=[RUN_ID, _q("timeout", {"type": "number", "minimum": 0}, "seconds (300)")],
            )
        },
        "/api/v1/prechecks/{run_id}/stats": {
            "get": _op(
                "Live Docker stats",
                {"200": _json({"type": "object"}), **run_404, "409": _error("not running")},
                params=[RUN_ID],
            )
        },
        "/api/v1/prechecks/{run_id}/output": {
            "get": _op(
                "The output layout (ETag sha256, Range)",
                {
                    "200": _file("application/octet-stream", "the layout"),
                    "206": _file("application/octet-stream", "a range"),
                    "304": {"description": "not modified"},
                    **run_404,
                    "409": _error("not there yet"),
                    "412": _error("If-Match failed"),
                    "416": {"description": "range not satisfiable"},
                },
                params=[RUN_ID],
            )
        },
        "/api/v1/prechecks/{run_id}/render": {
            "get": _op(
                "PNG render of the layout",
                {
                    "200": _file("image/png", "the render"),
                    "304": {"description": "not modified"},
                    **run_404,
                    "409": _error("not there yet"),
                },
                params=[RUN_ID],
            )
        },
        "/api/v1/prechecks/{run_id}/reports": {
            "get": _op(
                "The run's reports",
                {"200": _json({"type": "array", "items": _ref("Report")}), **run_404},
                params=[RUN_ID],
            )
        },
        "/api/v1/prechecks/{run_id}/reports/{name}": {
            "get": _op(
                "One report",
                {
                    "200": _file("application/octet-stream", "the report"),
                    "304": {"description": "not modified"},
                    **run_404,
                },
                params=[RUN_ID, {"name": "name", "in": "path", "required": True, "schema": STR}],
            )
        },
        "/api/v1/debug/prechecks/{run_id}": {
            "get": _op(
                "The run folder as tar.gz",
                {"200": _file("application/gzip", "tarball"), **run_404},
                params=[RUN_ID],
            )
        },
        "/api/v1/events": {
            "get": _op(
                "The audit feed: pages of events (JSON) or every event live (SSE)",
                {
                    "200": {
                        **stream_ok,
                        "content": {"application/json": {"schema": _ref("EventPage")}, **SSE},
                    },
                    "400": _error("bad filter or value"),
                },
                params=[
                    FOLLOW,
                    LAST_ID,
                    _q("after", {**COUNT, "minimum": 0}, "start after this position"),
                    _q("limit", {**COUNT, "minimum": 1}, "page size (1000 at most)"),
                    _q("stream", STR, "only this stream"),
                    {
                        **_q(
                            "type",
                            {"type": "array", "items": EVENT_TYPE},
                            "event type, or prefix ending in '.'",
                        ),
                        "style": "form",
                        "explode": True,
                    },
                    _q("run", STR, "only this run's events"),
                    _q("access_token", STR, "API key, for EventSource (streams only)"),
                ],
                tag="audit",
            )
        },
    }


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Precheck",
            "version": __version__,
            "description": (
                "Uploads, queued precheck runs of gf180mcu layouts, live status and logs."
            ),
        },
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}, {}],
    }


async def openapi_json(request: web.Request) -> web.Response:
    """`GET /openapi.json`."""
    return web.json_response(request.app[_DOC])


async def docs(request: web.Request) -> web.FileResponse:
    """`GET /docs`: a page that renders the description, with no outside files."""
    return web.FileResponse(STATIC / "docs.html")


_DOC = web.AppKey("openapi", dict)


def setup_routes(app: web.Application) -> None:
    """Register the description and its page."""
    app[_DOC] = document()
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
