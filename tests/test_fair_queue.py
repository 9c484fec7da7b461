"""The fair queue: FIFO within an owner, round-robin across owners, per-owner limits."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import attrs
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.projections import Projections
from precheck.projections.queue import queue_at
from precheck.web import keys
from tests.docker_fixtures import StartApp
from tests.factories import SUPERVISOR, run_exited, run_started
from tests.layouts import gds

Client = TestClient[web.Request, web.Application]
KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789", "root": "key-root-01234567"}
API_KEYS = [
    {"name": n, "key": k, "role": "admin" if n == "root" else "user"} for n, k in KEYS.items()
]


async def serve(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config], **server: int
) -> Client:
    """A server without a supervisor: users alice and bob, admin root; `server` limits."""
    config = make_config(server=server, auth={"required": True, "api_keys": API_KEYS})
    return await aiohttp_client(create_app(config, run_containers=False))


async def queue(client: Client, who: str, layout: bytes | None = None) -> aiohttp.ClientResponse:
    """Upload a layout (a plain one by default) and queue a run of it as `who`; the answer."""
    headers = {"X-API-Key": KEYS[who]}
    form = aiohttp.FormData()
    form.add_field("file", gds() if layout is None else layout, filename="chip.gds")
    up = await (await client.post("/api/v1/uploads", data=form, headers=headers)).json()
    body = {"upload_id": up["Id"], "top_cell": "chip_top"}
    return await client.post("/api/v1/prechecks", json=body, headers=headers)


async def queued(client: Client, who: str, layout: bytes | None = None) -> str:
    """Queue a run as `who`; its id."""
    r = await queue(client, who, layout)
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return str(doc["Id"])


async def start_head(client: Client) -> str | None:
    """Record the queue's head as started, as the supervisor would; its id."""
    head = client.app[keys.PROJECTIONS].queue.head()
    if head is not None:
        started = run_started(head, at=datetime.now(UTC))
        await client.app[keys.STORE].append([started], SUPERVISOR)
    return head


