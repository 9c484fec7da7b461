"""API keys, the IP allowlist, trusted proxies and who-did-it metadata, over a real socket."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.events.store import RecordedEvent
from precheck.events.types import UploadReceived
from precheck.web import keys
from tests.layouts import gds

Client = TestClient[web.Request, web.Application]


def api_app(config: Config) -> web.Application:
    """The app without a supervisor: these tests are about the API, so runs stay queued."""
    return create_app(config, run_containers=False)


KEY = "ws_key_ci_secret"
KEYS = [{"name": "ci", "key": KEY}]


def auth_app(
    make_config: Callable[..., Config], server: dict[str, object] | None = None, **auth: object
) -> web.Application:
    return api_app(
        make_config(server=server or {}, auth={"required": True, "api_keys": KEYS, **auth})
    )


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def received(client: Client) -> list[RecordedEvent]:
    """The upload events in the log (the server also records its own start)."""
    return [r for r in await client.app[keys.STORE].read() if r.type == "upload.received"]


def layout_form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    return form


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, make_config: Callable[..., Config]) -> Client:
    return await aiohttp_client(auth_app(make_config))


async def test_health_is_open(client: Client) -> None:
    """`/health` answers without a key."""
    r = await client.get("/health")
    assert r.status == 200
    assert (await r.json())["status"] == "healthy"


async def _health_of(client: Client, headers: dict[str, str]) -> dict[str, object]:
    """`/health` once the supervisor has tried the engine (and found it gone)."""
    for _ in range(200):
        r = await client.get("/health", headers=headers)
        assert r.status == 200
        doc: dict[str, object] = await r.json()
        if doc["status"] == "degraded":
            return doc
        await asyncio.sleep(0.02)
    raise AssertionError(f"the engine was never found gone: {doc}")


@pytest.mark.parametrize("required", [True, False])
async def test_health_without_a_key_says_only_up_or_down(
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
    tmp_path: Path,
    required: bool,
) -> None:
    """With keys required, `/health` without a key (or with a wrong one) answers only its status:
    no Docker error, engine, image or version; a key sees them all; with auth off, everyone."""
    gone = tmp_path / "no-engine.sock"
    config = make_config(
        docker={"url": f"unix://{gone}", "image": "secret-registry.example/precheck:1"},
        auth={"required": required, "api_keys": KEYS},
    )
    client = await aiohttp_client(create_app(config))
    detail = await _health_of(client, bearer())
    docker = detail["docker"]
    assert isinstance(docker, dict) and docker["image"] == "secret-registry.example/precheck:1"
    assert docker["engines"] and "version" in detail
    for headers in ({}, bearer("wrong")):
        doc = await _health_of(client, headers)
        if required:
            assert doc == {"status": "degraded"}, doc
            assert "no-engine" not in json.dumps(doc) and "secret" not in json.dumps(doc)
        else:
            assert set(doc) == set(detail) and doc["docker"]["image"] == docker["image"]  # type: ignore[index]


@pytest.mark.parametrize(
    "path", ["/api/v1/queue", "/api/v1/uploads", "/api/v1/prechecks", "/api/v1/prechecks/x"]
)
async def test_missing_key_is_401(client: Client, path: str) -> None:
    """Without a key every API route answers 401 with a JSON message and a Bearer challenge."""
    r = await client.get(path)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert "API key required" in (await r.json())["message"]


async def test_missing_key_refuses_writes_without_events(client: Client) -> None:
    """An upload without a key is refused before anything is stored."""
    head = client.app[keys.STORE].head
    r = await client.post("/api/v1/uploads", data=layout_form())
    assert r.status == 401
    assert client.app[keys.STORE].head == head
    root = client.app[keys.CONFIG].server.storage_path
    assert list((root / "uploads").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "wrong"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Basic {KEY}"},  # not a bearer token: no key at all
    ],
)
async def test_wrong_key_is_401(client: Client, headers: dict[str, str]) -> None:
    """A wrong key (or one in the wrong scheme) answers 401 with a JSON message."""
    r = await client.get("/api/v1/queue", headers=headers)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert (await r.json())["message"].startswith("Unauthorized")


@pytest.mark.parametrize(
    "headers", [bearer(), {"Authorization": f"bearer {KEY}"}, {"X-API-Key": KEY}]
)
async def test_right_key_is_200(client: Client, headers: dict[str, str]) -> None:
    """The right key opens the API, as a bearer token or in X-API-Key."""
    r = await client.get("/api/v1/queue", headers=headers)
    assert r.status == 200
    assert (await r.json())["queued"] == 0


async def test_key_given_as_sha256(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """A key configured only by its sha256 digest is accepted; others are not."""
    digest = hashlib.sha256(b"hashed-secret").hexdigest()
    app = api_app(
        make_config(auth={"required": True, "api_keys": [{"name": "ops", "key_sha256": digest}]})
    )
    client = await aiohttp_client(app)
    assert (await client.get("/api/v1/queue", headers=bearer("hashed-secret"))).status == 200
    assert (await client.get("/api/v1/queue", headers=bearer(digest))).status == 401


async def test_actor_client_and_request_id_land_in_event_metadata(client: Client) -> None:
    """An upload's event names the key, the client address and the request id, which is echoed."""
    r = await client.post(
        "/api/v1/uploads", data=layout_form(), headers={**bearer(), "X-Request-Id": "test-123"}
    )
    assert r.status == 200, await r.text()
    assert r.headers["X-Request-Id"] == "test-123"
    upload_id = (await r.json())["Id"]
    [recorded] = await received(client)
    assert isinstance(recorded.event, UploadReceived)
    assert recorded.event.upload_id == upload_id
    assert recorded.metadata.actor == "ci"
    assert recorded.metadata.client == "127.0.0.1"
    assert recorded.metadata.request_id == "test-123"


