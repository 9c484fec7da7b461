"""Start-up deletes only what the log retired: a crash between a deleting event and removing
its files leaves nothing for ever, while folders and output lines the log never knew are kept
(moved aside, reported), and a missing or empty log beside files refuses to start."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.events.store import EventStore
from precheck.events.types import Metadata, RunDeleted
from precheck.storage.files import StorageRefused
from precheck.web import keys

LINE = "2026-01-01T00:00:00Z x"


def add_run_folder(root: Path, run_id: str) -> Path:
    folder = root / "runs" / run_id
    (folder / "run" / "reports").mkdir(parents=True)
    (folder / "run" / "reports" / "drc.json").write_text("{}")
    return folder


def add_lines(root: Path, run_id: str) -> None:
    with closing(sqlite3.connect(root / "precheck.db")) as db, db:
        db.executemany(
            "INSERT INTO output_blocks VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, n, n, "stdout", LINE, 0.0) for n in (1, 2)],
        )


def line_runs(root: Path) -> set[str]:
    with closing(sqlite3.connect(root / "precheck.db")) as db:
        return {r for (r,) in db.execute("SELECT DISTINCT run_id FROM output_blocks")}


async def test_files_of_a_deleted_run_are_removed_at_start(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    """A run the log shows deleted (`run.deleted`) whose folder and lines are still there:
    both are gone after a restart."""
    first = await aiohttp_client(create_app(config, run_containers=False))
    await first.close()  # the storage folder and its database exist now
    root: Path = config.server.storage_path
    store = await EventStore.open(root / "precheck.db")
    try:
        now = datetime.now(UTC)
        await store.append([RunDeleted("gone-run", "some-upload", "test", now)], Metadata("test"))
    finally:
        await store.close()
    folder = add_run_folder(root, "gone-run")
    add_lines(root, "gone-run")
    second = await aiohttp_client(create_app(config, run_containers=False))
    assert not folder.exists()
    assert await second.app[keys.OUTPUT_LINES].run_ids() == set()
    assert line_runs(root) == set()
    assert not (root / "orphans").exists()


async def test_folders_and_lines_the_log_never_knew_are_kept(
    aiohttp_client: AiohttpClient, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    """A run folder and an upload folder the log never mentions are moved to `orphans/`
    whole and reported; output lines of a run it never mentions stay."""
    first = await aiohttp_client(create_app(config, run_containers=False))
    await first.close()
    root: Path = config.server.storage_path
    add_run_folder(root, "unknown-run")
    (root / "uploads" / "unknown-upload").mkdir()
    (root / "uploads" / "unknown-upload" / "input.gds").write_bytes(b"layout")
    add_lines(root, "unknown-run")
    await aiohttp_client(create_app(config, run_containers=False))
    assert not (root / "runs" / "unknown-run").exists()
    moved = root / "orphans" / "runs" / "unknown-run" / "run" / "reports" / "drc.json"
    assert moved.read_text() == "{}"
    upload = root / "orphans" / "uploads" / "unknown-upload" / "input.gds"
    assert upload.read_bytes() == b"layout"
    assert line_runs(root) == {"unknown-run"}
    said = caplog.text
    assert "orphans/runs/unknown-run" in said and "orphans/uploads/unknown-upload" in said
    assert "output lines of 1 runs" in said


@pytest.mark.parametrize("log", ["missing", "empty"])
async def test_a_missing_or_empty_log_beside_files_refuses_to_start(
    aiohttp_client: AiohttpClient, config: Config, log: str
) -> None:
    """With `precheck.db` moved away (or replaced by an empty one) while uploads and runs
    hold folders, the server refuses to start, naming the folders and the way out, and
    deletes nothing."""
    first = await aiohttp_client(create_app(config, run_containers=False))
    await first.close()
    root: Path = config.server.storage_path
    run = add_run_folder(root, "a-run")
    (root / "uploads" / "an-upload").mkdir()
    (root / "precheck.db").rename(root.parent / "precheck.db.moved")
    if log == "empty":
        await (await EventStore.open(root / "precheck.db")).close()
    with pytest.raises(StorageRefused) as refused:
        await aiohttp_client(create_app(config, run_containers=False))
    message = str(refused.value)
    assert "precheck.db" in message and "uploads/ has 1" in message
    assert "runs/ has 1" in message and "backup" in message, message
    assert (run / "run" / "reports" / "drc.json").exists()
    assert (root / "uploads" / "an-upload").is_dir()
    assert not (root / "orphans").exists()
    assert (root / "precheck.db").exists() == (log == "empty"), "no new log was made"
