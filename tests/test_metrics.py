"""`GET /metrics`: Prometheus text that follows uploads, runs, the log, streams and Docker."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from tests.docker_fixtures import StartApp
from tests.layouts import gds

Client = TestClient[web.Request, web.Application]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: Client) -> Samples:
    """Every sample of `/metrics`, keyed by name and sorted labels; asserts the text format."""
    r = await client.get("/metrics")
    assert r.status == 200
    kind, _, params = r.headers["Content-Type"].partition(";")
    assert kind == "text/plain" and "version=" in params, r.headers["Content-Type"]
    text = await r.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def runs(samples: Samples, status: str) -> float:
    return samples[("precheck_runs", (("status", status),))]


REACHABLE = "precheck_docker_reachable"


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def upload(client: Client, layout: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", layout, filename="chip.gds")
    r = await client.post("/api/v1/uploads", data=form)
    assert r.status == 200, await r.text()
    return str((await r.json())["Id"])


async def queue(client: Client, upload_id: str) -> str:
    r = await client.post(
        "/api/v1/prechecks", json={"upload_id": upload_id, "top_cell": "chip_top"}
    )
    assert r.status == 200, await r.text()
    return str((await r.json())["Id"])


async def test_metrics_are_prometheus_text_with_every_family(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    """The text parses, has HELP and TYPE lines, and every promised family is there."""
    client = await aiohttp_client(create_app(config, run_containers=False))
    text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in [
        ("precheck_runs", "gauge"),
        ("precheck_queue_length", "gauge"),
        ("precheck_uploads", "gauge"),
        ("precheck_events", "gauge"),
        ("precheck_open_streams", "gauge"),
        ("precheck_run_duration_seconds", "histogram"),
        ("precheck_event_append_seconds", "histogram"),
    ]:
        assert families[name].type == kind, name
        assert f"# HELP {name} " in text and f"# TYPE {name} {kind}" in text
    assert "precheck_docker_reachable" not in families, "no supervisor: Docker is not watched"
    samples = await scrape(client)
    assert {
        runs(samples, s) for s in ("queued", "running", "completed", "failed", "cancelled")
    } == {0}
    assert value(samples, "precheck_events") == 1  # the instance was created


async def test_metrics_follow_uploads_runs_and_cancels(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    """Runs by status, queue length, uploads, events and append latency move with each change."""
    client = await aiohttp_client(create_app(config, run_containers=False))
    before = await scrape(client)
    appends = value(before, "precheck_event_append_seconds_count")

    upload_id = await upload(client, gds("chip_top"))
    s = await scrape(client)
    assert value(s, "precheck_uploads") == 1
    assert value(s, "precheck_events") == value(before, "precheck_events") + 1
    assert value(s, "precheck_event_append_seconds_count") == appends + 1
    assert value(s, "precheck_event_append_seconds_sum") > 0

    first, second = await queue(client, upload_id), await queue(client, upload_id)
    s = await scrape(client)
    assert runs(s, "queued") == 2 and value(s, "precheck_queue_length") == 2
    assert value(s, "precheck_events") == value(before, "precheck_events") + 3
    assert value(s, "precheck_event_append_seconds_count") == appends + 3

    assert (await client.delete(f"/api/v1/prechecks/{first}")).status == 200
    s = await scrape(client)
    assert runs(s, "queued") == 1 and runs(s, "cancelled") == 1
    assert value(s, "precheck_queue_length") == 1
    assert value(s, "precheck_events") == value(before, "precheck_events") + 4
    # A cancelled queued run never ran: no duration is recorded for it.
    assert value(s, "precheck_run_duration_seconds_count", status="cancelled") == 0

    assert (await client.delete(f"/api/v1/prechecks/{second}")).status == 200
    s = await scrape(client)
    assert runs(s, "queued") == 0 and runs(s, "cancelled") == 2
    assert value(s, "precheck_queue_length") == 0


async def test_open_streams_count_live_sse_clients(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """An open SSE stream is counted while it is open and no longer once the client left."""
    config = make_config(server={"sse_heartbeat_seconds": 0.2})
    client = await aiohttp_client(create_app(config, run_containers=False))
    assert value(await scrape(client), "precheck_open_streams") == 0
    audit = await client.get("/api/v1/events?follow=1")
    assert audit.status == 200
    run_id = await queue(client, await upload(client, gds("chip_top")))
    follow = await client.get(f"/api/v1/prechecks/{run_id}/events?follow=1")
    assert follow.status == 200
    await follow.content.readany()  # the stream has started
    assert value(await scrape(client), "precheck_open_streams") == 2

    audit.close()
    follow.close()
    async with asyncio.timeout(10):
        # The server notices a departed client at its next heartbeat: nothing to await here.
        while value(await scrape(client), "precheck_open_streams") != 0:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_docker_reachable_is_0_while_the_engine_does_not_answer(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """With a supervisor whose Docker URL answers nothing, `precheck_docker_reachable` is 0."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = await aiohttp_client(
        create_app(make_config(docker={"url": f"tcp://127.0.0.1:{port}"}))
    )
    samples = await scrape(client)
    assert value(samples, "precheck_docker_reachable", engine="local") == 0
    health = await (await client.get("/health")).json()
    assert health["docker"]["reachable"] is False


@pytest.mark.docker
async def test_a_finished_run_moves_completed_and_durations(start_app: StartApp) -> None:
    """With the simulator a completed run counts as completed, with its duration; Docker is up."""
    api = await start_app()
    async with asyncio.timeout(10):  # 0 until the supervisor has connected: watched from outside
        while value(s := await scrape(api.client), REACHABLE, engine="local") != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert runs(s, "completed") == 0
    assert value(s, "precheck_run_duration_seconds_count", status="completed") == 0

    run_id = await api.run(gds("chip_top", "sleep=1"))
    await api.wait_running(run_id)
    s = await scrape(api.client)
    assert runs(s, "running") == 1 and value(s, "precheck_queue_length") == 0

    result = await api.wait(run_id)
    assert result["Status"] == "completed"
    s = await scrape(api.client)
    assert runs(s, "running") == 0 and runs(s, "completed") == 1
    assert value(s, "precheck_run_duration_seconds_count", status="completed") == 1
    assert value(s, "precheck_run_duration_seconds_sum", status="completed") >= 1
    assert value(s, "precheck_run_duration_seconds_bucket", status="completed", le="+Inf") == 1
    assert value(s, "precheck_docker_reachable", engine="local") == 1

    failing = await api.run(gds("chip_top", "fail=KLayout.CheckSize"))
    assert (await api.wait(failing))["Status"] == "failed"
    s = await scrape(api.client)
    assert runs(s, "failed") == 1
    assert value(s, "precheck_run_duration_seconds_count", status="failed") == 1
    assert value(s, "precheck_run_duration_seconds_count", status="completed") == 1
