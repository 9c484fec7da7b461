"""The disk guard (`server.min_free_mb`): an upload that would leave less free space is refused
with 507 before a byte is stored (or as soon as it would, for a body of unknown length),
leaving nothing; runs wait to start while there is less, saying why; `/health` and `/metrics`
report the free space. The storage folder is a small memory file system (needs root)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.web import keys
from tests.docker_fixtures import StartApp
from tests.layouts import gds
from tests.small_fs import small_fs

MB = 1 << 20


@pytest.fixture
def small_storage(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path/data` on an 8 MiB memory file system, unmounted afterwards."""
    with small_fs(tmp_path / "data", "8m") as data:
        yield data


def padded(size: int) -> bytes:
    """A valid layout of about `size` bytes (long texts the simulator ignores)."""
    return gds("chip_top", *(f"pad={'x' * 30000}" for _ in range(size // 30000)))


def _stored(data: Path) -> list[str]:
    return sorted(p.name for folder in ("tmp", "uploads") for p in (data / folder).rglob("*"))


async def test_an_upload_past_the_free_space_kept_is_refused_with_507(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config], small_storage: Path
) -> None:
    """With 4 MB to keep free on 8: a 1 MB upload is stored; a 5 MB one is refused with 507
    and a message before a byte is stored; sent without a length, it is cut with 507 as the
    disk fills; neither leaves a file or an event."""
    config = make_config(server={"storage_path": str(small_storage), "min_free_mb": 4})
    client = await aiohttp_client(create_app(config, run_containers=False))
    ok = await client.post("/api/v1/uploads?name=a.gds", data=padded(1 * MB))
    assert ok.status == 200, await ok.text()
    head = client.app[keys.STORE].head
    before = _stored(small_storage)

    r = await client.post("/api/v1/uploads?name=b.gds", data=padded(5 * MB))
    assert r.status == 507
    assert "server.min_free_mb" in (await r.json())["message"]

    async def chunks() -> AsyncIterator[bytes]:
        body = padded(5 * MB)
        for i in range(0, len(body), 256 << 10):
            yield body[i : i + 256 << 10]

    r = await client.post("/api/v1/uploads?name=c.gds", data=chunks())
    assert r.status == 507
    assert client.app[keys.STORE].head == head  # no event for a refused upload
    assert _stored(small_storage) == before  # and no file, partial or whole

    health = await (await client.get("/health")).json()
    assert 0 < health["storage"]["free_mb"] <= 8 and health["storage"]["min_free_mb"] == 4
    metrics = await (await client.get("/metrics")).text()
    assert "precheck_storage_free_bytes " in metrics


@pytest.mark.docker
async def test_runs_wait_for_room_and_start_once_it_is_there(
    start_app: StartApp, sim_config: Callable[..., Config], small_storage: Path
) -> None:
    """The disk filled by something else: a queued run waits, its `Queue.Waiting` says why;
    once room is made it starts and completes."""
    config = sim_config(server={"storage_path": str(small_storage), "min_free_mb": 3})
    api = await start_app(config)
    api.app[keys.SUPERVISOR].starter.room_recheck = 0.2  # a quick look for the test
    upload = await api.upload(gds("chip_top"))
    filler = small_storage / "filler"
    free = api.app[keys.STORAGE].free_bytes()
    filler.write_bytes(b"\0" * (free - 2 * MB))
    run = (await api.create(upload))["Id"]
    async with asyncio.timeout(10):
        while True:
            doc = await api.get(run)
            if doc["Queue"]["Waiting"]:
                break
            await asyncio.sleep(0.1)
    assert doc["State"]["Status"] == "queued"
    assert "server.min_free_mb" in doc["Queue"]["Waiting"]
    filler.unlink()
    assert (await api.wait(run, 60))["Status"] == "completed"
