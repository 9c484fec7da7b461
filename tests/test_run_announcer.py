"""The server's own output tells the operator each change in a run's life."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest

from precheck.events.store import EventStore
from precheck.events.types import Metadata, OutputFile, RunFailedToStart
from precheck.projections import Projections
from precheck.service.run_announcer import RunAnnouncer
from tests.factories import SUPERVISOR, T0, run_exited, run_outputs_stored, run_queued, run_started


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
        api = Metadata("alice", "127.0.0.1")
        await store.append([run_queued("r1", top_cell="chip_top")], api)
        await store.append([run_started("r1", container_id="c" * 64, image="sim:1")], SUPERVISOR)
        stopped = T0 + timedelta(seconds=90)
        exited = run_exited(
            "r1", "failed", error="deferred errors: 3 DRC", classification="design", at=stopped
        )
        await store.append([exited], SUPERVISOR)
        output = OutputFile("output/chip_top.gds", 1, "a" * 64)
        stored = run_outputs_stored("r1", output=output, failed_step="Checker.DRC", at=stopped)
        await store.append([stored], SUPERVISOR)
        await store.append([run_queued("r2", top_cell="chip_top")], api)
        await store.append([RunFailedToStart("r2", "Docker: no such image", T0)], SUPERVISOR)
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
