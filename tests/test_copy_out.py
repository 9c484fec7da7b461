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

from precheck.config import DockerConfig
from precheck.events.types import RunOutputsStored
from precheck.runner.container_spec import (
    INPUT_DIR,
    LABEL_INSTANCE,
    container_spec,
    input_entries,
    input_path,
)
from precheck.runner.copy_out import SKIP_READ, Caps, CopyOut, _unread, copy_out
from precheck.runner.engine import Engine
from precheck.runner.tar_stream import Entry, write_tar
from precheck.storage.files import Storage
from precheck.web import keys
from tests.docker_fixtures import StartApp
from tests.factories import given, run_queued, run_started
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


def archive_reads(engine: Engine) -> list[str]:
    """The paths `engine` is asked for archives of, from now on (this instance only)."""
    paths: list[str] = []
    get_archive = engine.get_archive

    async def counted(container_id: str, path: str) -> Any:
        paths.append(path)
        return await get_archive(container_id, path)

    setattr(engine, "get_archive", counted)  # noqa: B010 - on this instance only
    return paths


@pytest.mark.docker
async def test_a_big_file_not_kept_is_not_read_and_the_same_files_are_kept(
    start_app: StartApp, tmp_path: Path
) -> None:
    """The final layout in the run folder (not kept: it is the output) is bigger than
    SKIP_READ: the runs folder takes more than one archive read, and the run keeps the same
    files as a run of a small layout, each on disk with its listed size and sha256."""
    api = await start_app()
    paths = archive_reads(api.app[keys.SUPERVISOR].engine)
    small = await stored(api, await api.run(gds("chip_top")))
    small_reads = len(paths)
    layout = big_layout()
    run = await api.run(layout)
    big = await stored(api, run)
    assert paths[:small_reads] == ["/workspace/runs"], paths  # the run folder and the output
    assert len(paths) - small_reads > 1, paths  # the runs folder's read stopped and went on
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


async def _stopped_run(
    simulator_image: str, instance: str, entries: list[Entry]
) -> tuple[Engine, str]:
    """A container of the simulator run to its end as the server runs it, given `entries`
    (the input archive) before its start."""
    engine = Engine()
    run = given(run_queued(top_cell="chip_top"), run_started()).runs.by_id["r1"]
    spec = container_spec(run, DockerConfig(image=simulator_image), instance)
    container_id = await engine.create(f"precheck-test-{uuid.uuid4().hex[:12]}", spec)
    await engine.put_archive(container_id, "/", write_tar(entries))
    await engine.start(container_id)
    async with asyncio.timeout(60):
        while (state := await engine.inspect(container_id)) and state.running:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    return engine, container_id


@pytest.mark.docker
async def test_a_container_from_before_the_output_link_still_gives_its_output(
    simulator_image: str, docker_instances: set[str], tmp_path: Path
) -> None:
    """A container made before `/output` linked beside the run folder (a real folder there,
    as an upgrade finds one) gives the same files: the output read on its own."""
    instance = uuid.uuid4().hex
    docker_instances.add(instance)
    run = given(run_queued(top_cell="chip_top"), run_started()).runs.by_id["r1"]
    layout = tmp_path / "layout.gds"
    layout.write_bytes(gds("chip_top"))
    old = [
        Entry(INPUT_DIR.lstrip("/")),
        Entry("output"),
        Entry(input_path(run).lstrip("/"), layout),
    ]
    engine, container_id = await _stopped_run(simulator_image, instance, old)
    paths = archive_reads(engine)
    try:
        copied = await copy_out(engine, Storage(tmp_path / "data"), run, container_id)
    finally:
        await engine.close()
    assert paths == ["/workspace/runs", "/output/chip_top.gds"], paths
    assert copied.output is not None and copied.output.path == "output/chip_top.gds"
    assert copied.output.size > 0
    assert any(f.path == "run/flow.log" for f in copied.files), copied.files


@pytest.mark.docker
async def test_an_abandoned_copy_out_leaves_nothing(
    simulator_image: str, docker_instances: set[str], tmp_path: Path
) -> None:
    """Begun while the exit is recorded, a copy-out the exit makes pointless (the run is
    retried) is abandoned: no file of it stays, hidden or named."""
    instance = uuid.uuid4().hex
    docker_instances.add(instance)
    run = given(run_queued(top_cell="chip_top"), run_started()).runs.by_id["r1"]
    layout = tmp_path / "layout.gds"
    layout.write_bytes(gds("chip_top"))
    engine, container_id = await _stopped_run(simulator_image, instance, input_entries(run, layout))
    storage = Storage(tmp_path / "data")
    try:
        copying = CopyOut(engine, storage, run, container_id, Caps())
        await asyncio.sleep(0.5)  # well into the read, or past it
        await copying.abandon()
        done = await CopyOut(engine, storage, run, container_id, Caps()).finish()
    finally:
        await engine.close()
    assert done.output is not None  # the same container still gives everything
    left = sorted(p.name for p in storage.run_dir(run.id).rglob("*") if p.is_file())
    assert left == sorted(Path(f.path).name for f in (done.output, *done.files)), (
        left
    )  # only the finished copy's files: none of the abandoned one's
