"""The server's own output tells the operator each change in a run's life."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from precheck.events.store import EventStore
from precheck.events.types import (
    Metadata,
    OutputFile,
    RunExited,
    RunFailedToStart,
    RunOutputsStored,
    RunQueued,
    RunStarted,
)
from precheck.projections import Projections
from precheck.service.run_announcer import RunAnnouncer

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _queued(run_id: str) -> RunQueued:
    return RunQueued(
        run_id, "u1", "chip_top", "AB12CD34", "1x1", False, "chip.gds", "input.gds", "gds",
        10, "0" * 64, T0,
    )  # fmt: skip


async def test_each_change_of_a_run_is_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Queued (by whom), started (container), ended (verdict, duration), stored, failed start."""
    store = await EventStore.open(tmp_path / "precheck.db")
    try:
        state = await Projections.replay(store)
        state.attach(store)
        store.add_listener(RunAnnouncer(state).on_event)
        caplog.set_level(logging.INFO, logger="precheck.runs")
        api, runner = Metadata("alice", "127.0.0.1"), Metadata("supervisor")
        await store.append([_queued("r1")], api)
        await store.append([RunStarted("r1", "c" * 64, "sim:1", "sha256:x", T0)], runner)
        stopped = T0 + timedelta(seconds=90)
        exited = RunExited("r1", "failed", 1, "deferred errors: 3 DRC", "design", {}, False,
                           stopped, stopped)  # fmt: skip
        await store.append([exited], runner)
        stored = RunOutputsStored(
            "r1", OutputFile("output/chip_top.gds", 1, "a" * 64), (), {}, "Checker.DRC", stopped
        )
        await store.append([stored], runner)
        await store.append([_queued("r2")], api)
        await store.append([RunFailedToStart("r2", "Docker: no such image", T0)], runner)
    finally:
        await store.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "precheck.runs"]
    assert lines == [
        "run r1 queued by alice: chip.gds, top cell chip_top, slot 1x1 (1 in the queue)",
        "run r1 started in container cccccccccccc (sim:1)",
        "run r1 ended failed (design failure: deferred errors: 3 DRC), exit code 1, after 90.0 s",
        "run r1 outputs stored: output layout and 0 files; failed step Checker.DRC",
        "run r2 queued by alice: chip.gds, top cell chip_top, slot 1x1 (1 in the queue)",
        "run r2 failed to start: Docker: no such image",
    ]
    assert [r.levelname for r in caplog.records if r.name == "precheck.runs"][-1] == "WARNING"
