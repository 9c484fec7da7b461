"""Slow and greedy clients on a real server: a half-sent head and a trickling body are cut, each
key's open uploads, streams and waits are capped (429), and a user key's storage has a quota."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.events.types import Metadata, OutputFile, RunExited, RunOutputsStored, RunStarted
from precheck.web import keys
from precheck.web.serving import runner_options
from tests.layouts import gds

Client = TestClient[web.Request, web.Application]

USERS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789"}


def bearer(name: str) -> dict[str, str]:
    """The headers of a request made with `name`'s key."""
    return {"Authorization": f"Bearer {USERS[name]}"}


async def serve(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config], **settings: Any
) -> Client:
    """A server run as `serve` runs it, keys required (users alice and bob)."""
    api_keys = [{"name": n, "key": k, "role": "user"} for n, k in USERS.items()]
    config = make_config(server=settings, auth={"required": True, "api_keys": api_keys})
    # The runner's options go to `start_server`: `TestServer(**kwargs)` would drop them.
    server = TestServer(create_app(config, run_containers=False))
    await server.start_server(**runner_options(config))
    return cast(Client, await aiohttp_client(server))


async def raw(client: Client, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain connection to the server that has sent `head` (and nothing more yet)."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head)
    await writer.drain()
    return reader, writer


async def test_a_half_sent_head_is_cut_after_the_read_timeout(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """A connection that sends part of a request's head and then nothing is closed once
    `server.read_timeout_seconds` has passed, with no key needed to hold it."""
    client = await serve(aiohttp_client, make_config, read_timeout_seconds=1)
    reader, writer = await raw(client, b"GET /api/v1/uploads HTTP/1.1\r\nHost: x\r\n")
    start = time.monotonic()
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the server, nothing answered
    assert 0.9 < time.monotonic() - start < 4
    writer.close()


async def test_a_trickling_upload_is_cut_with_408_and_leaves_nothing(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """An upload sending a byte every 0.2 s is answered 408 after one window of
    `read_timeout_seconds` below `min_upload_kib_per_second`; no upload, no file is left."""
    client = await serve(aiohttp_client, make_config, read_timeout_seconds=1)
    head = (
        "POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {USERS['alice']}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    reader, writer = await raw(client, head)
    body = gds()
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    start = time.monotonic()
    for i in range(40):
        if answer.done():
            break
        try:
            writer.write(body[i : i + 1])
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0.2)
    async with asyncio.timeout(5):
        text = (await answer).decode()
    assert text.startswith("HTTP/1.1 408"), text
    assert time.monotonic() - start < 4
    async with asyncio.timeout(15):  # after the answer, at most aiohttp's lingering time
        assert b"min_upload_kib_per_second" in await reader.read()
    writer.close()
    assert client.app[keys.PROJECTIONS].uploads.by_id == {}
    storage = client.app[keys.STORAGE]
    assert [p for p in storage.root.rglob("*") if p.is_file() and p.parent.name == "tmp"] == []


async def test_a_slow_json_body_is_cut_with_408(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """A JSON body that does not arrive within `read_timeout_seconds` is answered 408."""
    client = await serve(aiohttp_client, make_config, read_timeout_seconds=1)
    head = (
        "POST /api/v1/prechecks HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {USERS['alice']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    ).encode()
    reader, writer = await raw(client, head)
    async with asyncio.timeout(4):
        text = (await reader.readuntil(b"\r\n\r\n")).decode()
    assert text.startswith("HTTP/1.1 408"), text
    writer.close()


async def upload(client: Client, who: str, body: bytes) -> aiohttp.ClientResponse:
    """POST `body` as a raw upload as `who`."""
    headers = {**bearer(who), "Content-Type": "application/octet-stream"}
    return await client.post("/api/v1/uploads", data=body, headers=headers)


async def test_open_streams_waits_and_uploads_are_capped_per_key(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """Past `max_streams_per_key`, `max_waits_per_key` and `max_uploads_per_key` a key's next one
    is 429 naming the setting; another key is not held back, and a closed one frees its place."""
    client = await serve(
        aiohttp_client,
        make_config,
        max_streams_per_key=2,
        max_waits_per_key=1,
        max_uploads_per_key=1,
    )
    r = await upload(client, "alice", gds())
    upload_id = (await r.json())["Id"]
    body = {"upload_id": upload_id, "top_cell": "chip_top"}
    run_id = (
        await (await client.post("/api/v1/prechecks", json=body, headers=bearer("alice"))).json()
    )["Id"]

    url = "/api/v1/events?follow=1&access_token="
    streams = [await client.get(url + USERS["alice"]) for _ in range(2)]
    assert [s.status for s in streams] == [200, 200]
    r = await client.get(url + USERS["alice"])
    assert r.status == 429 and "max_streams_per_key" in (await r.json())["message"]
    assert (await client.get(url + USERS["bob"])).status == 200
    streams[0].close()
    for _ in range(100):
        r = await client.get(url + USERS["alice"])
        if r.status == 200:
            break
        await asyncio.sleep(0.02)
    assert r.status == 200

    wait = asyncio.ensure_future(
        client.post(f"/api/v1/prechecks/{run_id}/wait?timeout=30", headers=bearer("alice"))
    )
    await asyncio.sleep(0.2)
    r = await client.post(f"/api/v1/prechecks/{run_id}/wait?timeout=30", headers=bearer("alice"))
    assert r.status == 429 and "max_waits_per_key" in (await r.json())["message"]
    wait.cancel()

    async def trickle() -> Any:
        yield gds()[:10]
        await asyncio.sleep(30)

    slow = asyncio.ensure_future(upload(client, "alice", trickle()))
    await asyncio.sleep(0.2)
    r = await upload(client, "alice", gds())
    assert r.status == 429 and "max_uploads_per_key" in (await r.json())["message"]
    assert (await upload(client, "bob", gds())).status == 200
    slow.cancel()


async def test_a_user_keys_storage_has_a_quota(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """With `max_storage_mb_per_user = 1` alice's upload past what is left of her MB is 413 and
    leaves nothing; once her runs' outputs fill it, a new run is 429; bob is not held back."""
    client = await serve(aiohttp_client, make_config, max_storage_mb_per_user=1)
    r = await upload(client, "alice", gds() + b"\0" * 600_000)
    assert r.status == 200, await r.text()
    upload_id = (await r.json())["Id"]
    r = await upload(client, "alice", gds() + b"\0" * 600_000)
    assert r.status == 413 and "max_storage_mb_per_user" in (await r.json())["message"]
    assert len(client.app[keys.PROJECTIONS].uploads.by_id) == 1
    assert (await upload(client, "bob", gds() + b"\0" * 600_000)).status == 200

    body = {"upload_id": upload_id, "top_cell": "chip_top"}
    r = await client.post("/api/v1/prechecks", json=body, headers=bearer("alice"))
    run_id = (await r.json())["Id"]
    at = datetime.now(UTC)
    output = OutputFile("run/final/chip.gds", 600_000, "0" * 64)
    await client.app[keys.STORE].append(
        [
            RunStarted(run_id, "c" * 64, "sim", "sha256:x", at),
            RunExited(run_id, "completed", 0, "", None, {}, False, at, at),
            RunOutputsStored(run_id, output, (), {}, None, at),
        ],
        Metadata("supervisor"),
    )
    r = await client.post("/api/v1/prechecks", json=body, headers=bearer("alice"))
    assert r.status == 429 and "max_storage_mb_per_user" in (await r.json())["message"]
    r = await client.post(f"/api/v1/prechecks/{run_id}/rerun", headers=bearer("alice"))
    assert r.status == 429
    r = await upload(client, "alice", gds())
    assert r.status == 413


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("read_timeout_seconds", 0),
        ("min_upload_kib_per_second", -1),
        ("max_uploads_per_key", -1),
        ("max_streams_per_key", -1),
        ("max_waits_per_key", -1),
        ("max_storage_mb_per_user", -1),
    ],
)
def test_bad_limits_are_refused(make_config: Callable[..., Config], key: str, value: int) -> None:
    """A limit out of range stops the config, naming the key."""
    from precheck.config import ConfigError

    with pytest.raises(ConfigError, match=f"server.{key}"):
        make_config(server={key: value})