async def test_request_id_is_made_when_missing_or_unusable(client: Client) -> None:
    """Without a usable X-Request-Id the server makes one and still echoes it, even on errors."""
    r = await client.get("/api/v1/queue", headers=bearer())
    made = r.headers["X-Request-Id"]
    assert made
    r = await client.get(
        "/api/v1/queue", headers={**bearer(), "X-Request-Id": "bad id\twith spaces"}
    )
    assert r.headers["X-Request-Id"] not in ("", "bad id\twith spaces")
    r = await client.get("/api/v1/queue", headers={"X-Request-Id": "denied-1"})
    assert r.status == 401
    assert r.headers["X-Request-Id"] == "denied-1"


async def test_allowlist_excluding_the_client_is_403(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """An allowlist without 127.0.0.1 refuses even the right key with 403 and a message."""
    client = await aiohttp_client(auth_app(make_config, allowed_ips=["10.0.0.0/8", "192.0.2.7"]))
    r = await client.get("/api/v1/queue", headers=bearer())
    assert r.status == 403
    assert "127.0.0.1" in (await r.json())["message"]
    head = client.app[keys.STORE].head
    r = await client.post("/api/v1/uploads", data=layout_form(), headers=bearer())
    assert r.status == 403
    assert client.app[keys.STORE].head == head


@pytest.mark.parametrize(
    "allowed", [["127.0.0.0/8"], ["10.0.0.0/8", "127.0.0.1"], ["127.0.0.1/32"]]
)
async def test_allowlist_including_the_client_is_200(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config], allowed: list[str]
) -> None:
    """A CIDR or address that covers 127.0.0.1 lets the keyed request through."""
    client = await aiohttp_client(auth_app(make_config, allowed_ips=allowed))
    assert (await client.get("/api/v1/queue", headers=bearer())).status == 200