async def test_a_later_owner_starts_second(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """A queues 5, then B queues 1: B's run starts second, then A's go on in order."""
    client = await serve(aiohttp_client, make_config)
    a = [await queued(client, "alice") for _ in range(5)]
    b = await queued(client, "bob")
    root, bob = {"X-API-Key": KEYS["root"]}, {"X-API-Key": KEYS["bob"]}
    order = await (await client.get("/api/v1/queue", headers=root)).json()
    assert order["order"] == [a[0], b, *a[1:]]
    doc = await (await client.get(f"/api/v1/prechecks/{b}", headers=bob)).json()
    assert (doc["Queue"]["Position"], doc["Queue"]["Length"]) == (2, 6)
    started = [await start_head(client) for _ in range(6)]
    assert started == [a[0], b, *a[1:]]


async def test_the_owner_served_longest_ago_goes_first(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """Once A's first run started, B's first waiting run comes before A's next."""
    client = await serve(aiohttp_client, make_config)
    a1 = await queued(client, "alice")
    assert await start_head(client) == a1
    a2, a3 = await queued(client, "alice"), await queued(client, "alice")
    b1, b2 = await queued(client, "bob"), await queued(client, "bob")
    state = client.app[keys.PROJECTIONS]
    assert state.queue.queued() == [b1, a2, b2, a3]
    assert [state.queue.position(r) for r in (b1, a2, b2, a3)] == [1, 2, 3, 4]


async def test_the_fair_order_is_rebuilt_from_the_log(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """A replay gives the live order, and each queued run's past place equals its live one."""
    client = await serve(aiohttp_client, make_config)
    for who in ("alice", "alice", "bob", "alice", "root", "bob"):
        await queued(client, who)
    await start_head(client)
    await start_head(client)
    for who in ("root", "alice", "bob"):
        await queued(client, who)
    store, live = client.app[keys.STORE], client.app[keys.PROJECTIONS]
    replayed = await Projections.replay(store)
    assert replayed.queue.queued() == live.queue.queued()
    assert len(live.queue.queued()) == 7
    for run_id in live.queue.queued():
        run = live.runs.by_id[run_id]
        past = queue_at(live.runs.by_id.values(), run, store.head)
        assert past == (live.queue.position(run_id), live.queue.length)


async def test_past_max_queued_per_owner_is_429(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """With `max_queued_per_owner = 2` A's third waiting run is refused with 429; B's is not."""
    client = await serve(aiohttp_client, make_config, max_queued_per_owner=2)
    await queued(client, "alice")
    await queued(client, "alice")
    head = client.app[keys.STORE].head
    r = await queue(client, "alice")
    assert r.status == 429
    assert "max_queued_per_owner" in (await r.json())["message"]
    assert [e.type for e in await client.app[keys.STORE].read(head)] == ["upload.received"]
    await queued(client, "bob")
    await start_head(client)  # one of A's starts: A may queue another
    await queued(client, "alice")


async def test_max_running_per_owner_holds_the_owners_next_run(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """With `max_running_per_owner = 1` A's second run waits while A's first runs; B's does not."""
    client = await serve(aiohttp_client, make_config, max_running_per_owner=1)
    a1, a2 = await queued(client, "alice"), await queued(client, "alice")
    assert await start_head(client) == a1
    assert client.app[keys.PROJECTIONS].queue.head() is None
    assert client.app[keys.PROJECTIONS].queue.position(a2) == 1
    b1 = await queued(client, "bob")
    assert await start_head(client) == b1


async def test_max_running_per_owner_is_429(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """With `max_running_per_owner = 1` A may not queue (nor re-run) while A's run runs: 429
    with a message and nothing appended; B may. Once A's container stopped, A may again."""
    client = await serve(aiohttp_client, make_config, max_running_per_owner=1)
    a1 = await queued(client, "alice")
    assert await start_head(client) == a1
    store = client.app[keys.STORE]
    head = store.head
    r = await queue(client, "alice")
    assert r.status == 429
    body = await r.json()
    message = "alice has 1 runs running, as many as server.max_running_per_owner allows"
    assert body["message"].startswith(message)
    assert body["detail"] == body["message"]
    assert "Retry-After" not in r.headers
    rerun = await client.post(f"/api/v1/prechecks/{a1}/rerun", headers={"X-API-Key": KEYS["alice"]})
    assert rerun.status == 429
    assert (await rerun.json())["message"].startswith(message)
    assert [e.type for e in await store.read(head)] == ["upload.received"]
    b1 = await queued(client, "bob")
    await store.append([run_exited(a1, at=datetime.now(UTC))], SUPERVISOR)
    a2 = await queued(client, "alice")
    assert client.app[keys.PROJECTIONS].queue.queued() == [b1, a2]


async def test_max_running_per_owner_is_429_while_a_container_runs(
    start_app: StartApp,
    sim_config: Callable[..., Config],
    make_config: Callable[..., Config],
) -> None:
    """On Docker with `max_running_per_owner = 1`: while A's run is in its container A's next
    request is refused and no `run.queued` is written; B's run starts beside it; once A's run
    ended (cancelled), A queues again."""
    config = sim_config(max_concurrent=2, server={"max_running_per_owner": 1})
    auth = make_config(auth={"required": True, "api_keys": API_KEYS}).auth
    api = await start_app(attrs.evolve(config, auth=auth))
    client = api.client
    a1 = await queued(client, "alice", gds("chip_top", "hang"))
    await api.wait_running(a1)
    before = len(await api.events("run.queued"))
    r = await queue(client, "alice")
    assert r.status == 429, await r.text()
    body = await r.json()
    assert "alice has 1 runs running" in body["message"]
    assert "server.max_running_per_owner" in body["detail"]
    assert len(await api.events("run.queued")) == before
    b1 = await queued(client, "bob")
    await api.wait_running(b1)
    alice = {"X-API-Key": KEYS["alice"]}
    cancel = await client.delete(f"/api/v1/prechecks/{a1}", headers=alice)
    assert cancel.status == 200, await cancel.text()
    assert (await cancel.json())["Status"] == "cancelled"
    a2 = await queued(client, "alice")
    assert len(await api.events("run.queued")) == before + 2
    assert a2 not in (a1, b1)
