"""API keys issued and revoked as events: at once, without a restart, streams closed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.cli import main
from precheck.config import Config
from precheck.events.types import KeyIssued
from precheck.ops.lock import INFO, StorageLock
from precheck.web import keys
from tests.layouts import gds

Client = TestClient[web.Request, web.Application]

ROOT = "key-root-0123456789"
ALICE = "key-alice-0123456789"
TOKEN = "admin-token-for-the-cli-0123456789"


def bearer(key: str) -> dict[str, str]:
    """Headers that present `key`."""
    return {"Authorization": f"Bearer {key}"}


def keyed_config(make_config: Callable[..., Config]) -> Config:
    """Keys required: `root` (an admin) and `alice` (a user) in the config file."""
    api_keys = [
        {"name": "root", "key": ROOT, "role": "admin"},
        {"name": "alice", "key": ALICE, "role": "user"},
    ]
    return make_config(auth={"required": True, "api_keys": api_keys})


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, make_config: Callable[..., Config]) -> Client:
    """A server with the two config keys and the CLI's admin token."""
    app = create_app(keyed_config(make_config), run_containers=False, admin_token=TOKEN)
    return await aiohttp_client(app)


async def issue(client: Client, name: str, role: str = "user") -> str:
    """Issue a key as root; the key."""
    r = await client.post("/api/v1/keys", json={"name": name, "role": role}, headers=bearer(ROOT))
    assert r.status == 201, await r.text()
    doc: dict[str, Any] = await r.json()
    assert (doc["Name"], doc["Role"]) == (name, role)
    return str(doc["Key"])


async def test_an_issued_key_works_at_once_and_only_its_digest_is_logged(client: Client) -> None:
    """The key answers its first request; the log holds its sha256 and never the key."""
    key = await issue(client, "carol")
    r = await client.get("/api/v1/whoami", headers=bearer(key))
    assert await r.json() == {"Name": "carol", "Role": "user"}
    recorded = await client.app[keys.STORE].read()
    issued = [r for r in recorded if r.type == "key.issued"]
    assert len(issued) == 1
    assert issued[0].stream == "key-carol"
    assert issued[0].metadata.actor == "root"
    event = issued[0].event
    assert isinstance(event, KeyIssued)
    assert event.key_sha256 == hashlib.sha256(key.encode()).hexdigest()
    text = "".join(str(r.event) + str(r.metadata) for r in recorded)
    assert key not in text


async def test_an_issued_user_key_is_a_user(client: Client) -> None:
    """A user key issued through the API reaches only its own runs and no admin route."""
    key = await issue(client, "carol")
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    r = await client.post("/api/v1/uploads", data=form, headers=bearer(ALICE))
    upload_id = (await r.json())["Id"]
    assert (await client.get(f"/api/v1/uploads/{upload_id}", headers=bearer(key))).status == 404
    feed = await (await client.get("/api/v1/events", headers=bearer(key))).json()
    assert feed["events"] == []  # alice's upload is not carol's
    assert (await client.get("/api/v1/events/head", headers=bearer(key))).status == 403
    assert (await client.get("/api/v1/keys", headers=bearer(key))).status == 403


async def test_a_revoked_key_is_refused_at_once(client: Client) -> None:
    """After `DELETE /api/v1/keys/{name}` the key answers 401; the log says `key.revoked`."""
    key = await issue(client, "carol")
    r = await client.delete("/api/v1/keys/carol", headers=bearer(ROOT))
    assert r.status == 200, await r.text()
    r = await client.get("/api/v1/prechecks", headers=bearer(key))
    assert r.status == 401
    types = [r.type for r in await client.app[keys.STORE].read()]
    assert types[-2:] == ["key.issued", "key.revoked"]


