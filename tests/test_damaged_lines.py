"""A damaged output-line table stops start-up with one clear message and the way out, not a
traceback, and changes nothing."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.storage.files import StorageRefused


def damage_output_lines(db_path: Path) -> None:
    """Fill the pages of the output-line table (and its index) with junk."""
    with closing(sqlite3.connect(db_path)) as db:
        with db:
            db.executemany(
                "INSERT INTO output_blocks VALUES (?, ?, ?, ?, ?, ?)",
                [("some-run", n, n, "stdout", "2026-01-01T00:00:00Z x", 0.0) for n in (1, 2)],
            )
        page = db.execute("PRAGMA page_size").fetchone()[0]
        roots = [
            r
            for (r,) in db.execute(
                "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'output_blocks'"
            )
        ]
    with db_path.open("r+b") as f:
        for root in roots:
            f.seek((root - 1) * page)
            f.write(b"\xa5" * page)


async def test_a_damaged_output_line_table_refuses_to_start_with_the_way_out(
    aiohttp_client: AiohttpClient, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """The app refuses (`StorageRefused`, which the CLI prints as one line) with a message
    naming the file, `verify` and a restore, and leaves the file as it was."""
    first = await aiohttp_client(create_app(config, run_containers=False))
    await first.close()
    db_path = config.server.storage_path / "precheck.db"
    damage_output_lines(db_path)
    before = db_path.read_bytes()
    with pytest.raises(StorageRefused) as refused:
        await aiohttp_client(create_app(config, run_containers=False))
    message = str(refused.value)
    assert str(db_path) in message and "output lines" in message, message
    assert "precheck-server verify" in message and "backup" in message, message
    assert db_path.read_bytes() == before, "nothing was changed"
