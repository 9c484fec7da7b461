"""The OpenAPI 3.1 description: it covers every route, is valid, keeps to the code's constants,
and the live app keeps to it."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import attrs
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok

from precheck.app import create_app
from precheck.config import OUTPUT_FORMATS, ROLES, SLOTS, Config, parse_config
from precheck.domain.commands import DIE_ID, KEY_NAME, TOP_CELL
from precheck.domain.preflight import CHECK_CODES, MODES
from precheck.domain.retention import KINDS
from precheck.domain.status import ENDED, STATUSES, RunStatus
from precheck.events.types import TAGS
from precheck.storage.files import SUFFIX
from precheck.web import requests
from precheck.web.openapi import document
from tests.layouts import gds

METHODS = ("get", "post", "put", "patch", "delete")


class LiveApp:
    """`create_app(config, run_containers=False)` served on a real port by a thread of its own."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.run_upload: dict[str, str] = {}

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        self.runner = web.AppRunner(create_app(self.config, run_containers=False))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def request(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def upload(self, layout: bytes) -> str:
        doc = self.request(
            "POST",
            "/api/v1/uploads?name=chip.gds",
            layout,
            **{"Content-Type": "application/octet-stream"},
        )
        return str(doc["Id"])

    def queue(self, upload_id: str) -> str:
        # The test layouts are no slot-sized dies: once read, pre-flight would refuse them.
        body = json.dumps(
            {"upload_id": upload_id, "top_cell": "chip_top", "preflight": "warn"}
        ).encode()
        doc = self.request(
            "POST", "/api/v1/prechecks", body, **{"Content-Type": "application/json"}
        )
        self.run_upload[doc["Id"]] = upload_id
        return str(doc["Id"])

    def ids(self) -> dict[str, list[str]]:
        """Two real ids of each kind to aim at: queued runs, ended runs, uploads no run uses and
        uploads runs use. Topped up as generated requests cancel and delete them (always the
        same number, so Hypothesis draws from a strategy of the same shape each time)."""
        runs = self.request("GET", "/api/v1/prechecks")
        unused = [u["Id"] for u in self.request("GET", "/api/v1/uploads") if not u["Runs"]]
        queued = [r["Id"] for r in runs if r["State"]["Status"] == "queued"]
        ended = [r["Id"] for r in runs if r["State"]["Status"] == "cancelled"]
        while len(unused) < 2:
            unused.append(self.upload(gds("chip_top")))
        while len(queued) < 2:
            queued.append(self.queue(self.upload(gds("chip_top"))))
        while len(ended) < 2:
            ended.append(self.queue(self.upload(gds("chip_top"))))
            self.request("DELETE", f"/api/v1/prechecks/{ended[-1]}")
        # Runs made by generated requests (a rerun) are not in run_upload: read theirs.
        self.run_upload.update({r["Id"]: r["Config"]["Labels"]["upload_id"] for r in runs})
        used = [self.run_upload[r] for r in queued[:1] + ended[:1]]
        return {
            "run_id": queued[:2] + ended[:2],
            "upload_id": unused[:2] + used,
            "filename": ["docs.js", "style.css"],
            "name": ["drc.klayout.json"],
        }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """A live app with uploads, a queued run and a cancelled run."""
    root = tmp_path_factory.mktemp("openapi")
    # Heartbeats rarer than the client's 10 s read timeout: a stream that never ends fails the
    # request instead of hanging the test.
    server = {"storage_path": str(root / "data"), "sse_heartbeat_seconds": 60}
    app = LiveApp(parse_config({"server": server}, "test-config"))
    app.start()
    try:
        app.ids()
        yield app
    finally:
        app.stop()


def _template(path: str) -> str:
    """An aiohttp path template in OpenAPI's form: `{name:.+}` becomes `{name}`."""
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)


def _routes(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if "prefix" in info:  # a static folder
            path = info["prefix"].rstrip("/") + "/{filename}"
        found.add((route.method.lower(), _template(path)))
    return found


def _described(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, p) for p, item in doc["paths"].items() for m in item if m in METHODS}


def test_every_route_is_described(config: Config) -> None:
    """Each route the app registers (but HEAD) has its path and method in /openapi.json."""
    routes = _routes(create_app(config))
    missing = routes - _described(document())
    assert not missing, f"routes missing from the OpenAPI description: {sorted(missing)}"
    assert ("get", "/api/v1/prechecks/{run_id}/reports/{name}") in routes