async def test_a_revoked_name_is_never_issued_again(
    client: Client, aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """A revoked name is refused (409, nothing logged), also after a restart: a new key under it
    would own what the old key made; the old key stays refused."""
    old = await issue(client, "carol")
    run_id = await queued_run(client, old)
    assert (await client.delete("/api/v1/keys/carol", headers=bearer(ROOT))).status == 200
    server = client
    for restart in (False, True):
        if restart:
            server = await restarted(client, aiohttp_client, make_config)
        head = server.app[keys.STORE].head
        r = await server.post("/api/v1/keys", json={"name": "carol"}, headers=bearer(ROOT))
        assert r.status == 409 and "never issued again" in (await r.json())["message"]
        assert server.app[keys.STORE].head == head
        assert server.app[keys.PROJECTIONS].runs.by_id[run_id].owner == "carol"
        assert (await server.get("/api/v1/events", headers=bearer(old))).status == 401


async def restarted(
    client: Client, aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> Client:
    """A new server on `client`'s storage folder, once `client` is closed."""
    await client.close()
    app = create_app(keyed_config(make_config), run_containers=False, admin_token=TOKEN)
    return await aiohttp_client(app)


async def test_streams_of_a_revoked_key_close_within_a_second(client: Client) -> None:
    """A live stream opened with a key ends within a second of the key's revocation."""
    key = await issue(client, "carol")
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    up = await (await client.post("/api/v1/uploads", data=form, headers=bearer(key))).json()
    body = {"upload_id": up["Id"], "top_cell": "chip_top"}
    run = await (await client.post("/api/v1/prechecks", json=body, headers=bearer(key))).json()
    url = f"/api/v1/prechecks/{run['Id']}/events?follow=1&access_token={key}"
    async with client.get(url, headers={"Accept": "text/event-stream"}) as stream:
        assert stream.status == 200
        await stream.content.readuntil(b"\n\n")  # the stream is open
        assert (await client.delete("/api/v1/keys/carol", headers=bearer(ROOT))).status == 200
        async with asyncio.timeout(1.0):
            try:
                while await stream.content.readany():
                    pass
            except aiohttp.ClientPayloadError:
                pass  # cut off mid-stream: ended all the same
    assert (await client.get(url, headers={"Accept": "text/event-stream"})).status == 401


async def queued_run(client: Client, key: str) -> str:
    """Upload a layout and queue a run of it with `key` (no containers run: it stays queued)."""
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    up = await (await client.post("/api/v1/uploads", data=form, headers=bearer(key))).json()
    body = {"upload_id": up["Id"], "top_cell": "chip_top"}
    run = await (await client.post("/api/v1/prechecks", json=body, headers=bearer(key))).json()
    return str(run["Id"])


async def test_a_wait_of_a_revoked_key_ends_at_once(client: Client) -> None:
    """An open `/wait` of a key answers 401 within a second of the key's revocation, not at its
    timeout."""
    key = await issue(client, "carol")
    run_id = await queued_run(client, key)
    wait = asyncio.ensure_future(
        client.post(f"/api/v1/prechecks/{run_id}/wait?timeout=60", headers=bearer(key))
    )
    await asyncio.sleep(0.2)
    assert not wait.done()  # the run is queued: the wait is open
    assert (await client.delete("/api/v1/keys/carol", headers=bearer(ROOT))).status == 200
    async with asyncio.timeout(1.0):
        r = await wait
    assert r.status == 401, await r.text()
    assert "revoked" in (await r.json())["message"]


@pytest.mark.parametrize("seconds", ["1e308", "86401", "inf", "nan"])
async def test_a_wait_longer_than_a_day_is_refused(client: Client, seconds: str) -> None:
    """`/wait?timeout=` past a day (86400 s) is 400 at once, not a wait held for ages."""
    run_id = await queued_run(client, ALICE)
    async with asyncio.timeout(2.0):
        r = await client.post(
            f"/api/v1/prechecks/{run_id}/wait?timeout={seconds}", headers=bearer(ALICE)
        )
    assert r.status == 400, await r.text()
    assert "timeout" in (await r.json())["message"]


async def test_list_shows_names_roles_and_last_use_but_no_secret(client: Client) -> None:
    """`GET /api/v1/keys`: config and issued keys with role, creation and last use."""
    key = await issue(client, "carol")
    await client.get("/api/v1/prechecks", headers=bearer(key))
    r = await client.get("/api/v1/keys", headers=bearer(ROOT))
    docs = {d["Name"]: d for d in await r.json()}
    assert set(docs) == {"root", "alice", "carol"}
    assert (docs["carol"]["Role"], docs["carol"]["Source"]) == ("user", "issued")
    assert docs["carol"]["Created"] is not None and docs["carol"]["LastUsed"] is not None
    assert (docs["alice"]["Source"], docs["alice"]["LastUsed"]) == ("config", None)
    assert docs["root"]["LastUsed"] is not None
    assert key not in await r.text()
    assert hashlib.sha256(key.encode()).hexdigest() not in await r.text()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"name": "alice"}, 409),  # a config key's name
        ({"name": "cli"}, 400),  # a name the server uses
        ({"name": "anonymous"}, 400),
        ({"name": "supervisor"}, 400),
        ({"name": "server"}, 400),
        ({"name": "a b"}, 400),
        ({"name": "carol", "role": "boss"}, 400),
        ({"role": "user"}, 400),
    ],
)
async def test_bad_issues_are_refused(client: Client, body: dict[str, str], status: int) -> None:
    """Names taken or reserved, bad roles and missing names are refused, with nothing logged."""
    head = client.app[keys.STORE].head
    r = await client.post("/api/v1/keys", json=body, headers=bearer(ROOT))
    assert r.status == status, await r.text()
    assert client.app[keys.STORE].head == head


