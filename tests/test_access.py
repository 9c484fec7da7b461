"""Owners and roles on every route: two users and an admin against the whole route table."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.events import codec
from precheck.events.types import Metadata, UploadReceived
from precheck.web import keys
from tests.layouts import gds

Client = TestClient[web.Request, web.Application]

KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789", "root": "key-root-0123456789"}
ROLES = {"alice": "user", "bob": "user", "root": "admin"}

# What each role meets on each route, for a resource alice owns:
# open: everyone reaches it; mine: alice and the admin reach it, bob meets 404;
# list: everyone gets 200, bob's list leaves out alice's; admin: users meet 403;
# cli: only the operator's CLI token (everyone here meets 403); new: everyone creates;
# feed: everyone gets 200, bob's feed leaves out the events of alice's upload and run.
ROUTES: dict[str, str] = {
    "GET /": "open",
    "HEAD /": "open",
    "GET /health": "open",
    "HEAD /health": "open",
    "GET /openapi.json": "open",
    "HEAD /openapi.json": "open",
    "GET /docs": "open",
    "HEAD /docs": "open",
    "GET /static": "open",
    "HEAD /static": "open",
    "GET /api/v1/queue": "list",
    "HEAD /api/v1/queue": "open",
    "POST /api/v1/uploads": "new",
    "GET /api/v1/uploads": "list",
    "HEAD /api/v1/uploads": "open",
    "GET /api/v1/uploads/{upload_id}": "mine",
    "HEAD /api/v1/uploads/{upload_id}": "mine",
    "GET /api/v1/uploads/{upload_id}/preflight": "mine",
    "HEAD /api/v1/uploads/{upload_id}/preflight": "mine",
    "DELETE /api/v1/uploads/{upload_id}": "mine",
    "POST /api/v1/prechecks": "mine",
    "POST /api/v1/prechecks/prune": "admin",
    "POST /api/v1/retention/prune": "admin",
    "GET /api/v1/prechecks": "list",
    "HEAD /api/v1/prechecks": "open",
    "GET /api/v1/prechecks/{run_id}": "mine",
    "HEAD /api/v1/prechecks/{run_id}": "mine",
    "DELETE /api/v1/prechecks/{run_id}": "mine",
    "POST /api/v1/prechecks/{run_id}/rerun": "mine",
    "POST /api/v1/prechecks/{run_id}/recheck": "mine",
    "GET /api/v1/prechecks/{run_id}/notifications": "mine",
    "HEAD /api/v1/prechecks/{run_id}/notifications": "mine",
    "POST /api/v1/prechecks/{run_id}/notifications/{n}/redeliver": "mine",
    "GET /api/v1/prechecks/{run_id}/logs": "mine",
    "HEAD /api/v1/prechecks/{run_id}/logs": "mine",
    "GET /api/v1/prechecks/{run_id}/resources": "mine",
    "HEAD /api/v1/prechecks/{run_id}/resources": "mine",
    "GET /api/v1/prechecks/{run_id}/events": "mine",
    "HEAD /api/v1/prechecks/{run_id}/events": "mine",
    "GET /api/v1/prechecks/{run_id}/output": "mine",
    "HEAD /api/v1/prechecks/{run_id}/output": "mine",
    "GET /api/v1/prechecks/{run_id}/render": "mine",
    "HEAD /api/v1/prechecks/{run_id}/render": "mine",
    "GET /api/v1/prechecks/{run_id}/findings": "mine",
    "HEAD /api/v1/prechecks/{run_id}/findings": "mine",
    "GET /api/v1/prechecks/{run_id}/reports": "mine",
    "HEAD /api/v1/prechecks/{run_id}/reports": "mine",
    "GET /api/v1/prechecks/{run_id}/reports/{name}": "mine",
    "HEAD /api/v1/prechecks/{run_id}/reports/{name}": "mine",
    "POST /api/v1/prechecks/{run_id}/wait": "mine",
    "GET /api/v1/prechecks/{run_id}/stats": "mine",
    "HEAD /api/v1/prechecks/{run_id}/stats": "mine",
    "GET /api/v1/debug/prechecks/{run_id}": "mine",
    "HEAD /api/v1/debug/prechecks/{run_id}": "mine",
    "GET /api/v1/events": "feed",
    "HEAD /api/v1/events": "open",
    "GET /api/v1/events/head": "admin",
    "HEAD /api/v1/events/head": "admin",
    "GET /metrics": "admin",
    "HEAD /metrics": "admin",
    "POST /api/v1/cleanup": "cli",
    "POST /api/v1/rechecks/scan": "admin",
    "GET /api/v1/keys": "admin",
    "HEAD /api/v1/keys": "admin",
    "POST /api/v1/keys": "admin",
    "DELETE /api/v1/keys/{name}": "admin",
    "GET /api/v1/whoami": "open",
    "HEAD /api/v1/whoami": "open",
}

DAY = timedelta(days=1)
ISSUED = "issued-key"  # the key `DELETE /api/v1/keys/{name}` revokes

# Query values a route needs to answer at once rather than wait.
QUERY: dict[str, str] = {
    "/api/v1/prechecks/{run_id}/wait": "?timeout=0",
    "/api/v1/events": "?limit=1000",
}


def auth(name: str) -> dict[str, str]:
    """The headers of a request made with `name`'s key."""
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, make_config: Callable[..., Config]) -> Client:
    """A server with keys required: users alice and bob, admin root."""
    api_keys = [{"name": n, "key": k, "role": ROLES[n]} for n, k in KEYS.items()]
    config = make_config(auth={"required": True, "api_keys": api_keys})
    return await aiohttp_client(create_app(config, run_containers=False))