def test_a_route_missing_from_the_description_is_caught(config: Config) -> None:
    """The coverage check fails when the description lacks a route the app has."""
    app = create_app(config)

    async def extra(request: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/api/v1/not-described/{thing:.+}", extra)
    missing = _routes(app) - _described(document())
    assert missing == {("get", "/api/v1/not-described/{thing}")}


def test_nothing_is_described_that_the_app_does_not_serve(config: Config) -> None:
    """No path or method in the description lacks a route."""
    extra = _described(document()) - _routes(create_app(config))
    assert not extra, f"described but not served: {sorted(extra)}"


def test_the_description_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts the document as OpenAPI 3.1, and schemathesis loads it."""
    from openapi_spec_validator import OpenAPIV31SpecValidator

    doc = document()
    assert doc["openapi"].startswith("3.1")
    errors = [e.message for e in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert not errors, errors
    schema = schemathesis.openapi.from_dict(doc)
    operations = list(schema.get_all_operations())
    labels = {op.ok().label for op in operations if isinstance(op, Ok)}
    assert len(labels) == len(operations), "schemathesis could not load every operation"
    assert "GET /api/v1/prechecks/{run_id}" in labels
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op.get("summary"), f"{method} {path} has no summary"
            assert op["responses"], f"{method} {path} has no responses"
            for name in re.findall(r"\{(\w+)\}", path):
                params = [p for p in op.get("parameters", []) if p["in"] == "path"]
                assert name in {p["name"] for p in params}, f"{method} {path}: {name} undeclared"


def test_served_description_equals_the_document(live: LiveApp) -> None:
    """GET /openapi.json serves the document, without a key."""
    app = live
    assert app.request("GET", "/openapi.json") == json.loads(json.dumps(document()))


# The description against the code's constants ---------------------------------------------------

# A step into the document: a key of an object, an index of a list, or, on a list of
# parameters, the name of one.
Step = str | int
Doc = dict[str, Any]


def _at(doc: Any, where: tuple[Step, ...]) -> Any:
    """The value at `where`; a name on a list picks the item (a parameter) of that name."""
    node = doc
    for step in where:
        if isinstance(node, list) and isinstance(step, str):
            named = [item for item in node if item.get("name") == step]
            assert len(named) == 1, f"{where}: no single item named {step!r}"
            node = named[0]
        else:
            node = node[step]
    return node


def _prefixes(types: list[str]) -> list[str]:
    """Every prefix of the types that ends in '.' (the audit feed filters by them too)."""
    return sorted({t[: i + 1] for t in types for i, c in enumerate(t) if c == "."})


_SCHEMAS = ("components", "schemas")
_EVENTS = ("paths", "/api/v1/events", "get", "parameters")
_LOGS = ("paths", "/api/v1/prechecks/{run_id}/logs", "get", "parameters")
_PREFLIGHT = ("paths", "/api/v1/uploads/{upload_id}/preflight", "get", "parameters")
_RUN_STATUSES = [s.value for s in RunStatus]
_EVENT_TYPES = list(TAGS.values())
_CREATE_RUN = {f.name: f for f in attrs.fields(requests.CreateRun)}

# (what, where in the document, the code's value). Lists are enums: compared in any order, but
# each value once. Anything else (patterns, defaults, bounds) must be equal as it is.
CONSTANTS: list[tuple[str, tuple[Step, ...], Any]] = [
    (
        "run status",
        (*_SCHEMAS, "Run", "properties", "State", "properties", "Status", "enum"),
        _RUN_STATUSES,
    ),
    ("wait status", (*_SCHEMAS, "Wait", "properties", "Status", "enum"), _RUN_STATUSES),
    (
        "status filter",
        ("paths", "/api/v1/prechecks", "get", "parameters", "status", "schema", "items", "enum"),
        _RUN_STATUSES,
    ),
    (
        "prune status",
        (*_SCHEMAS, "Prune", "properties", "status", "anyOf", 0, "items", "enum"),
        [s.value for s in ENDED],
    ),
    ("slot", (*_SCHEMAS, "CreateRun", "properties", "slot", "anyOf", 0, "enum"), list(SLOTS)),
    ("file kind", (*_SCHEMAS, "FileKind", "enum"), list(KINDS)),
    (
        "top cell",
        (*_SCHEMAS, "CreateRun", "properties", "top_cell", "pattern"),
        f"^{TOP_CELL.pattern}$",
    ),
    ("die id", (*_SCHEMAS, "CreateRun", "properties", "die_id", "pattern"), f"^{DIE_ID.pattern}$"),
    (
        "die id default",
        (*_SCHEMAS, "CreateRun", "properties", "die_id", "default"),
        _CREATE_RUN["die_id"].default,
    ),
    (
        "cob default",
        (*_SCHEMAS, "CreateRun", "properties", "cob", "default"),
        _CREATE_RUN["cob"].default,
    ),
    ("preflight modes", (*_SCHEMAS, "CreateRun", "properties", "preflight", "enum"), list(MODES)),
    (
        "preflight default",
        (*_SCHEMAS, "CreateRun", "properties", "preflight", "default"),
        _CREATE_RUN["preflight"].default,
    ),
    (
        "output formats",
        (*_SCHEMAS, "CreateRun", "properties", "output_format", "anyOf", 0, "enum"),
        list(OUTPUT_FORMATS),
    ),
    (
        "cache default",
        (*_SCHEMAS, "CreateRun", "properties", "cache", "default"),
        _CREATE_RUN["cache"].default,
    ),
    ("preflight slot", (*_PREFLIGHT, "slot", "schema", "enum"), list(SLOTS)),
    ("preflight top cell", (*_PREFLIGHT, "top_cell", "schema", "pattern"), f"^{TOP_CELL.pattern}$"),
    ("layout slot", (*_SCHEMAS, "Layout", "properties", "Slot", "anyOf", 0, "enum"), list(SLOTS)),
    (
        "layout format",
        (*_SCHEMAS, "Layout", "properties", "Format", "anyOf", 0, "enum"),
        list(SUFFIX),
    ),
    ("check codes", (*_SCHEMAS, "Check", "properties", "code", "enum"), list(CHECK_CODES)),
    ("event type", (*_SCHEMAS, "Event", "properties", "type", "enum"), _EVENT_TYPES),
    (
        "event type filter",
        (*_EVENTS, "type", "schema", "items", "enum"),
        _EVENT_TYPES + _prefixes(_EVENT_TYPES),
    ),
    ("upload format", (*_SCHEMAS, "Upload", "properties", "Format", "enum"), list(SUFFIX)),
    ("events after bound", (*_EVENTS, "after", "schema", "maximum"), requests.MAX_INT),
    ("events limit bound", (*_EVENTS, "limit", "schema", "maximum"), requests.MAX_INT),
    ("logs tail bound", (*_LOGS, "tail", "schema", "maximum"), requests.MAX_INT),
    ("logs after_line bound", (*_LOGS, "after_line", "schema", "maximum"), requests.MAX_INT),
    ("logs limit bound", (*_LOGS, "limit", "schema", "maximum"), requests.MAX_INT),
    ("key name", (*_SCHEMAS, "IssueKey", "properties", "name", "pattern"), f"^{KEY_NAME.pattern}$"),
    ("key role", (*_SCHEMAS, "IssueKey", "properties", "role", "enum"), list(ROLES)),
    ("key roles", (*_SCHEMAS, "Key", "properties", "Role", "enum"), list(ROLES)),
    ("whoami roles", (*_SCHEMAS, "Whoami", "properties", "Role", "enum"), list(ROLES)),
]


def _agrees(described: Any, code: Any) -> bool:
    if isinstance(code, list):
        return (
            isinstance(described, list)
            and len(set(described)) == len(described)
            and sorted(described) == sorted(code)
        )
    return bool(type(described) is type(code) and described == code)


def _disagreements(doc: Doc) -> list[str]:
    """What of CONSTANTS the document has otherwise than the code."""
    return [
        f"{what}: the description has {_at(doc, where)!r}, the code {code!r}"
        for what, where, code in CONSTANTS
        if not _agrees(_at(doc, where), code)
    ]


def test_run_statuses_are_the_enum() -> None:
    """STATUSES and RunStatus name the same statuses, so either may stand for both below."""
    assert STATUSES == frozenset(RunStatus)
    assert ENDED <= STATUSES


def test_enums_and_patterns_are_the_code_constants() -> None:
    """Each enum, pattern, default and bound the document copies from code is the code's."""
    problems = _disagreements(document())
    assert not problems, "\n".join(problems)


def _changed(value: Any) -> Any:
    if isinstance(value, list):
        return value[:-1]  # one value fewer
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value - 1
    return str(value) + "x"


@pytest.mark.parametrize("what", [what for what, _, _ in CONSTANTS])
def test_a_description_that_drifts_from_the_code_is_caught(what: str) -> None:
    """Changing one of the copied values in the document (and not the code) is reported."""
    where = next(w for name, w, _ in CONSTANTS if name == what)
    doc = document()
    parent = _at(doc, where[:-1])
    parent[where[-1]] = _changed(parent[where[-1]])
    assert [p.split(":")[0] for p in _disagreements(doc)] == [what]


def test_an_enum_with_a_value_twice_is_caught() -> None:
    """An enum that repeats a value is not the code's set, even with every value present."""
    doc = document()
    slot = _at(doc, (*_SCHEMAS, "CreateRun", "properties", "slot", "anyOf", 0))
    slot["enum"] = [*slot["enum"], slot["enum"][0]]
    assert [p.split(":")[0] for p in _disagreements(doc)] == ["slot"]


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        ("CreateRun", requests.CreateRun),
        ("Prune", requests.PruneRequest),
        ("IssueKey", requests.IssueKeyRequest),
        ("RetentionPrune", requests.RetentionPruneRequest),
    ],
)
def test_request_bodies_are_the_parsed_classes(schema: str, body: type) -> None:
    """A body's properties are the fields the server parses, required where they have no
    default, and nothing else is allowed (the server refuses unknown keys)."""
    described = _at(document(), (*_SCHEMAS, schema))
    fields = attrs.fields(body)
    assert list(described["properties"]) == [f.name for f in fields]
    assert described["required"] == [f.name for f in fields if f.default is attrs.NOTHING]
    assert described["additionalProperties"] is False


