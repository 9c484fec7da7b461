"""Live streams over SSE: run changes, log lines, both on one connection, the audit feed.

Curl-level: read some messages, drop the connection, resume by id (header or query), and check
the union is exactly the full sequence rebuilt from the store. Also auth on streams, the audit
feed's pages and filters, and a slow reader that must not hold back a fast one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.events.store import RecordedEvent
from precheck.web import keys
from precheck.web.access_log import AccessLogger
from tests.docker_fixtures import Api, StartApp
from tests.layouts import gds
from tests.sse_client import Message, sse

Client = TestClient[web.Request, web.Application]

RUNS = "/api/v1/prechecks"
FEED = "/api/v1/events"
KEY = "k1"
AUTH = {"required": True, "api_keys": [{"name": "web", "key": KEY}]}


def doc(m: Message) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(m.data)
    return data


def keys_of(messages: list[Message]) -> list[tuple[str | None, str, str]]:
    return [m.key() for m in messages]


def pair(id_: str | None) -> tuple[int, int]:
    assert id_ is not None and re.fullmatch(r"\d+:\d+", id_), id_
    p, line = id_.split(":")
    return int(p), int(line)


async def all_lines(api: Api, run_id: str, **params: object) -> list[str]:
    """Every captured line of a run, through the JSON `/logs` (page by page with `after_line`)."""
    lines: list[str] = []
    after = 0
    while True:
        body = await api.logs(run_id, after_line=after, **params)
        lines += body["lines"]
        if not body["has_more"]:
            return lines
        after = body["last_line"]


# Run changes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ask", ["follow", "accept"])
async def test_run_changes_resume_exactly(start_app: StartApp, ask: str) -> None:
    """Read k, drop, resume by Last-Event-ID, then by ?lastEventId=: exactly the full sequence."""
    api = await start_app()
    run = await api.run(gds("chip_top", "step_sleep=0.05"))
    path = f"{RUNS}/{run}/events"
    # A stream either by `follow=1` (no Accept header at all) or by `Accept: text/event-stream`.
    params = {"follow": "1"} if ask == "follow" else {}
    accept = ask == "accept"

    async with sse(api.client, path, params=params, accept=accept) as s:
        assert s.status == 200
        assert s.response.headers["Content-Type"].startswith("text/event-stream")
        first = await s.take(3)
        assert s.retries == [3000]
    assert first[0].event == "status"
    assert doc(first[0])["Id"] == run
    assert doc(first[0])["State"]["Status"] in ("queued", "running")

    async with sse(api.client, path, params=params, accept=accept, last_id=first[-1].id) as s:
        assert s.status == 200
        second = await s.take(4)
        assert s.retries == [3000], "retry: is sent once per connection"
    async with sse(
        api.client, path, params={**params, "lastEventId": str(second[-1].id)}, accept=accept
    ) as s:
        assert s.status == 200
        third = await s.rest()
        assert s.eof, "the stream closes after `end`"
        assert s.retries == [3000]
    got = first + second + third

    # The full sequence, rebuilt from the store after the run ended.
    async with sse(api.client, path, params=params, accept=accept, last_id=first[0].id) as s:
        replay = await s.rest()
    assert keys_of(got) == keys_of([first[0], *replay])

    ids = [int(str(m.id)) for m in got[:-1]]  # `end` repeats the final change's id
    assert ids == sorted(set(ids)), f"ids must strictly increase: {ids}"
    kinds = " ".join(m.event for m in got)
    # The end comes in three changes: the verdict (run.exited) with the attempt's resource
    # peak (run.resources-peaked, in the same append), then the outputs stored.
    assert re.fullmatch(r"(status )+(progress ){16}status status status end", kinds), kinds
    steps = [doc(m)["Progress"]["Step"] for m in got if m.event == "progress"]
    assert steps == list(range(1, 17))
    final, end = got[-2], got[-1]
    assert doc(final)["State"]["Status"] == "completed"
    assert end.data == final.data and end.id == final.id
    assert doc(end) == await api.get(run)

    # Reconnecting after `end` (as EventSource would): 204, so it stops.
    resumes: list[tuple[dict[str, str], str | None]] = [
        (params, end.id),
        ({**params, "lastEventId": str(end.id)}, None),
    ]
    for resume_params, last_id in resumes:
        async with sse(api.client, path, params=resume_params, accept=accept, last_id=last_id) as s:
            assert s.status == 204

    # Without follow or Accept: the run's events as JSON.
    r = await api.client.get(path)
    assert r.status == 200 and r.content_type == "application/json"
    body = await r.json()
    assert [e["type"] for e in body] == [e.type for e in await api.events(run_id=run)]
    assert [e["position"] for e in body] == [e.position for e in await api.events(run_id=run)]


async def test_queue_position_is_streamed(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """A waiting run's stream shows queue place 2, 1, then running; resuming rebuilds the same."""
    api = await start_app(sim_config(max_concurrent=1))
    first = await api.run(gds("chip_top", "sleep=1"))
    await api.wait_running(first)
    second = await api.run(gds("chip_top", "sleep=1"))
    third = await api.run(gds("chip_top"))
    path = f"{RUNS}/{third}/events"
    async with sse(api.client, path, params={"follow": "1"}) as s:
        live = await s.until("end", within=30)
        assert await s.next() is None

    states = [(doc(m)["State"]["Status"], doc(m)["Queue"]["Position"]) for m in live]
    until_running = states[: states.index(("running", None)) + 1]
    assert until_running == [("queued", 2), ("queued", 1), ("running", None)]
    assert [doc(m)["Queue"]["Length"] for m in live[:2]] == [2, 1]
    assert doc(live[-1])["State"]["Status"] == "completed"
    assert (await api.get(second))["State"]["Status"] == "completed"

    # Resuming in the middle rebuilds exactly the documents seen live (queue places included).
    for i in (0, 1, len(live) // 2):
        async with sse(api.client, path, params={"follow": "1"}, last_id=live[i].id) as s:
            assert keys_of(await s.rest()) == keys_of(live[i + 1 :]), f"resumed after message {i}"


# Logs ----------------------------------------------------------------------------------------


async def test_logs_stream_resume_tail_since_timestamps(start_app: StartApp) -> None:
    """Lines stream with ids = line numbers, resume with no gap, honour tail/since/timestamps."""
    api = await start_app()
    run = await api.run(gds("chip_top", "lines=3000"))
    path = f"{RUNS}/{run}/logs"
    follow = {"follow": "1"}
    async with sse(api.client, path, params=follow, accept=False) as s:
        assert s.status == 200
        head = await s.take(700)
    async with sse(api.client, path, params=follow, accept=False, last_id=head[-1].id) as s:
        rest = await s.rest()
    got = head + rest
    assert got[-1].event == "end"
    lines = got[:-1]
    expected = await all_lines(api, run)
    assert len(expected) > 3000
    assert [m.event for m in lines] == ["message"] * len(expected)
    assert [m.data for m in lines] == expected
    assert [m.id for m in lines] == [str(n) for n in range(1, len(expected) + 1)]
    # A log ends when the container stops: the outputs may still be being stored.
    end = json.loads(got[-1].data)
    assert end["StatusCode"] == 0 and end["Status"] in ("finishing", "completed"), end
    assert got[-1].id == str(len(expected))

    # After the end: a reconnect with the last id gets 204.
    async with sse(api.client, path, params=follow, last_id=got[-1].id) as s:
        assert s.status == 204

    # tail=5: the last five lines, then `end`.
    async with sse(api.client, path, params={**follow, "tail": "5"}) as s:
        tail = await s.rest()
    assert [m.data for m in tail[:-1]] == expected[-5:]
    assert [m.id for m in tail[:-1]] == [
        str(n) for n in range(len(expected) - 4, len(expected) + 1)
    ]
    assert tail[-1].event == "end"

    # since=: the lines after that unix time, as the JSON form gives them.
    middle = await api.logs(run, limit=1500)
    since = middle["last_timestamp"]
    after = await all_lines(api, run, since=since)
    assert 0 < len(after) < len(expected)
    async with sse(api.client, path, params={**follow, "since": str(since)}) as s:
        from_since = await s.rest()
    assert [m.data for m in from_since[:-1]] == after
    first_line = len(expected) - len(after) + 1
    assert from_since[0].id == str(first_line)
    assert from_since[-1].event == "end"

    # timestamps=1: each line prefixed by its time, as in the JSON form.
    stamped = await all_lines(api, run, timestamps=1, tail=5)
    async with sse(api.client, path, params={**follow, "tail": "5", "timestamps": "1"}) as s:
        with_times = await s.rest()
    assert [m.data for m in with_times[:-1]] == stamped
    assert all(
        re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ", m.data) for m in with_times[:-1]
    ), with_times[0].data


async def test_combined_stream_resumes_without_gap(start_app: StartApp) -> None:
    """`/events?logs=1`: ids `position:line`, `log` messages; a resume loses and repeats nothing."""
    api = await start_app()
    run = await api.run(gds("chip_top", "step_sleep=0.02", "lines=200"))
    path = f"{RUNS}/{run}/events"
    params = {"follow": "1", "logs": "1"}
    async with sse(api.client, path, params=params, accept=False) as s:
        head = await s.take(60)
    async with sse(api.client, path, params=params, accept=False, last_id=head[-1].id) as s:
        rest = await s.rest()
    got = head + rest
    async with sse(api.client, path, params=params, last_id=head[0].id) as s:
        replay = [head[0], *await s.rest()]

    ids = [pair(m.id) for m in got[:-1]]  # `end` repeats the last id
    for before, after in itertools.pairwise(ids):
        assert after[0] >= before[0] and after[1] >= before[1] and after != before, (before, after)
    logs = [m for m in got if m.event == "log"]
    expected = await all_lines(api, run)
    assert [m.data for m in logs] == expected
    assert [pair(m.id)[1] for m in logs] == list(range(1, len(expected) + 1))
    changes = [(m.event, m.data) for m in got if m.event != "log"]
    assert changes == [(m.event, m.data) for m in replay if m.event != "log"]
    assert [m.data for m in replay if m.event == "log"] == expected
    assert got[-1].event == "end" and doc(got[-1])["State"]["Status"] == "completed"
    assert pair(got[-1].id)[1] == len(expected)
    async with sse(api.client, path, params=params, last_id=got[-1].id) as s:
        assert s.status == 204


# Auth ----------------------------------------------------------------------------------------


async def test_streams_need_the_key_which_may_be_a_query_value(
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Streams refuse no key (401), take ?access_token= on GET streams only, never log it."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    app = create_app(make_config(auth=AUTH), run_containers=False)
    # Served as `precheck serve` serves it, with its access logger. (`aiohttp_client`'s
    # `server_kwargs` never reach the runner, so the server is started here.)
    server = TestServer(app)
    await server.start_server(access_log_class=AccessLogger)
    client: TestClient[web.Request, None] = await aiohttp_client(server)
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    r = await client.post("/api/v1/uploads", data=form, headers={"X-API-Key": KEY})
    assert r.status == 200, await r.text()
    upload = (await r.json())["Id"]
    r = await client.post(
        RUNS, json={"upload_id": upload, "top_cell": "chip_top"}, headers={"X-API-Key": KEY}
    )
    assert r.status == 200, await r.text()
    run = (await r.json())["Id"]
    streams = [f"{RUNS}/{run}/events", f"{RUNS}/{run}/logs", FEED]

    for path in streams:
        for extra in ({}, {"access_token": "wrong"}):
            r = await client.get(path, params={"follow": "1", **extra})
            assert r.status == 401, path
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert "API key" in (await r.json())["message"]

    for path in streams:
        async with sse(client, path, params={"access_token": KEY}, accept=False) as s:
            pass  # no follow, no Accept: not a stream, so the query key does not count
        assert s.status == 401, path
        async with sse(client, path, params={"follow": "1", "access_token": KEY}) as s:
            assert s.status == 200, path
            assert s.response.headers["Content-Type"].startswith("text/event-stream")
            if path != streams[1]:  # a queued run has no log line to send yet
                m = await s.next()
                assert m is not None
                if path == streams[0]:
                    assert (
                        m.event == "status"
                        and doc(m)
                        == await (
                            await client.get(f"{RUNS}/{run}", headers={"X-API-Key": KEY})
                        ).json()
                    )

    r = await client.get(f"{RUNS}/{run}", params={"access_token": KEY})
    assert r.status == 401, "a non-stream GET does not take the query key"
    r = await client.post(
        RUNS,
        params={"follow": "1", "access_token": KEY},
        json={"upload_id": upload, "top_cell": "x"},
    )
    assert r.status == 401, "a POST never takes the query key"

    access = [rec.getMessage() for rec in caplog.records if rec.name == "aiohttp.access"]
    with_token = [line for line in access if "access_token=" in line]
    assert with_token, access
    assert all("access_token=***" in line for line in with_token), with_token
    assert not any(KEY in line.replace("access_token=***", "") for line in with_token), with_token

    # The logger itself, on a stream request: the value is masked wherever it sits in the query.
    request = make_mocked_request("GET", f"{FEED}?access_token={KEY}&follow=1&type=run.")
    caplog.clear()
    AccessLogger(logging.getLogger("aiohttp.access"), "").log(request, web.Response(text=""), 0.5)
    (line,) = [rec.getMessage() for rec in caplog.records]
    assert f"{FEED}?access_token=***&follow=1&type=run." in line and KEY not in line


async def test_query_key_is_refused_on_endpoints_that_are_not_streams(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """`?access_token=` with `follow=1` on a JSON-only endpoint (queue, uploads) is still 401."""
    client = await aiohttp_client(create_app(make_config(auth=AUTH), run_containers=False))
    for path, headers in (
        ("/api/v1/queue?follow=1", {}),
        ("/api/v1/uploads", {"Accept": "text/event-stream"}),
    ):
        r = await client.get(path, params={"access_token": KEY}, headers=headers)
        assert r.status == 401, path


async def _queued_run(client: Client) -> str:
    """Upload a layout and queue a run of it (no containers run: it stays queued); its id."""
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    r = await client.post("/api/v1/uploads", data=form)
    assert r.status == 200, await r.text()
    r = await client.post(RUNS, json={"upload_id": (await r.json())["Id"], "top_cell": "chip_top"})
    assert r.status == 200, await r.text()
    return str((await r.json())["Id"])


async def test_idle_streams_get_heartbeats(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """An idle stream gets a heartbeat comment every `sse_heartbeat_seconds`, nothing else."""
    config = make_config(server={"sse_heartbeat_seconds": 0.2})
    client = await aiohttp_client(create_app(config, run_containers=False))
    run = await _queued_run(client)
    head = str(client.app[keys.STORE].head)
    # Resumed at the end of what exists, so the only thing left to send is the heartbeat.
    for path, resume in ((f"{RUNS}/{run}/events", head), (f"{RUNS}/{run}/logs", "0"), (FEED, head)):
        async with sse(client, path, params={"lastEventId": resume}) as s:
            started = time.monotonic()
            assert await s.comment(within=5) == "ping"
            assert await s.comment(within=5) == "ping"
            assert 0.3 <= time.monotonic() - started < 5, path
            assert s.retries == [3000]


async def test_shutdown_ends_open_streams(aiohttp_client: AiohttpClient, config: Config) -> None:
    """Stopping the server ends every open stream at once (clients resume elsewhere by id)."""
    client = await aiohttp_client(create_app(config, run_containers=False))
    run = await _queued_run(client)
    async with (
        sse(client, f"{RUNS}/{run}/events") as changes,
        sse(client, f"{RUNS}/{run}/logs") as lines,
        sse(client, FEED) as feed,
    ):
        assert (await changes.take(1))[0].event == "status"
        assert len(await feed.take(3)) == 3
        assert len(client.app[keys.STREAMS]) == 3
        async with asyncio.timeout(10):
            await client.server.close()
            for s in (changes, lines, feed):
                with contextlib.suppress(aiohttp.ClientPayloadError):
                    await s.rest()


# The audit feed ------------------------------------------------------------------------------


async def _busy_app(
    aiohttp_client: AiohttpClient, config: Config
) -> tuple[Client, list[str], list[str]]:
    """An app without containers holding a few uploads and runs; (client, upload ids, run ids)."""
    client = await aiohttp_client(create_app(config, run_containers=False))
    uploads: list[str] = []
    runs: list[str] = []
    for i in range(3):
        form = aiohttp.FormData()
        form.add_field("file", gds(), filename=f"chip{i}.gds")
        r = await client.post("/api/v1/uploads", data=form)
        assert r.status == 200, await r.text()
        uploads.append((await r.json())["Id"])
    for u in (uploads[0], uploads[0], uploads[1]):
        r = await client.post(RUNS, json={"upload_id": u, "top_cell": "chip_top"})
        assert r.status == 200, await r.text()
        runs.append((await r.json())["Id"])
    r = await client.delete(f"{RUNS}/{runs[1]}")
    assert r.status == 200, await r.text()
    return client, uploads, runs


async def page(client: Client, **params: object) -> dict[str, Any]:
    r = await client.get(FEED, params={k: str(v) for k, v in params.items()})
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def walk(client: Client, limit: int, **params: object) -> list[dict[str, Any]]:
    """Every event of the feed, page by page from the start, following `next`."""
    found: list[dict[str, Any]] = []
    after = 0
    for _ in range(1000):
        body = await page(client, after=after, limit=limit, **params)
        assert len(body["events"]) <= limit
        found += body["events"]
        assert body["next"] >= after
        after = body["next"]
        if not body["has_more"]:
            assert body["next"] == body["head"]
            return found
    raise AssertionError("the feed's pages never ended")


async def test_feed_pages_walk_the_log_once(aiohttp_client: AiohttpClient, config: Config) -> None:
    """JSON pages (after, limit, next, has_more) walk every event exactly once, in order."""
    client, _, _ = await _busy_app(aiohttp_client, config)
    store = client.app[keys.STORE]
    stored = await store.read(0, 10000)
    assert len(stored) >= 8
    for limit in (1, 3, 1000):
        found = await walk(client, limit)
        assert [e["position"] for e in found] == [r.position for r in stored], limit
    first = found[0]
    assert set(first) >= {"position", "stream", "type", "data", "metadata", "time"}
    assert [e["type"] for e in found] == [r.type for r in stored]
    assert [e["stream"] for e in found] == [r.stream for r in stored]
    middle = stored[len(stored) // 2].position
    body = await page(client, after=middle, limit=2)
    assert [e["position"] for e in body["events"]] == [middle + 1, middle + 2]
    assert body["next"] == middle + 2 and body["has_more"] is True
    body = await page(client, after=store.head)
    assert body == {"events": [], "next": store.head, "head": store.head, "has_more": False}


async def test_feed_filters(aiohttp_client: AiohttpClient, config: Config) -> None:
    """`stream=`, `type=` (exact, repeated, `run.` prefix) and `run=` keep only their events."""
    client, uploads, runs = await _busy_app(aiohttp_client, config)
    stored = await client.app[keys.STORE].read(0, 10000)

    def positions(keep: Callable[[RecordedEvent], bool]) -> list[int]:
        return [r.position for r in stored if keep(r)]

    cases: list[tuple[dict[str, str | list[str]], Callable[[RecordedEvent], bool]]] = [
        ({"stream": f"upload-{uploads[0]}"}, lambda r: r.stream == f"upload-{uploads[0]}"),
        ({"type": "run.queued"}, lambda r: r.type == "run.queued"),
        ({"type": "run."}, lambda r: r.type.startswith("run.")),
        ({"run": runs[1]}, lambda r: r.stream == f"run-{runs[1]}"),
        (
            {"type": ["upload.received", "run.cancelled"]},
            lambda r: r.type in ("upload.received", "run.cancelled"),
        ),
        ({"type": "run.", "run": runs[0]}, lambda r: r.stream == f"run-{runs[0]}"),
    ]
    for params, keep in cases:
        want = positions(keep)
        assert want, params
        query = [(k, v) for k, vs in params.items() for v in ([vs] if isinstance(vs, str) else vs)]
        r = await client.get(FEED, params=[*query, ("limit", "1000")])
        assert r.status == 200
        assert [e["position"] for e in (await r.json())["events"]] == want, params
        # The same filter over small pages.
        found, after = [], 0
        while True:
            r = await client.get(FEED, params=[*query, ("limit", "1"), ("after", str(after))])
            body = await r.json()
            found += [e["position"] for e in body["events"]]
            after = body["next"]
            if not body["has_more"]:
                break
        assert found == want, params
    assert len(positions(lambda r: r.type == "run.queued")) == 3
    assert len(positions(lambda r: r.type == "run.cancelled")) == 1

    for bad in ("run.nope", "nope", "bogus."):
        r = await client.get(FEED, params={"type": bad})
        assert r.status == 400, bad
        assert bad in (await r.json())["message"]
        r = await client.get(FEED, params={"type": bad, "follow": "1"})
        assert r.status == 400, bad


async def test_feed_stream_resumes_and_goes_live(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    """SSE from ?lastEventId=N sends N+1.. (id = position, event = type), then new events live."""
    client, uploads, _ = await _busy_app(aiohttp_client, config)
    store = client.app[keys.STORE]
    head = store.head
    n = head - 4
    expected = (await page(client, after=n, limit=1000))["events"]
    async with sse(client, FEED, params={"follow": "1", "lastEventId": str(n)}, accept=False) as s:
        assert s.status == 200
        past = await s.take(4)
        assert [m.id for m in past] == [str(p) for p in range(n + 1, head + 1)]
        assert [m.event for m in past] == [e["type"] for e in expected]
        assert [json.loads(m.data) for m in past] == expected
        # A new run is recorded while the client listens: it arrives live.
        r = await client.post(RUNS, json={"upload_id": uploads[2], "top_cell": "chip_top"})
        assert r.status == 200
        run = (await r.json())["Id"]
        (live,) = await s.take(1)
        assert live.id == str(head + 1) and live.event == "run.queued"
        assert json.loads(live.data)["data"]["run_id"] == run
        assert s.retries == [3000]

    # Filtered, resumed with the header (as EventSource does): only run events after it.
    async with sse(client, FEED, params={"type": "run."}, last_id=str(n)) as s:
        runs_only = await s.take(len([e for e in expected if e["type"].startswith("run.")]) + 1)
    assert all(m.event.startswith("run.") for m in runs_only)
    assert [int(str(m.id)) for m in runs_only][-1] == head + 1
    assert all(int(str(m.id)) > n for m in runs_only)


# A slow reader -------------------------------------------------------------------------------


async def test_slow_reader_does_not_hold_back_others(start_app: StartApp) -> None:
    """A client that never reads stalls alone: another gets every line and `end` in time."""
    api = await start_app()
    # `sleep=1`: the slow client is connected and throttled before the first of 20,000 lines.
    run = await api.run(gds("chip_top", "sleep=1", "lines=20000"))
    path = f"{RUNS}/{run}/logs?follow=1"
    server = api.client.server
    loop = asyncio.get_running_loop()
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    try:
        await loop.sock_connect(slow, (server.host, server.port))
        request = f"GET {path} HTTP/1.1\r\nHost: {server.host}\r\nAccept: text/event-stream\r\n\r\n"
        await loop.sock_sendall(slow, request.encode())
        head = b""
        async with asyncio.timeout(10):
            while b"retry: 3000" not in head:  # sent once the stream is open
                chunk = await loop.sock_recv(slow, 4096)
                assert chunk, head
                head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        streams = api.app[keys.STREAMS]
        (slow_stream,) = streams
        transport = slow_stream._req.transport
        # Loopback's autotuned buffers would swallow the whole log: keep the kernel's part
        # small, as a slow network would, so the server itself must hold or drop the rest.
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        started = time.monotonic()
        async with sse(api.client, path) as s:
            got = await s.rest(within=25)
        took = time.monotonic() - started
        assert got[-1].event == "end" and json.loads(got[-1].data)["StatusCode"] == 0
        expected = await all_lines(api, run)
        assert len(expected) > 20000
        assert [m.data for m in got[:-1]] == expected
        assert [m.id for m in got[:-1]] == [str(n) for n in range(1, len(expected) + 1)]
        assert took < 25

        # The slow client's stream is still open, stalled, and the server holds little for it.
        assert list(streams) == [slow_stream], "the slow reader got everything?"
        assert transport.get_write_buffer_size() < 512 * 1024
        # ...and the server still answers others at once.
        async with asyncio.timeout(5):
            r = await api.client.get("/health")
            assert r.status == 200

        # Once it reads again, the slow client catches up: every line, in order, then `end`.
        raw = head
        async with asyncio.timeout(20):
            while b"event: end" not in raw:
                chunk = await loop.sock_recv(slow, 1 << 16)
                assert chunk, "the slow client was cut off"
                raw += chunk
        # Log lines are `id:` + `data:` messages; `retry:` and `end` (with `event:`) are not.
        slow_lines = re.findall(rb"(?<=\n\n)id: (\d+)\ndata: ([^\n]*)\n\n", dechunk(raw))
        assert [int(i) for i, _ in slow_lines] == list(range(1, len(expected) + 1))
        assert [t.decode() for _, t in slow_lines] == expected
    finally:
        slow.close()


def dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response (as far as it was received)."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body += rest[:size]
        rest = rest[size + 2 :]
    return body