async def upload(client: Client, name: str) -> str:
    """Upload a layout as `name`; its id."""
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    r = await client.post("/api/v1/uploads", data=form, headers=auth(name))
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return str(doc["Id"])


async def queue(client: Client, name: str, upload_id: str) -> str:
    """Queue a run of `upload_id` as `name`; its id."""
    body = {"upload_id": upload_id, "top_cell": "chip_top"}
    r = await client.post("/api/v1/prechecks", json=body, headers=auth(name))
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return str(doc["Id"])


def route_key(route: web.AbstractRoute) -> str:
    """`METHOD path` of a route, as the table names it."""
    info = route.resource.get_info() if route.resource is not None else {}
    path = info.get("formatter") or info.get("path") or info.get("prefix", "")
    return route.method + " " + _TEMPLATE.sub(r"{\1}", path)


_TEMPLATE = re.compile(r"\{(\w+):[^}]+\}")  # `{name:regex}` is `{name}` in the table


async def call(
    client: Client, key: str, who: str, upload_id: str, run_id: str
) -> tuple[int, dict[str, Any] | list[Any] | None]:
    """Make the table's request for route `key` as `who`: its status and JSON body, if any."""
    method, template = key.split(" ", 1)
    name = ISSUED if template.startswith("/api/v1/keys/") else "drc.lyrdb"
    path = template.format(upload_id=upload_id, run_id=run_id, name=name, n=1)
    if path == "/static":
        path = "/static/app.js"
    path += QUERY.get(template, "")
    kwargs: dict[str, Any] = {"headers": auth(who)}
    if key == "POST /api/v1/uploads":
        form = aiohttp.FormData()
        form.add_field("file", gds(), filename="chip.gds")
        kwargs["data"] = form
    elif key == "POST /api/v1/prechecks":
        kwargs["json"] = {"upload_id": upload_id, "top_cell": "chip_top"}
    elif key == "POST /api/v1/keys":
        kwargs["json"] = {"name": f"new-by-{who}"}
    elif method == "POST":
        kwargs["json"] = {"dry_run": True} if key.endswith("/prune") else {}
    if method == "HEAD":  # no body to tell which 404: the GET's, which must answer alike
        async with client.head(path, **kwargs) as r:
            status = r.status
        got, body = await call(client, f"GET {template}", who, upload_id, run_id)
        assert status == got, f"{key} as {who}: {status}, the GET {got}"
        return status, body
    async with client.request(method, path, **kwargs) as r:
        if r.content_type != "application/json":
            return r.status, None
        found: dict[str, Any] | list[Any] = await r.json()
        return r.status, found


def denied(status: int, body: object) -> bool:
    """Is this the 404 that hides a resource (not a 404 of a missing file of a reached run)?"""
    if status != 404:
        return False
    return body is None or str(getattr(body, "get", lambda _: "")("message")).startswith("No such")


def test_every_route_is_in_the_table(config: Config) -> None:
    """The table names every route of the app and no route the app lacks."""
    app = create_app(config, run_containers=False)
    assert {route_key(r) for r in app.router.routes()} == set(ROUTES)


async def test_every_route_for_owner_other_user_and_admin(client: Client) -> None:
    """Each route answers alice's own resources to alice and root, 404 to bob; lists hide them
    from bob; admin routes answer 403 to users; the cleanup answers 403 to every key."""
    keys_seen = [route_key(r) for r in client.app.router.routes()]
    assert keys_seen, "the app has routes"
    issued = await client.post("/api/v1/keys", json={"name": ISSUED}, headers=auth("root"))
    assert issued.status == 201
    for key in keys_seen:
        kind = ROUTES[key]
        upload_id = await upload(client, "alice")
        run_id = await queue(client, "alice", upload_id)
        for who in ("bob", "alice", "root"):
            status, body = await call(client, key, who, upload_id, run_id)
            where = f"{key} as {who}: {status} {body}"
            assert status not in (401, 500), where
            if kind == "cli" or (kind == "admin" and who != "root"):
                assert status == 403, where
            elif kind == "mine" and who == "bob":
                assert denied(status, body), where
            else:
                assert status != 403 and not denied(status, body), where
            if kind == "list" and isinstance(body, list):
                ids = {d["Id"] for d in body}
                assert (run_id in ids or upload_id in ids) == (who != "bob"), where
            if kind == "feed" and isinstance(body, dict):
                streams = {e["stream"] for e in body["events"]}
                mine = {f"upload-{upload_id}", f"run-{run_id}"}
                assert (mine <= streams) == (who != "bob"), where
                assert bool(mine & streams) == (who != "bob"), where
            if kind == "list" and isinstance(body, dict):
                assert (run_id in body["order"]) == (who != "bob"), where