def test_the_version_is_the_package_version() -> None:
    """info.version is the server's version, whatever the data file says."""
    import precheck

    assert document()["info"]["version"] == precheck.__version__


def test_document_returns_a_copy() -> None:
    """A caller that changes the document does not change what the server serves."""
    doc = document()
    doc["paths"].clear()
    assert document()["paths"]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_docs_page_loads_only_same_origin_files(live: LiveApp) -> None:
    """/docs is HTML whose scripts, styles and links are the app's own files, and they load."""
    app = live
    with urllib.request.urlopen(app.url + "/docs", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        html = r.read().decode()
    parser = _Links()
    parser.feed(html)
    assert any(u.endswith(".js") for u in parser.urls), parser.urls
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), f"not same-origin: {url}"
        with urllib.request.urlopen(app.url + url, timeout=10) as r:
            assert r.status == 200, url
            body = r.read().decode()
        if url.endswith(".js"):
            assert not re.search(r"https?://", body), f"{url} loads from elsewhere"
            assert "/openapi.json" in body


# Schemathesis over every operation of the live app ----------------------------------------------


@pytest.fixture
def api_schema(live: LiveApp) -> Any:
    """The live app's description; path ids are drawn from real ones as well as made-up ones."""
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
        if not path_parameters:
            return st.just(path_parameters)
        choices = [path_parameters]
        for name, values in live.ids().items():
            if name in path_parameters:
                choices += [{**path_parameters, name: v} for v in values]
        return st.sampled_from(choices)

    return schema