async def test_a_user_key_is_not_issued_while_auth_is_off(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """With auth off a user key would isolate nothing: issuing one is 409 with nothing logged;
    an admin key is issued."""
    client = await aiohttp_client(create_app(make_config(), run_containers=False))
    head = client.app[keys.STORE].head
    r = await client.post("/api/v1/keys", json={"name": "carol", "role": "user"})
    assert r.status == 409 and "auth.required" in (await r.json())["message"]
    assert client.app[keys.STORE].head == head
    r = await client.post("/api/v1/keys", json={"name": "carol", "role": "admin"})
    assert r.status == 201


async def test_start_with_auth_off_warns_of_issued_user_keys(
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A log holding user keys issued while auth was on, started with auth off, is served with
    a warning that names them."""
    first = await aiohttp_client(create_app(keyed_config(make_config), run_containers=False))
    await issue(first, "carol")
    await first.close()
    with caplog.at_level("WARNING"):
        await aiohttp_client(create_app(make_config(), run_containers=False))
    assert any("'carol'" in m and "isolate nothing" in m for m in caplog.messages)


async def test_issuing_a_live_name_twice_and_revoking_unknown_or_config_keys(
    client: Client,
) -> None:
    """A live issued name is 409; an unknown name 404; a config key cannot be revoked (409)."""
    await issue(client, "carol")
    r = await client.post("/api/v1/keys", json={"name": "carol"}, headers=bearer(ROOT))
    assert r.status == 409
    assert (await client.delete("/api/v1/keys/nobody", headers=bearer(ROOT))).status == 404
    assert (await client.delete("/api/v1/keys/alice", headers=bearer(ROOT))).status == 409
    assert (await client.get("/api/v1/prechecks", headers=bearer(ALICE))).status == 200


async def test_issued_keys_survive_a_restart(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """A new server on the same log knows the issued and the revoked keys from the log."""
    config = keyed_config(make_config)
    first = await aiohttp_client(create_app(config, run_containers=False))
    kept = await issue(first, "carol")
    gone = await issue(first, "dave")
    assert (await first.delete("/api/v1/keys/dave", headers=bearer(ROOT))).status == 200
    await first.close()
    second = await aiohttp_client(create_app(config, run_containers=False))
    assert (await second.get("/api/v1/prechecks", headers=bearer(kept))).status == 200
    assert (await second.get("/api/v1/prechecks", headers=bearer(gone))).status == 401


async def test_cli_generate_goes_through_the_running_server(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`precheck-server apikey generate` with a server running issues the key through it."""
    config = client.app[keys.CONFIG]
    root = config.server.storage_path
    config_file = tmp_path / "cli.toml"
    config_file.write_text(f'[server]\nstorage_path = "{root}"\n')
    with StorageLock(root):
        info = {"url": str(client.make_url("")).rstrip("/"), "token": TOKEN, "pid": os.getpid()}
        (root / INFO).write_text(json.dumps(info))
        args = ["apikey", "generate", "--name", "erin", "--role", "user"]
        code = await asyncio.to_thread(main, [*args, "--config", str(config_file)])
    assert code == 0
    out = capsys.readouterr().out
    key = next(w for w in out.split() if w.startswith("ws_key_"))
    r = await client.get("/api/v1/whoami", headers=bearer(key))
    assert await r.json() == {"Name": "erin", "Role": "user"}
    issued = [r for r in await client.app[keys.STORE].read() if r.type == "key.issued"]
    assert issued[-1].metadata.actor == "cli"


async def test_the_page_shows_who_is_signed_in(client: Client) -> None:
    """The page has a place for the signed-in name and role, filled from `/api/v1/whoami`."""
    page = await (await client.get("/")).text()
    assert page.count('id="whoami"') == 1
    script = await (await client.get("/static/app.js")).text()
    assert 'api("/api/v1/whoami")' in script
    assert '$("whoami").textContent = `${me.Name} (${me.Role})`' in script
    r = await client.get("/api/v1/whoami", headers=bearer(ALICE))
    assert await r.json() == {"Name": "alice", "Role": "user"}