@pytest.mark.parametrize("path", ["/api/v1/prechecks/{}/events", "/api/v1/prechecks/{}/logs"])
async def test_streams_of_others_are_404(client: Client, path: str) -> None:
    """A user opening a live stream of another's run meets 404; its owner gets the stream."""
    run_id = await queue(client, "alice", await upload(client, "alice"))
    url = path.format(run_id) + "?follow=1"
    r = await client.get(url, headers=auth("bob"))
    assert r.status == 404
    stream = {"Accept": "text/event-stream"}
    query = f"&access_token={KEYS['bob']}"
    r = await client.get(url + query, headers=stream)
    assert r.status == 404
    async with client.get(url, headers=auth("alice") | stream) as r:
        assert r.status == 200
        assert r.content_type == "text/event-stream"


async def test_user_cannot_run_anothers_upload(client: Client) -> None:
    """Bob cannot queue a run of alice's upload: 404, and no run is made."""
    upload_id = await upload(client, "alice")
    body = {"upload_id": upload_id, "top_cell": "chip_top"}
    r = await client.post("/api/v1/prechecks", json=body, headers=auth("bob"))
    assert r.status == 404
    assert (await r.json())["message"] == f"No such upload: {upload_id}"
    assert client.app[keys.PROJECTIONS].runs.by_id == {}


async def test_owner_is_the_key_that_made_it(client: Client) -> None:
    """The projections record the uploading and queuing key as the owner."""
    upload_id = await upload(client, "bob")
    run_id = await queue(client, "root", upload_id)
    state = client.app[keys.PROJECTIONS]
    assert state.uploads.by_id[upload_id].owner == "bob"
    assert state.runs.by_id[run_id].owner == "root"


async def test_key_without_role_is_an_admin(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """A config key with no role keeps its old meaning: it reaches every user's runs."""
    api_keys = [
        {"name": "old", "key": "key-old-0123456789"},
        {"name": "alice", "key": KEYS["alice"], "role": "user"},
    ]
    config = make_config(auth={"required": True, "api_keys": api_keys})
    client = await aiohttp_client(create_app(config, run_containers=False))
    run_id = await queue(client, "alice", await upload(client, "alice"))
    r = await client.get(f"/api/v1/prechecks/{run_id}", headers={"X-API-Key": "key-old-0123456789"})
    assert r.status == 200
    r = await client.get("/api/v1/events", headers={"X-API-Key": "key-old-0123456789"})
    assert r.status == 200


async def test_a_users_feed_reads_only_its_own_rows_from_the_log(
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bob's audit feed, as a page and as a stream from the start, is found by the log's own
    query: of 3000 events of alice's, none is read into Python, and bob's page holds his."""
    api_keys = [{"name": n, "key": k, "role": ROLES[n]} for n, k in KEYS.items()]
    config = make_config(auth={"required": True, "api_keys": api_keys})
    first = await aiohttp_client(create_app(config, run_containers=False))
    now = datetime.now(UTC)
    alices = [
        UploadReceived(f"a{i:05d}", "x.gds", "input.gds", "gds", 1, "0" * 64, now, now + DAY)
        for i in range(3000)
    ]
    await first.app[keys.STORE].append(alices, Metadata("alice"))
    bobs = await upload(first, "bob")
    await first.close()

    client = await aiohttp_client(create_app(config, run_containers=False))  # nothing in memory
    position = next(
        r.position
        for r in await client.app[keys.STORE].read(0, 10000)
        if r.stream == f"upload-{bobs}"
    )
    decoded = 0
    real = codec.decode

    def counted(*row: Any) -> Any:
        nonlocal decoded
        decoded += 1
        return real(*row)

    monkeypatch.setattr("precheck.events.store.decode", counted)
    page = await (await client.get("/api/v1/events?limit=10", headers=auth("bob"))).json()
    assert [e["stream"] for e in page["events"]] == [f"upload-{bobs}"]
    url = f"/api/v1/events?follow=1&access_token={KEYS['bob']}"
    async with client.get(url) as stream:
        text = ""
        async with asyncio.timeout(10):
            while f"id: {position}\n" not in text:
                text += (await stream.content.readany()).decode()
    assert "a00000" not in text
    assert 0 < decoded < 20, decoded  # bob's rows read, not alice's 3000
