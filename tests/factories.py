"""Events as the tests build them: one upload `u1` of `chip.gds` and its run `r1`, at `T0`.

Each factory fills every field with a plain value; keyword overrides change what a test cares
about (`run_queued("r2", top_cell="chip_top")`, `run_exited(status="failed", error="...")`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from precheck.domain.status import RunStatus
from precheck.events.store import RecordedEvent
from precheck.events.types import (
    TAGS,
    Event,
    Metadata,
    RunExited,
    RunFinished,
    RunOutputsStored,
    RunQueued,
    RunStarted,
    UploadReceived,
    stream_of,
)
from precheck.projections import Projections
from precheck.projections.runs import InputFile, RunRecord

T0 = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
EXPIRY = timedelta(hours=1)
SUPERVISOR = Metadata("supervisor")


def upload_received(
    upload_id: str = "u1", *, at: datetime = T0, **overrides: Any
) -> UploadReceived:
    """Upload `upload_id` of `chip.gds` (4096 bytes) arrived at `at`; it expires an hour later."""
    event = UploadReceived(
        upload_id, "chip.gds", "layout.gds", "gds", 4096, "cd" * 32, at, at + EXPIRY
    )
    return attrs.evolve(event, **overrides)


def run_queued(
    run_id: str = "r1", upload_id: str = "u1", *, at: datetime = T0, **overrides: Any
) -> RunQueued:
    """Run `run_id` of the default upload's file, top cell `TOP` in slot 1x1, GDS out, joined
    the queue."""
    event = RunQueued(
        run_id, upload_id, "TOP", "ABCD1234", "1x1", False, "chip.gds", "layout.gds", "gds", 4096,
        "cd" * 32, at, output_format="gds",
    )  # fmt: skip
    return attrs.evolve(event, **overrides)


def run_started(run_id: str = "r1", *, at: datetime = T0, **overrides: Any) -> RunStarted:
    """Run `run_id` got its container `container-<run_id>` of image `precheck:latest`."""
    event = RunStarted(run_id, f"container-{run_id}", "precheck:latest", "sha256:00", at)
    return attrs.evolve(event, **overrides)


def run_exited(
    run_id: str = "r1", status: str = "completed", *, at: datetime = T0, **overrides: Any
) -> RunExited:
    """Run `run_id`'s container stopped at `at` with `status` (exit code 0, or 1 on failure)."""
    code = 0 if status == "completed" else 1
    event = RunExited(run_id, status, code, "", None, {}, False, at, at)
    return attrs.evolve(event, **overrides)


def run_outputs_stored(
    run_id: str = "r1", *, at: datetime = T0, **overrides: Any
) -> RunOutputsStored:
    """Run `run_id`'s outputs were stored at `at`: no output layout, no files, no metrics."""
    event = RunOutputsStored(run_id, None, (), {}, None, at)
    return attrs.evolve(event, **overrides)


def run_finished(
    run_id: str = "r1", status: str = "completed", *, at: datetime = T0, **overrides: Any
) -> RunFinished:
    """Run `run_id` ended with `status` in one event, as earlier versions wrote: no outputs."""
    code = 0 if status == "completed" else 1
    event = RunFinished(run_id, status, code, "", None, None, {}, None, (), {}, False, at)
    return attrs.evolve(event, **overrides)


def given(*events: Event) -> Projections:
    """Read models built from `events`, numbered as the store would number them."""
    state = Projections()
    versions: dict[str, int] = {}
    for position, e in enumerate(events, start=1):
        stream = stream_of(e)
        versions[stream] = versions.get(stream, 0) + 1
        state.apply(
            RecordedEvent(
                position, stream, versions[stream], e, Metadata("test"), T0, TAGS[type(e)], ""
            )
        )
    return state


def running_record(queued_at: datetime = T0, **changes: Any) -> RunRecord:
    """A running run's record, for pure tests: upload `uuu...`'s GDS file, top cell
    `chip_top`, slot 1x1, container `ccc...`; `changes` set other fields."""
    run = RunRecord(
        "r" * 32,
        "u" * 32,
        "chip_top",
        "AB12CD34",
        "1x1",
        False,
        InputFile("chip.gds", "input.gds", "gds", 100, "0" * 64),
        queued_at,
        status=RunStatus.RUNNING,
        container_id="c" * 64,
    )
    return attrs.evolve(run, **changes)
