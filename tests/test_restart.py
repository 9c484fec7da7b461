"""A restart on the same storage folder rebuilds exactly what the API showed before it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.clock import Clock, utcnow
from precheck.config import Config
from precheck.web import keys
from tests.layouts import gds, gds_gz, oasis

Client = TestClient[web.Request, web.Application]


def api_app(config: Config, clock: Clock = utcnow) -> web.Application:
    """The app without a supervisor: these tests are about the API, so runs stay queued."""
    return create_app(config, clock, run_containers=False)


START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """Moves one millisecond per read, and can be frozen so both servers see the same `now`."""

    def __init__(self) -> None:
        self.now = START
        self.frozen = False

    def __call__(self) -> datetime:
        if not self.frozen:
            self.now += timedelta(milliseconds=1)
        return self.now


async def upload(client: Client, body: bytes, name: str) -> str:
    form = aiohttp.FormData()
    form.add_field("file", body, filename=name)
    r = await client.post("/api/v1/uploads", data=form)
    assert r.status == 200, await r.text()
    upload_id: str = (await r.json())["Id"]
    return upload_id


async def queue(client: Client, upload_id: str, **fields: object) -> str:
    r = await client.post(
        "/api/v1/prechecks", json={"upload_id": upload_id, "top_cell": "chip_top", **fields}
    )
    assert r.status == 200, await r.text()
    run_id: str = (await r.json())["Id"]
    return run_id


async def snapshot(client: Client, paths: list[str]) -> dict[str, tuple[int, Any]]:
    """Each path's status and JSON body (the disk's free space left out: it is the machine's,
    and moves with whatever else writes to it)."""
    seen: dict[str, tuple[int, Any]] = {}
    for path in paths:
        r = await client.get(path)
        body = await r.json()
        if path == "/health":
            body["storage"].pop("free_mb")
        seen[path] = (r.status, body)
    return seen


async def build_state(client: Client) -> tuple[list[str], dict[str, str]]:
    """Uploads, queued and cancelled runs and a deleted upload; the GET paths that show them."""
    a = await upload(client, gds("chip_top"), "a.gds")
    b = await upload(client, gds_gz("chip_top"), "b.gds.gz")
    c = await upload(client, oasis("chip_top"), "c.oas")
    gone = await upload(client, gds("chip_top"), "gone.gds")
    r1 = await queue(client, a)
    r2 = await queue(client, b, die_id="ABCD1234", slot="0p5x0p5", cob=True)
    r3 = await queue(client, a)
    r4 = await queue(client, c, slot="1x0p5")
    assert (await client.delete(f"/api/v1/prechecks/{r1}")).status == 200
    assert (await client.delete(f"/api/v1/prechecks/{r3}")).status == 200
    assert (await client.delete(f"/api/v1/uploads/{gone}")).status == 200
    ids = {"a": a, "b": b, "c": c, "gone": gone, "r1": r1, "r2": r2, "r3": r3, "r4": r4}
    paths = [
        "/health",
        "/api/v1/queue",
        "/api/v1/uploads",
        *(f"/api/v1/uploads/{u}" for u in (a, b, c, gone, "never-existed")),
        "/api/v1/prechecks",
        "/api/v1/prechecks?status=queued",
        "/api/v1/prechecks?status=cancelled",
        "/api/v1/prechecks?status=queued&status=cancelled",
        *(f"/api/v1/prechecks/{r}" for r in (r1, r2, r3, r4, "never-existed")),
    ]
    return paths, ids


async def test_restart_shows_the_same_state(aiohttp_client: AiohttpClient, config: Config) -> None:
    """After a restart on the same folder every GET answers exactly as before."""
    clock = FakeClock()
    first = await aiohttp_client(api_app(config, clock=clock))
    paths, ids = await build_state(first)
    clock.frozen = True
    before = await snapshot(first, paths)
    head = first.app[keys.STORE].head
    await first.close()

    second = await aiohttp_client(api_app(config, clock=clock))
    after = await snapshot(second, paths)
    assert second.app[keys.STORE].head == head
    for path in paths:
        assert after[path] == before[path], path

    # The snapshot is not trivially empty: it holds what was built.
    assert before["/api/v1/queue"][1]["order"] == [ids["r2"], ids["r4"]]
    assert before[f"/api/v1/uploads/{ids['gone']}"][0] == 404
    assert before[f"/api/v1/prechecks/{ids['r1']}"][1]["State"]["Status"] == "cancelled"
    assert len(before["/api/v1/prechecks"][1]) == 4
    assert [u["Id"] for u in before["/api/v1/uploads"][1]] == [ids["c"], ids["b"], ids["a"]]

    # The restarted server goes on where the first stopped: new runs queue behind the old.
    clock.frozen = False
    r5 = await queue(second, ids["c"])
    doc = await (await second.get(f"/api/v1/prechecks/{r5}")).json()
    assert doc["Queue"] == {"Position": 3, "Length": 3, "Waiting": None}


async def test_restart_removes_leftovers(aiohttp_client: AiohttpClient, config: Config) -> None:
    """At start a partial file in tmp/ and an upload folder no event announced are removed."""
    first = await aiohttp_client(api_app(config))
    kept = await upload(first, gds(), "kept.gds")
    await first.close()

    root: Path = config.server.storage_path
    partial = root / "tmp" / "crash.part"
    partial.write_bytes(b"half a file")
    stray_dir = root / "tmp" / "stray-dir"
    stray_dir.mkdir()
    (stray_dir / "x").write_bytes(b"x")
    orphan = root / "uploads" / "0123456789abcdef0123456789abcdef"
    orphan.mkdir()
    (orphan / "input.gds").write_bytes(gds())

    second = await aiohttp_client(api_app(config))
    assert list((root / "tmp").iterdir()) == []
    assert not orphan.exists()
    assert sorted(p.name for p in (root / "uploads").iterdir()) == [kept]
    assert (root / "uploads" / kept / "input.gds").read_bytes() == gds()
    r = await second.get(f"/api/v1/uploads/{orphan.name}")
    assert r.status == 404
    assert (await second.get(f"/api/v1/uploads/{kept}")).status == 200