async def test_forwarded_for_ignored_from_untrusted_peer(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """Without trusted proxies, X-Forwarded-For neither passes an allowlist nor names the client."""
    client = await aiohttp_client(auth_app(make_config, allowed_ips=["203.0.113.0/24"]))
    r = await client.get("/api/v1/queue", headers={**bearer(), "X-Forwarded-For": "203.0.113.9"})
    assert r.status == 403
    assert "127.0.0.1" in (await r.json())["message"]

    open_client = await aiohttp_client(auth_app(make_config))
    r = await open_client.post(
        "/api/v1/uploads",
        data=layout_form(),
        headers={**bearer(), "X-Forwarded-For": "203.0.113.9"},
    )
    assert r.status == 200
    [recorded] = await received(open_client)
    assert recorded.metadata.client == "127.0.0.1"


async def test_forwarded_for_honoured_from_trusted_proxy(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """Behind a trusted proxy the forwarded address is the client: it decides the allowlist."""
    app = auth_app(
        make_config, server={"trusted_proxies": ["127.0.0.1/32"]}, allowed_ips=["203.0.113.0/24"]
    )
    client = await aiohttp_client(app)
    # The proxy itself is not in the allowlist, so only the forwarded address can let this in.
    r = await client.post(
        "/api/v1/uploads",
        data=layout_form(),
        headers={**bearer(), "X-Forwarded-For": "198.51.100.1, 203.0.113.9"},
    )
    assert r.status == 200, await r.text()
    [recorded] = await received(client)
    assert recorded.metadata.client == "203.0.113.9"

    r = await client.get("/api/v1/queue", headers={**bearer(), "X-Forwarded-For": "198.51.100.1"})
    assert r.status == 403
    assert "198.51.100.1" in (await r.json())["message"]
    # Without the header the peer itself is the client, and it is not allowed.
    assert (await client.get("/api/v1/queue", headers=bearer())).status == 403

    # A client's own line comes first, the proxy's last: every line is read, right to left.
    two_lines = CIMultiDict(bearer())
    two_lines.add("X-Forwarded-For", "203.0.113.7")  # forged by the client
    two_lines.add("X-Forwarded-For", "198.51.100.1")  # added by the proxy
    r = await client.get("/api/v1/queue", headers=two_lines)
    assert r.status == 403, "the forged first line must not decide"
    assert "198.51.100.1" in (await r.json())["message"]


async def test_key_from_environment(
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `${ENV}` key is replaced by the variable's value when the config is read."""
    monkeypatch.setenv("PRECHECK_TEST_API_KEY", "from-the-environment")
    config = make_config(
        auth={"required": True, "api_keys": [{"name": "env", "key": "${PRECHECK_TEST_API_KEY}"}]}
    )
    client = await aiohttp_client(api_app(config))
    assert (await client.get("/api/v1/queue", headers=bearer("from-the-environment"))).status == 200
    assert (
        await client.get("/api/v1/queue", headers=bearer("${PRECHECK_TEST_API_KEY}"))
    ).status == 401


async def test_open_server_records_anonymous(aiohttp_client: AiohttpClient, config: Config) -> None:
    """With auth not required, requests without a key pass and are recorded as anonymous."""
    client = await aiohttp_client(api_app(config))
    r = await client.post("/api/v1/uploads", data=layout_form())
    assert r.status == 200
    [recorded] = await received(client)
    assert recorded.metadata.actor == "anonymous"


async def test_open_server_ignores_an_unknown_key_and_names_a_known_one(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """With auth off, a key that matches none is ignored; one that matches names the actor."""
    client = await aiohttp_client(api_app(make_config(auth={"required": False, "api_keys": KEYS})))
    assert (await client.get("/api/v1/queue", headers=bearer("ws_key_wrong"))).status == 200
    r = await client.post("/api/v1/uploads", data=layout_form(), headers=bearer("ws_key_wrong"))
    assert r.status == 200
    r = await client.post("/api/v1/uploads", data=layout_form(), headers=bearer())
    assert r.status == 200
    assert [e.metadata.actor for e in await received(client)] == ["anonymous", "ci"]
