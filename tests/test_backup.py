"""`precheck-server backup`: a consistent copy of a serving storage folder (SQLite's online
backup of the log and output lines, then the files the copied log names), that verifies and
serves the same documents; a second backup copies only what is new."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.cli import main
from precheck.config import Config, parse_config
from precheck.ops.audit import verify
from precheck.ops.backup import backup
from tests.docker_fixtures import StartApp
from tests.layouts import gds

pytestmark = pytest.mark.docker


def _config_of(folder: Path) -> Config:
    return parse_config(
        {"server": {"storage_path": str(folder)}, "preflight": {"enabled": False}}, "backup-test"
    )


async def test_a_backup_taken_while_serving_verifies_and_serves_the_same(
    start_app: StartApp,
    sim_config: Callable[..., Config],
    tmp_path: Path,
    aiohttp_client: AiohttpClient,
) -> None:
    """Two finished runs, uploads going on during the backup: the copy passes verify, a
    server on it gives the runs' documents and files as the original does, and a second
    backup copies only the files added since."""
    config = sim_config()
    api = await start_app(config)
    runs = [await api.run(gds("chip_top", f"lines={n}")) for n in (10, 2000)]
    for run in runs:
        assert (await api.wait(run, 60))["Status"] == "completed"

    async def keep_uploading() -> int:
        n = 0
        while not stop.is_set():
            await api.upload(gds("chip_top", f"noise {n}"), f"more-{n}.gds")
            n += 1
            await asyncio.sleep(0)
        return n

    stop = asyncio.Event()
    writer = asyncio.create_task(keep_uploading())
    dest = tmp_path / "backup"
    first = await backup(config, dest)
    stop.set()
    during = await writer
    assert during > 0  # the log changed while it was copied
    assert first.missing == [] and first.copied > 0 and first.kept == 0

    report = await verify(_config_of(dest))
    assert report.ok, report.lines
    # Served with the same config but for its folder: documents hold config-made parts too.
    same = attrs.evolve(config, server=attrs.evolve(config.server, storage_path=dest))
    copy = await aiohttp_client(create_app(same, run_containers=False))
    for run in runs:
        original = await api.get(run)
        r = await copy.get(f"/api/v1/prechecks/{run}")
        assert r.status == 200
        assert await r.json() == original
        out = await copy.get(f"/api/v1/prechecks/{run}/output")
        body = await out.read()
        assert hashlib.sha256(body).hexdigest() == original["Output"]["Checksums"]["sha256"]
        logs = await (await copy.get(f"/api/v1/prechecks/{run}/logs?limit=10000")).json()
        assert logs == await api.logs(run, limit="10000")

    # The next night: only what came since is copied; the rest is known by its checksum.
    second = await backup(config, dest)
    assert second.position > first.position
    assert second.kept == first.copied
    assert 0 < second.copied <= during + 1
    # The operator's command: the same, from its own event loop.
    argv = ["backup", str(dest), "--config", str(_write(config, tmp_path))]
    assert await asyncio.to_thread(main, argv) == 0


def _write(config: Config, tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nstorage_path = "{config.server.storage_path}"\n', encoding="utf-8")
    return path


def test_a_backup_inside_the_folder_it_copies_is_refused(tmp_path: Path) -> None:
    """DEST inside the storage folder would copy itself: refused, with nothing written."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "precheck.db").write_bytes(b"")
    with pytest.raises(Exception, match="outside the storage folder"):
        asyncio.run(backup(_config_of(data), data / "backup"))
    assert not (data / "backup").exists()
