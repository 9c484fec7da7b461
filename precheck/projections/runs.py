"""Read model of precheck runs, built only from events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

import attrs

from precheck.domain.status import ACTIVE, ENDED, RunStatus
from precheck.events.store import RecordedEvent
from precheck.events.types import (
    FindingsCount,
    NotificationFailed,
    NotificationRedeliveryRequested,
    NotificationSent,
    OutputFile,
    Preflight,
    RecheckPlanned,
    RunCancelled,
    RunCancelRequested,
    RunDeleted,
    RunExited,
    RunFailedToStart,
    RunFilesPruned,
    RunFinished,
    RunFinishFailed,
    RunOutputsStored,
    RunProgressed,
    RunQueued,
    RunResourcesPeaked,
    RunRetried,
    RunReused,
    RunStarted,
    RunTimedOut,
    SkippedFile,
    Subscription,
)
from precheck.projections._records import replacer, updater


@attrs.frozen
class Attempt:
    """An earlier attempt of a run, ended in a system failure and retried."""

    number: int
    engine: str
    started_at: datetime | None
    finished_at: datetime
    exit_code: int
    error: str
    after_line: int  # its output lines follow this line number
    image_id: str = ""  # the image it ran (empty: it never started)
    image_digest: str = ""
    peak: ResourcePeak | None = None  # its resource samples' peak (None: it had none)


@attrs.frozen
class ResourcePeak:
    """The highest memory (bytes) and CPU (percent of one CPU) of an attempt's samples."""

    memory_bytes: int
    limit_bytes: int
    cpu_percent: float
    samples: int


@attrs.frozen
class Progress:
    """The precheck step a run is on: `step` of `total`, `name` like `KLayout.CheckSize`."""

    step: int
    total: int
    name: str


@attrs.frozen
class InputFile:
    """The layout a run checks, as it was uploaded."""

    name: str
    filename: str
    format: str
    size: int
    sha256: str


@attrs.frozen
class RunResult:
    """How a finished run ended, beyond its status and exit code."""

    passed: bool
    failed_step: str | None = None
    classification: str | None = None
    deferred_errors: dict[str, int] = attrs.field(factory=dict)
    metrics: dict[str, float | int | str | None] = attrs.field(factory=dict)
    oom_killed: bool = False
    detail: str = ""  # the flow's own exception, when the error gives the tool's words
    findings: tuple[FindingsCount, ...] = ()  # per report read at copy-out
    warnings: tuple[str, ...] = ()  # the flow's first WARNING lines
    warning_count: int = 0
    errors: tuple[str, ...] = ()  # the flow's first ERROR lines
    error_count: int = 0


@attrs.frozen
class Pruning:
    """One retention removal of a final run's files (`run.files-pruned`)."""

    kinds: tuple[str, ...]
    files: int
    bytes_freed: int
    reason: str
    at: datetime