def _bounded(case: Any, live: LiveApp) -> None:
    """Keep each request short: a live stream only of an ended run (it ends), no long wait.

    The audit feed and streams of active runs never end: they are tested in test_streams.py.
    """
    run_id = (case.path_parameters or {}).get("run_id")
    if case.path == "/api/v1/events" or (run_id and not _has_ended(live, run_id)):
        case.query = {k: v for k, v in (case.query or {}).items() if k != "follow"} or None
        if case.headers and "text/event-stream" in str(case.headers.get("Accept", "")):
            case.headers.pop("Accept")
    if case.path.endswith("/wait"):
        query = dict(case.query or {})
        value = query.get("timeout", "300")
        first = value[0] if isinstance(value, list) and value else value  # what the server reads
        try:
            # An empty value is the server's default (300 s): bounded like any long wait.
            timeout: float | None = float(str(first)) if str(first) != "" else 300.0
        except ValueError:
            timeout = None  # a bad value: the answer is 400 at once
        if timeout is not None and timeout > 0.2:
            query["timeout"] = "0.2"
        case.query = query


def _has_ended(live: LiveApp, run_id: str) -> bool:
    """Whether the run exists and has ended (a 404 answers before any stream starts)."""
    try:
        doc = live.request("GET", f"/api/v1/prechecks/{quote(run_id, safe='')}")
    except urllib.error.HTTPError as e:
        return e.code == 404
    except UnicodeError:
        return True  # no run has an id that cannot be sent: a 404
    return doc["State"]["Status"] in ("completed", "failed", "cancelled")


schema = schemathesis.pytest.from_fixture("api_schema")

CHECKS: list[Callable[..., Any]] = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case: Any, live: LiveApp) -> None:
    """No generated request gets a 5xx; every status and JSON body is the described one."""
    _bounded(case, live)
    case.call_and_validate(checks=CHECKS, timeout=10)
