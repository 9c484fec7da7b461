"""A crash between a deleting event and removing its files leaves nothing for ever: orphaned
run folders and output lines are removed at the next start."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.web import keys


async def test_orphaned_run_folders_and_lines_are_removed_at_start(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    """Files and lines of a run the log does not hold are gone after a restart; an upload's
    and a live run's stay."""
    first = await aiohttp_client(create_app(config, run_containers=False))
    await first.close()  # the storage folder and its database exist now
    root: Path = config.server.storage_path
    orphan = root / "runs" / "gone-run"
    (orphan / "run" / "reports").mkdir(parents=True)
    (orphan / "run" / "reports" / "drc.json").write_text("{}")
    with closing(sqlite3.connect(root / "precheck.db")) as db, db:
        db.executemany(
            "INSERT INTO output_blocks VALUES (?, ?, ?, ?, ?, ?)",
            [("gone-run", n, n, "stdout", "2026-01-01T00:00:00Z x", 0.0) for n in (1, 2)],
        )
    second = await aiohttp_client(create_app(config, run_containers=False))
    assert not orphan.exists()
    assert await second.app[keys.OUTPUT_LINES].run_ids() == set()
    with closing(sqlite3.connect(root / "precheck.db")) as db:
        assert db.execute("SELECT count(*) FROM output_blocks").fetchone() == (0,)
