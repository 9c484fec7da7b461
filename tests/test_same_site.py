"""No cross-site writes: JSON bodies must say so, writes must come from this server's origin,
and with auth off only this server's names are answered (against DNS rebinding)."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.web import keys
from precheck.web.same_site import allowed_hosts, is_loopback
from tests.layouts import gds

Client = TestClient[web.Request, web.Application]


async def _client(aiohttp_client: AiohttpClient, config: Config) -> Client:
    return await aiohttp_client(create_app(config, run_containers=False))


async def _queued_and_ended(client: Client) -> str:
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    upload = await (await client.post("/api/v1/uploads", data=form)).json()
    r = await client.post(
        "/api/v1/prechecks", json={"upload_id": upload["Id"], "top_cell": "chip_top"}
    )
    run = str((await r.json())["Id"])
    assert (await client.delete(f"/api/v1/prechecks/{run}")).status == 200
    return run


async def test_a_text_plain_prune_from_another_site_changes_nothing(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    """The attack: a foreign page POSTs `{}` as text/plain to prune. Refused (403), and even
    without the Origin the text body is not read as JSON (415); no event is appended."""
    client = await _client(aiohttp_client, config)
    run = await _queued_and_ended(client)
    head = client.app[keys.STORE].head
    foreign = {"Origin": "http://attacker.example", "Content-Type": "text/plain"}
    r = await client.post("/api/v1/prechecks/prune", data=b"{}", headers=foreign)
    assert r.status == 403
    body = await r.json()
    assert "cross-site" in body["message"] and body["detail"] == body["message"]
    r = await client.post(
        "/api/v1/prechecks/prune", data=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert r.status == 415, await r.text()
    assert client.app[keys.STORE].head == head
    assert (await client.get(f"/api/v1/prechecks/{run}")).status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/prechecks"),
        ("POST", "/api/v1/uploads"),
        ("DELETE", "/api/v1/prechecks/x"),
        ("POST", "/api/v1/prechecks/x/rerun"),
    ],
)
async def test_every_write_from_a_foreign_origin_is_refused(
    aiohttp_client: AiohttpClient, config: Config, method: str, path: str
) -> None:
    """Any state-changing method with a foreign or `null` Origin, or a cross-site fetch, is 403."""
    client = await _client(aiohttp_client, config)
    for headers in (
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},
        {"Origin": f"http://{client.host}:{(client.port or 0) + 1}"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        r = await client.request(method, path, headers=headers)
        assert r.status == 403, (headers, await r.text())
    assert client.app[keys.STORE].head == 1  # only the instance's creation


async def test_the_page_and_curl_keep_working(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    """A write with this server's own Origin (the page) or none (curl) goes through."""
    client = await _client(aiohttp_client, config)
    own = {"Origin": f"http://{client.host}:{client.port}", "Sec-Fetch-Site": "same-origin"}
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    assert (await client.post("/api/v1/uploads", data=form, headers=own)).status == 200
    r = await client.post("/api/v1/prechecks/prune", json={}, headers=own)
    assert r.status == 200, await r.text()
    assert (await client.post("/api/v1/prechecks/prune", json={})).status == 200


async def test_with_auth_off_only_this_servers_names_are_answered(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """A rebound name gets 421 on reads too; localhost names and `allowed_hosts` pass; with
    auth on the key decides instead."""
    client = await _client(aiohttp_client, make_config())
    for host in ("attacker.example", "attacker.example:8000", "10.1.2.3"):
        r = await client.get("/api/v1/uploads", headers={"Host": host})
        assert r.status == 421, (host, await r.text())
        assert "server.allowed_hosts" in (await r.json())["message"]
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
        assert (await client.get("/api/v1/uploads", headers={"Host": host})).status == 200

    named = await _client(aiohttp_client, make_config(server={"allowed_hosts": ["precheck.lan"]}))
    assert (await named.get("/health", headers={"Host": "precheck.lan:8000"})).status == 200

    keyed = await _client(
        aiohttp_client,
        make_config(auth={"required": True, "api_keys": [{"name": "ci", "key": "k"}]}),
    )
    r = await keyed.get("/api/v1/uploads", headers={"Host": "any.example", "X-API-Key": "k"})
    assert r.status == 200


def test_allowed_hosts_and_loopback() -> None:
    """The default names are localhost's and the bind address (not 0.0.0.0); `*` allows any."""
    assert allowed_hosts("127.0.0.1", ()) == {"localhost", "127.0.0.1", "::1"}
    assert "10.0.0.5" in allowed_hosts("10.0.0.5", ())
    assert "0.0.0.0" not in allowed_hosts("0.0.0.0", ("Precheck.LAN",))
    assert "precheck.lan" in allowed_hosts("0.0.0.0", ("Precheck.LAN",))
    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "10.0.0.5")] == [
        True, True, True, False, False,
    ]  # fmt: skip