@attrs.frozen(slots=False)  # a dict, so a replay copies it in C (see `_records.updater`)
class RunRecord:
    """One run. `position` is the global position of the last event that changed it."""

    id: str
    upload_id: str
    top_cell: str
    die_id: str
    slot: str
    cob: bool
    input: InputFile
    created: datetime
    status: RunStatus = RunStatus.QUEUED
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    error: str = ""
    container_id: str = ""
    image: str = ""
    image_digest: str = ""  # the repo digest the attempt under way runs (empty: none known)
    image_id: str = ""  # the id of that image
    engine: str = ""  # the configured engine its container runs on (from `RunStarted`)
    attempt: int = 1  # the attempt under way (or the last); earlier ones in `attempts`
    attempts: tuple[Attempt, ...] = ()  # earlier attempts, ended in system failures, retried
    after_line: int = 0  # the output lines of the current attempt follow this line number
    progress: Progress | None = None
    cancel_requested: bool = False
    timed_out: bool = False
    result: RunResult | None = None
    output: OutputFile | None = None
    files: tuple[OutputFile, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()  # of the run folder, not copied out (the first)
    skipped_more: int = 0  # how many more were not copied out
    version: int = 0
    position: int = 0
    settled: bool = False  # ended, and nothing more will be recorded (outputs stored)
    queued_position: int = 0  # where it joined the queue: its place in FIFO order
    dequeued_position: int | None = None  # where it left the queue (started or ended)
    preflight: Preflight | None = None  # what pre-flight said when it was queued
    owner: str = ""  # the actor that queued it (an API key's name, `anonymous`, `cli`)
    notify: tuple[Subscription, ...] = ()  # who to tell when it ends
    recheck_of: str = ""  # the run it re-checks with the image resolved anew
    output_format: str = ""  # `gds` or `oas`; empty (runs queued before it): the input's
    reused_from: str = ""  # the run it was answered from (`run.reused`), else empty
    reused_across_owners: bool = False  # ... a run another owner queued: not named to a user
    pruned: tuple[Pruning, ...] = ()  # retention removals of its files, oldest first
    peak: ResourcePeak | None = None  # of the attempt that ended the run (None: no samples)
    reason: str = ""  # `recheck`: queued by the server for a new image; "" for a user's run

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.status in ACTIVE

    def queued_at(self, position: int) -> bool:
        """Was the run waiting in the queue just after event `position`?"""
        return self.queued_position <= position and (
            self.dequeued_position is None or self.dequeued_position > position
        )


_update = updater(RunRecord)
_replace_result = replacer(RunResult)


class Runs:
    """Every run, by id, in creation order."""

    EVENTS: ClassVar[frozenset[type]]  # the types `apply` looks at (set below `_CHANGES`)

    def __init__(self) -> None:
        self.by_id: dict[str, RunRecord] = {}

    def get(self, run_id: str) -> RunRecord | None:
        """The run with this id, or None."""
        return self.by_id.get(run_id)

    def apply(self, r: RecordedEvent) -> None:
        """Evolve the state by one event."""
        e: Any = r.event  # dispatched on its type below
        kind = type(e)
        if kind is RunQueued:
            owner = r.metadata.actor
            if e.reason and (of := self.by_id.get(e.recheck_of)) is not None:
                owner = of.owner  # queued by the server, for the owner of the run it re-checks
            self.by_id[e.run_id] = RunRecord(
                e.run_id,
                e.upload_id,
                e.top_cell,
                e.die_id,
                e.slot,
                e.cob,
                InputFile(
                    e.input_name, e.input_filename, e.input_format, e.input_size, e.input_sha256
                ),
                e.at,
                version=r.version,
                position=r.position,
                queued_position=r.position,
                preflight=e.preflight,
                owner=owner,
                notify=e.notify,
                recheck_of=e.recheck_of,
                output_format=e.output_format,
                reason=e.reason,
            )
            return
        change = _CHANGES.get(kind)
        if change is None:
            return
        run = self.by_id.get(e.run_id)
        if run is None:
            return
        if kind is RunDeleted:
            del self.by_id[run.id]
            return
        changes = change(run, e)
        if (
            run.status == RunStatus.QUEUED
            and changes.get("status", RunStatus.QUEUED) != RunStatus.QUEUED
        ):
            changes["dequeued_position"] = r.position
        changes["version"] = r.version
        changes["position"] = r.position
        # One copy per event: copying the record is most of what a replay costs.
        self.by_id[run.id] = _update(run, changes)


def _finished(e: RunFinished) -> dict[str, Any]:
    result = RunResult(
        passed=e.status == RunStatus.COMPLETED,
        failed_step=e.failed_step,
        classification=e.classification,
        deferred_errors=e.deferred_errors,
        metrics=e.metrics,
        oom_killed=e.oom_killed,
    )
    return dict(
        status=RunStatus(e.status),
        finished_at=e.at,
        exit_code=e.exit_code,
        error=e.error,
        output=e.output,
        files=e.files,
        result=result,
        settled=True,
    )


def _exited(e: RunExited) -> dict[str, Any]:
    result = RunResult(
        passed=e.status == RunStatus.COMPLETED,
        classification=e.classification,
        deferred_errors=e.deferred_errors,
        oom_killed=e.oom_killed,
        detail=e.detail,
        warnings=e.warnings,
        warning_count=e.warning_count,
        errors=e.errors,
        error_count=e.error_count,
    )
    # The verdict is known, the outputs not yet stored: not final until `RunOutputsStored`.
    return dict(
        status=RunStatus.FINISHING,
        finished_at=e.finished_at,
        exit_code=e.exit_code,
        error=e.error,
        result=result,
    )


def _stored(run: RunRecord, e: RunOutputsStored) -> dict[str, Any]:
    result = run.result or RunResult(passed=False)
    ended = run.status if run.status in ENDED else None
    return dict(
        status=ended or (RunStatus.COMPLETED if result.passed else RunStatus.FAILED),
        output=e.output,
        files=e.files,
        skipped=e.skipped,
        skipped_more=e.skipped_more,
        settled=True,
        result=_replace_result(
            result, failed_step=e.failed_step, metrics=e.metrics, findings=e.findings
        ),
    )


def _image_of(e: RunStarted) -> dict[str, str]:
    """The image id and repo digest a start recorded. A row from before `image_id` holds one
    of them in `image_digest`: an id (`sha256:...`) when the image had no repo digest."""
    if e.image_id or not e.image_digest.startswith("sha256:"):
        return dict(image_id=e.image_id, image_digest=e.image_digest)
    return dict(image_id=e.image_digest, image_digest="")


def _retried(run: RunRecord, e: RunRetried) -> dict[str, Any]:
    ended = Attempt(
        run.attempt,
        e.engine,
        e.started_at,
        e.finished_at,
        e.exit_code,
        e.reason,
        run.after_line,
        run.image_id,
        run.image_digest,
        run.peak,
    )
    return dict(
        peak=None,
        status=RunStatus.QUEUED,
        started_at=None,
        finished_at=None,
        exit_code=None,
        error="",
        container_id="",
        engine="",
        image_id="",
        image_digest="",
        progress=None,
        timed_out=False,
        result=None,
        attempt=e.attempt,
        attempts=(*run.attempts, ended),
        after_line=e.after_line,
        dequeued_position=None,  # queued again, at its first place
    )


def _reused(e: RunReused) -> dict[str, Any]:
    """A run answered from an earlier one: final at once, with its verdict, files (links of
    its own in its folder) and image; it ran on no engine, in no container."""
    result = RunResult(
        passed=e.status == RunStatus.COMPLETED,
        failed_step=e.failed_step,
        classification=e.classification,
        deferred_errors=e.deferred_errors,
        metrics=e.metrics,
        oom_killed=e.oom_killed,
        detail=e.detail,
        findings=e.findings,
        warnings=e.warnings,
        warning_count=e.warning_count,
        errors=e.errors,
        error_count=e.error_count,
    )
    return dict(
        status=RunStatus(e.status),
        started_at=e.at,
        finished_at=e.at,
        exit_code=e.exit_code,
        error=e.error,
        image=e.image,
        image_id=e.image_id,
        image_digest=e.image_digest,
        result=result,
        output=e.output,
        files=e.files,
        skipped=e.skipped,
        skipped_more=e.skipped_more,
        settled=True,
        reused_from=e.source_run_id,
        reused_across_owners=e.across_owners,
    )


def _finish_failed(run: RunRecord, e: RunFinishFailed) -> dict[str, Any]:
    result = run.result or RunResult(passed=False)
    return dict(
        status=RunStatus.FAILED,
        finished_at=run.finished_at or e.at,
        error=f"the run's end could not be recorded: {e.error}",
        settled=True,
        result=_replace_result(result, passed=False, classification="system"),
    )


def _pruned(run: RunRecord, e: RunFilesPruned) -> dict[str, Any]:
    pruning = Pruning(e.kinds, e.files, e.bytes_freed, e.reason, e.at)
    return dict(pruned=(*run.pruned, pruning))


# The progress records runs share: a flow has few steps, and a replay meets each step once per
# run. Frozen, so sharing one is as good as a copy; bounded, whatever names the log holds.
_PROGRESS: dict[tuple[int, int, str], Progress] = {}


def _progressed(run: RunRecord, e: RunProgressed) -> dict[str, Any]:
    key = (e.step, e.total, e.name)
    progress = _PROGRESS.get(key)
    if progress is None:
        if len(_PROGRESS) >= 4096:
            _PROGRESS.clear()
        progress = _PROGRESS[key] = Progress(*key)
    return dict(progress=progress)


# What each event changes in its run's record (given the record and the event); dispatched on
# the event's type, not a chain of isinstance checks, since a replay runs this for every event.
_CHANGES: dict[type, Callable[[RunRecord, Any], dict[str, Any]]] = {
    RunStarted: lambda run, e: dict(
        status=RunStatus.RUNNING,
        started_at=e.at,
        container_id=e.container_id,
        image=e.image,
        **_image_of(e),
        engine=e.engine,
    ),
    RunProgressed: _progressed,
    RunCancelRequested: lambda run, e: dict(cancel_requested=True),
    RunTimedOut: lambda run, e: dict(timed_out=True),
    RunResourcesPeaked: lambda run, e: dict(
        peak=ResourcePeak(e.memory_bytes, e.limit_bytes, e.cpu_percent, e.samples)
    ),
    RunCancelled: lambda run, e: dict(
        status=RunStatus.CANCELLED,
        finished_at=e.at,
        error="cancelled",
        exit_code=e.exit_code,
        settled=True,
    ),
    RunFailedToStart: lambda run, e: dict(
        status=RunStatus.FAILED,
        finished_at=e.at,
        error=e.error,
        settled=True,
        result=RunResult(passed=False, classification="system"),
    ),
    RunFinished: lambda run, e: _finished(e),
    RunFinishFailed: _finish_failed,
    RunRetried: _retried,
    RunReused: lambda run, e: _reused(e),
    RunExited: lambda run, e: _exited(e),
    RunOutputsStored: _stored,
    RunDeleted: lambda run, e: {},  # removes the record: see `Runs.apply`
    RunFilesPruned: _pruned,
    # In the run's stream: the record keeps its version (for the next command's expectation).
    NotificationSent: lambda run, e: {},
    NotificationFailed: lambda run, e: {},
    NotificationRedeliveryRequested: lambda run, e: {},
    RecheckPlanned: lambda run, e: {},
}

Runs.EVENTS = frozenset({RunQueued, *_CHANGES})
