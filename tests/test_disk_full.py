"""A full disk never makes a run final without its files, nor leaves half a file: the copy-out
fails, is tried again with backoff, and the run ends as a system failure; an upload fails whole.

The folders live on small memory file systems mounted for the tests (needs root).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.events.types import RunFinishFailed
from precheck.web import keys
from tests.docker_fixtures import StartApp
from tests.layouts import gds
from tests.small_fs import small_fs


@pytest.fixture
def small_runs_folder(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path/data/runs` on a 1 MiB memory file system, unmounted afterwards."""
    with small_fs(tmp_path / "data" / "runs", "1m") as runs:
        yield runs


def big_layout() -> bytes:
    """A valid layout of about 2 MiB (long texts the simulator ignores), so that its copy as
    the output layout does not fit in the run folders."""
    return gds("chip_top", *(f"pad={'x' * 32000}" for _ in range(64)))


@pytest.mark.docker
async def test_a_full_disk_at_copy_out_fails_the_run_as_a_system_failure(
    start_app: StartApp, sim_config: Callable[..., Config], small_runs_folder: Path
) -> None:
    """The output layout cannot be stored: the run is not `completed` but `failed` (system)
    after its tries, and its folder holds no file, partial or whole."""
    api = await start_app(sim_config())
    api.app[keys.SUPERVISOR].retry_base = 0.05  # quick backoff for tests
    run = await api.run(big_layout())
    ended = await api.wait(run, 90)
    assert ended["Status"] == "failed", ended
    doc = await api.get(run)
    assert doc["Result"]["Classification"] == "system", doc["Result"]
    assert "could not be recorded" in doc["State"]["Error"], doc["State"]
    assert doc["Output"]["Available"] is False
    [gave_up] = await api.events("run.finish-failed", run)
    assert isinstance(gave_up.event, RunFinishFailed)
    assert "No space left" in gave_up.event.error, gave_up.event
    left = [p for p in (small_runs_folder / run).rglob("*") if p.is_file()]
    assert left == [], left


@pytest.fixture
def small_tmp_folder(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path/data/tmp` (where uploads land first) on a 1 MiB memory file system."""
    with small_fs(tmp_path / "data" / "tmp", "1m") as folder:
        yield folder


async def test_an_upload_that_fills_the_disk_leaves_no_partial_file(
    aiohttp_client: AiohttpClient, config: Config, small_tmp_folder: Path
) -> None:
    """An upload a little larger than the free space fails, and nothing of it stays in `tmp/`:
    the disk fills exactly, so the last bytes fail only when the file is flushed and closed."""
    client = await aiohttp_client(create_app(config, run_containers=False))
    layout = gds("chip_top")
    body = layout + b"\0" * ((1 << 20) + 100 - len(layout))
    form = aiohttp.FormData()
    form.add_field("file", body, filename="big.gds")
    r = await client.post("/api/v1/uploads", data=form)
    assert r.status >= 400, await r.text()
    assert list(small_tmp_folder.iterdir()) == []  # noqa: ASYNC240
