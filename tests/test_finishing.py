"""Final means final: between the container's exit and its outputs being stored a run is
`finishing`; only then `completed` or `failed`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from precheck.config import parse_config
from precheck.domain.status import ENDED, RunStatus
from precheck.events.store import EventStore
from precheck.events.types import OutputFile, RunFailedToStart
from precheck.projections import Projections
from precheck.web.render import run_document
from tests.factories import SUPERVISOR, T0, run_exited, run_outputs_stored, run_queued, run_started

CONFIG = parse_config({})


async def _state(tmp_path: Path) -> tuple[EventStore, Projections]:
    store = await EventStore.open(tmp_path / "precheck.db")
    state = await Projections.replay(store)
    state.attach(store)
    return store, state


async def test_a_passing_run_is_finishing_until_its_outputs_are_stored(tmp_path: Path) -> None:
    """After the exit: `finishing`, not running, exit code and verdict shown, no output yet;
    after the outputs: `completed` with everything."""
    store, state = await _state(tmp_path)
    try:
        stopped = T0 + timedelta(minutes=5)
        await store.append([run_queued("r1")], SUPERVISOR)
        await store.append([run_started("r1")], SUPERVISOR)
        exited = run_exited("r1", at=stopped)
        await store.append([exited], SUPERVISOR)
        doc = run_document(state.runs.by_id["r1"], state, CONFIG)
        assert doc["State"]["Status"] == "finishing"
        assert doc["State"]["Running"] is False
        assert doc["State"]["ExitCode"] == 0
        assert doc["Result"]["Passed"] is True
        assert doc["Output"]["Available"] is False
        assert state.runs.by_id["r1"].status not in ENDED
        output = OutputFile("output/chip_top.gds", 10, "a" * 64)
        await store.append(
            [run_outputs_stored("r1", output=output, metrics={"cells": 1}, at=stopped)], SUPERVISOR
        )
        doc = run_document(state.runs.by_id["r1"], state, CONFIG)
        assert doc["State"]["Status"] == "completed"
        assert doc["Output"]["Available"] is True
        assert doc["Result"]["Metrics"] == {"cells": 1}
        # A replay of the same log gives the same documents.
        replayed = await Projections.replay(store)
        assert run_document(replayed.runs.by_id["r1"], replayed, CONFIG) == doc
    finally:
        await store.close()


async def test_a_failed_run_becomes_failed_with_its_step_only_when_stored(tmp_path: Path) -> None:
    """A failed exit is `finishing` first; `failed` with its failed step once stored."""
    store, state = await _state(tmp_path)
    try:
        await store.append([run_queued("r1")], SUPERVISOR)
        await store.append([run_started("r1")], SUPERVISOR)
        exited = run_exited("r1", "failed", error="the precheck failed: x", classification="design")
        await store.append([exited], SUPERVISOR)
        assert state.runs.by_id["r1"].status == RunStatus.FINISHING
        stored = run_outputs_stored("r1", failed_step="KLayout.CheckSize")
        await store.append([stored], SUPERVISOR)
        run = state.runs.by_id["r1"]
        assert (run.status, run.settled) == (RunStatus.FAILED, True)
        assert run.result is not None and run.result.failed_step == "KLayout.CheckSize"
    finally:
        await store.close()


async def test_a_run_that_never_started_shows_exit_code_minus_one(tmp_path: Path) -> None:
    """A run that failed to start has ExitCode -1 in its document, as `/wait` says; a queued
    one 0, as Docker shows a container not yet run."""
    store, state = await _state(tmp_path)
    try:
        await store.append([run_queued("r1"), run_queued("r2")], SUPERVISOR)
        assert run_document(state.runs.by_id["r2"], state, CONFIG)["State"]["ExitCode"] == 0
        await store.append([RunFailedToStart("r1", "Docker: no such image", T0)], SUPERVISOR)
        doc = run_document(state.runs.by_id["r1"], state, CONFIG)
        assert (doc["State"]["Status"], doc["State"]["ExitCode"]) == ("failed", -1)
    finally:
        await store.close()
