"""The copy-out reads only what it keeps: a big file it does not keep ends the archive read
there, and what follows is asked for by its own paths; the files kept and their checksums are
the same as when everything is read."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from precheck.events.types import RunOutputsStored
from precheck.runner.container_spec import LABEL_INSTANCE
from precheck.runner.copy_out import SKIP_READ, _unread
from precheck.runner.engine import Engine
from precheck.web import keys
from tests.docker_fixtures import StartApp
from tests.layouts import gds


def test_what_is_not_read_yet_is_asked_for_by_the_fewest_paths() -> None:
    listing = {
        "r",
        "r/1-a",
        "r/1-a/big.gds",
        "r/1-a/log.txt",
        "r/1-a/reports",
        "r/1-a/reports/x.rpt",
        "r/2-b",
        "r/2-b/c.txt",
        "r/final",
        "r/final/gds",
        "r/final/gds/top.gds",
        "r/final/metrics.json",
    }
    # The read stopped at r/1-a/big.gds, the first file of the archive.
    assert _unread(listing, {"r/1-a/big.gds"}, "r") == [
        "r/1-a/log.txt",
        "r/1-a/reports",
        "r/2-b",
        "r/final",
    ]
    # The archive of r/final stopped at its layout: only its other file is left.
    done = {"r/1-a/big.gds", "r/1-a/log.txt", "r/1-a/reports/x.rpt", "r/2-b/c.txt"}
    assert _unread(listing, done | {"r/final/gds/top.gds"}, "r/final") == ["r/final/metrics.json"]
    assert _unread(listing, done | {"r/final/gds/top.gds", "r/final/metrics.json"}, "r") == []


def test_a_list_that_cannot_be_matched_means_reading_past() -> None:
    assert _unread({"r", "r/\ufffd.txt", "r/big"}, {"r/big"}, "r") is None  # not UTF-8
    assert _unread(set(), {"r/big"}, "r") is None  # no list (the container is gone)


def big_layout() -> bytes:
    """A valid layout larger than SKIP_READ (long texts the simulator ignores)."""
    layout = gds("chip_top", *(f"pad={'x' * 32000}" for _ in range(SKIP_READ // 32000 + 8)))
    assert len(layout) > SKIP_READ
    return layout


async def stored(api: Any, run: str) -> RunOutputsStored:
    ended = await api.wait(run, 90)
    assert ended["Status"] == "completed", ended
    [r] = await api.events("run.outputs-stored", run)
    assert isinstance(r.event, RunOutputsStored)
    return r.event


@pytest.mark.docker
async def test_a_big_file_not_kept_is_not_read_and_the_same_files_are_kept(
    start_app: StartApp, tmp_path: Path
) -> None:
    """The final layout in the run folder (not kept: it is the output) is bigger than
    SKIP_READ: the run folder takes more than one archive read, and the run keeps the same
    files as a run of a small layout, each on disk with its listed size and sha256."""
    api = await start_app()
    engine = api.app[keys.SUPERVISOR].engine
    paths: list[str] = []
    get_archive = engine.get_archive

    async def counted(container_id: str, path: str) -> Any:
        paths.append(path)
        return await get_archive(container_id, path)

    setattr(engine, "get_archive", counted)  # noqa: B010 - on this instance only
    small = await stored(api, await api.run(gds("chip_top")))
    small_reads = len(paths)
    layout = big_layout()
    run = await api.run(layout)
    big = await stored(api, run)
    assert small_reads == 2, paths  # the run folder and the output, one read each
    assert len(paths) - small_reads > 2, paths  # the run folder's read stopped and went on
    assert not any("/final/gds" in p for p in paths), paths  # the final layout is never asked
    assert [f.path for f in big.files] == [f.path for f in small.files]
    assert big.output is not None and big.output.size == len(layout)
    assert big.output.sha256 == hashlib.sha256(layout).hexdigest()
    run_dir = api.app[keys.STORAGE].run_dir(run)
    for f in (big.output, *big.files):
        data = (run_dir / f.path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f.size, f.sha256), f.path
    on_disk = sorted(
        p.relative_to(run_dir).as_posix()
        for p in run_dir.rglob("*")
        if p.is_file() and p.name != "findings.json"
    )
    assert on_disk == sorted(f.path for f in (big.output, *big.files))


@pytest.mark.docker
async def test_an_archive_read_stopped_early_lets_the_next_request_through(
    simulator_image: str, docker_instances: set[str]
) -> None:
    """An archive left half read frees its container at once: the engine would otherwise
    hold it to send the rest, and the next request on it would wait."""
    engine = Engine()
    instance = uuid.uuid4().hex
    docker_instances.add(instance)  # removed after the test whatever happens
    spec = {
        "Image": simulator_image,
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["mkdir -p /output && head -c 268435456 /dev/zero > /output/big"],
        "Labels": {LABEL_INSTANCE: instance},
    }
    container_id = await engine.create(f"precheck-test-{uuid.uuid4().hex[:12]}", spec)
    try:
        await engine.start(container_id)
        async with asyncio.timeout(60):
            while (state := await engine.inspect(container_id)) and state.running:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        tar = await engine.get_archive(container_id, "/output/big")
        assert isinstance(tar, AsyncGenerator)
        await anext(tar)
        await tar.aclose()
        async with asyncio.timeout(10):
            assert await engine.inspect(container_id) is not None
            again = await engine.get_archive(container_id, "/output")
            assert isinstance(again, AsyncGenerator)
            await again.aclose()
    finally:
        await engine.close()  # its connections too, a half-read one with them
        cleanup = Engine()
        try:
            await cleanup.remove(container_id)
        finally:
            await cleanup.close()
