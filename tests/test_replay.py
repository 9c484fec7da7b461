"""Replaying the whole log into empty read models gives exactly the live server's state."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from precheck.domain.commands import CancelRun, DeleteUpload, ExpireUploads, QueueRun, ReceiveUpload
from precheck.events.store import EventStore
from precheck.events.types import (
    Metadata,
    OutputFile,
    RunCancelled,
    RunFailedToStart,
    RunProgressed,
)
from precheck.projections import Projections
from precheck.service.command_handler import CommandHandler
from precheck.storage.files import Storage
from tests.factories import SUPERVISOR, T0, run_finished, run_started

CLIENT = Metadata("ci-key", "10.0.0.7", "req-1")


def assert_same_state(replayed: Projections, live: Projections) -> None:
    """Every read model of `replayed` equals the one of `live`."""
    assert replayed.position == live.position
    assert replayed.uploads.by_id == live.uploads.by_id
    assert replayed.runs.by_id == live.runs.by_id
    assert replayed.queue.queued() == live.queue.queued()
    assert replayed.queue.running == live.queue.running


async def write_history(handler: CommandHandler) -> None:
    """Uploads, runs in every state, a deletion and an expiry, as the server would write them."""
    store = handler.store

    async def do(command: object) -> None:
        await handler.handle(command, CLIENT)  # type: ignore[arg-type]

    async def supervisor(*events: object) -> None:
        await store.append(events, SUPERVISOR)  # type: ignore[arg-type]

    for i, u in enumerate(("u1", "u2", "u3", "u4")):
        at = T0 + timedelta(minutes=i)
        await do(
            ReceiveUpload(
                u,
                f"{u}.gds",
                "layout.gds",
                "gds",
                100 + i,
                f"{i:064x}",
                at,
                at + timedelta(hours=1),
            )
        )
    for r, u in (
        ("r1", "u1"),
        ("r2", "u1"),
        ("r3", "u2"),
        ("r4", "u2"),
        ("r5", "u1"),
        ("r6", "u1"),
        ("r7", "u2"),
    ):
        await do(QueueRun(r, u, "TOP", "ABCD1234", "0p5x1", r == "r4", T0 + timedelta(minutes=5)))
    await do(CancelRun("r2", T0 + timedelta(minutes=6)))  # cancelled while queued

    output = OutputFile("output/layout.gds", 10, "ab" * 32)
    await supervisor(run_started("r1"))
    for step in range(1, 17):
        await supervisor(RunProgressed("r1", step, 16, f"Step.{step}", T0))
    metrics = {"density": 0.5, "cells": 3, "note": None}
    await supervisor(run_finished("r1", output=output, files=(output,), metrics=metrics))
    await supervisor(run_started("r3"))
    await do(CancelRun("r3", T0 + timedelta(minutes=7)))  # cancel requested while running
    await do(CancelRun("r3", T0 + timedelta(minutes=7)))  # asked twice: nothing new
    await supervisor(RunCancelled("r3", T0 + timedelta(minutes=8), exit_code=137))
    await supervisor(run_started("r4"))
    await supervisor(RunProgressed("r4", 14, 16, "KLayout.DRC", T0))
    await supervisor(
        run_finished(
            "r4",
            "failed",
            error="KLayout DRC found errors",
            failed_step="Checker.KLayoutDRC",
            classification="design",
            deferred_errors={"KLayout DRC": 4},
        )
    )
    await supervisor(RunFailedToStart("r7", "image missing", T0))
    await supervisor(run_started("r5"))

    await do(DeleteUpload("u3", T0 + timedelta(minutes=10)))  # never used
    await do(
        ReceiveUpload(
            "u5",
            "late.gds",
            "layout.gds",
            "gds",
            9,
            "f" * 64,
            T0 + timedelta(hours=2),
            T0 + timedelta(hours=3),
        )
    )
    # u1 (runs r5 running, r6 queued) and u2 (runs ended) stay as expired; u4 (no runs) goes.
    await do(ExpireUploads(T0 + timedelta(hours=2)))


async def test_replay_equals_live_state_and_survives_reopening(tmp_path: Path) -> None:
    """Replaying the log gives the live read models, before and after reopening the file."""
    storage = Storage(tmp_path / "data")
    storage.prepare()
    store = await EventStore.open(storage.db_path)
    live = Projections()
    live.attach(store)
    try:
        await write_history(CommandHandler(store, live, storage))
        # The history must really hold what the comparison is meant to cover.
        statuses = {r.id: r.status for r in live.runs.by_id.values()}
        assert statuses == {
            "r1": "completed",
            "r2": "cancelled",
            "r3": "cancelled",
            "r4": "failed",
            "r5": "running",
            "r6": "queued",
            "r7": "failed",
        }
        assert {u.id: u.status for u in live.uploads.by_id.values()} == {
            "u1": "expired",
            "u2": "expired",
            "u5": "available",
        }
        assert live.queue.queued() == ["r6"]
        assert live.queue.running == {"r5"}
        assert live.runs.by_id["r1"].progress is not None
        assert live.runs.by_id["r3"].cancel_requested
        assert live.position == store.head

        assert_same_state(await Projections.replay(store), live)
    finally:
        await store.close()

    store = await EventStore.open(storage.db_path)
    try:
        assert store.head == live.position
        assert_same_state(await Projections.replay(store), live)
    finally:
        await store.close()
