"""The events a run's end produces, from what Docker, the log and the copy-out found. Pure.

A run ends in two steps: `RunExited` (the verdict, once the container has stopped) and then
`RunOutputsStored` (what was copied out). A cancelled run ends with `RunCancelled` alone. An
attempt that ends in a system failure, with attempts left, is `RunRetried` instead: the run
queues again. A start that fails on Docker's side is such a system failure too: the attempt
ends before it began (`start_failed_events`).
"""

from __future__ import annotations

from datetime import datetime

import attrs

from precheck.domain.status import RunStatus
from precheck.domain.verdict import Ending, OutputFacts, decide_verdict, failed_step
from precheck.events.types import (
    Event,
    FindingsCount,
    OutputFile,
    RunCancelled,
    RunExited,
    RunFailedToStart,
    RunOutputsStored,
    RunResourcesPeaked,
    RunRetried,
    SkippedFile,
)
from precheck.projections.runs import ResourcePeak, RunRecord

GONE = "the container disappeared before it was recorded"
ENGINE_LOST = "engine lost"


@attrs.frozen
class ContainerExit:
    """How Docker saw the container stop; `finished_at` is None when Docker gave no time."""

    exit_code: int
    oom_killed: bool
    finished_at: datetime | None


@attrs.frozen
class CopiedOut:
    """What came out of the container: the output layout (if any), kept files, the step
    folders that completed (they hold `state_out.json`) and the metrics."""

    output: OutputFile | None
    files: tuple[OutputFile, ...]
    completed_folders: frozenset[str]
    metrics: dict[str, float | int | str | None]
    skipped: tuple[SkippedFile, ...] = ()
    skipped_more: int = 0  # files not copied out beyond those `skipped` lists
    findings: tuple[FindingsCount, ...] = ()  # what reading the kept reports found


@attrs.frozen
class Retry:
    """May a system failure be retried: `max_attempts` in all; `last_line` of the log so far."""

    max_attempts: int = 1
    last_line: int = 0


def with_peak(
    run: RunRecord, peak: ResourcePeak | None, events: list[Event], now: datetime
) -> list[Event]:
    """An attempt's end, its resource peak first (so a retry carries it to the attempt it
    ends); nothing more when the end was recorded meanwhile or the attempt had no samples."""
    if not events or peak is None:
        return events
    m = peak
    top = RunResourcesPeaked(
        run.id, run.attempt, m.memory_bytes, m.limit_bytes, m.cpu_percent, m.samples, now
    )
    return [top, *events]


def exit_events(
    run: RunRecord,
    stopped: ContainerExit | None,
    facts: OutputFacts,
    timeout_minutes: float,
    now: datetime,
    retry: Retry = Retry(),
    gone: str = GONE,
) -> list[Event]:
    """The verdict of a run whose container stopped (`stopped` None: it is gone, and `gone`
    says why); a system failure with attempts left is retried instead."""
    if run.status != RunStatus.RUNNING:
        return []  # recorded meanwhile
    if stopped is None:
        ending = Ending(exit_code=-1, docker_error=gone)
    elif run.cancel_requested:
        return [RunCancelled(run.id, now, stopped.exit_code)]
    else:
        ending = Ending(
            exit_code=stopped.exit_code,
            oom_killed=stopped.oom_killed,
            timed_out=run.timed_out,
            timeout_minutes=timeout_minutes,
        )
    verdict = decide_verdict(ending, facts)
    finished_at = stopped.finished_at if stopped is not None else None
    retried = verdict.classification == "system" and not run.cancel_requested
    if retried and run.attempt < retry.max_attempts:
        return [
            RunRetried(
                run.id,
                run.attempt + 1,
                run.engine,
                verdict.error,
                ending.exit_code,
                run.started_at,
                finished_at or now,
                retry.last_line,
                now,
            )
        ]
    return [
        RunExited(
            run.id,
            verdict.status,
            ending.exit_code,
            verdict.error,
            verdict.classification,
            dict(facts.deferred),
            ending.oom_killed,
            finished_at or now,
            now,
            verdict.detail,
            tuple(facts.warnings),
            facts.warning_count,
            tuple(facts.errors),
            facts.error_count,
        )
    ]


def start_failed_events(
    run: RunRecord, engine: str, error: str, now: datetime, retry: Retry = Retry()
) -> list[Event]:
    """A start on `engine` that failed on Docker's side (`error`): with attempts left, the
    next attempt, queued again at the run's place (another engine preferred); else the run
    fails to start."""
    if run.status != RunStatus.QUEUED or run.settled:
        return []  # cancelled or deleted meanwhile
    if run.attempt < retry.max_attempts:
        return [
            RunRetried(run.id, run.attempt + 1, engine, error, -1, None, now, retry.last_line, now)
        ]
    return [RunFailedToStart(run.id, error, now)]


def stored_events(
    run: RunRecord, facts: OutputFacts, copied: CopiedOut | None, now: datetime
) -> list[Event]:
    """What was stored of an exited run (`copied` None: its container was gone)."""
    if run.settled or run.status != RunStatus.FINISHING:
        return []  # recorded meanwhile, or retried: nothing of this attempt is kept
    completed = copied.completed_folders if copied is not None else frozenset()
    failed = run.result is not None and not run.result.passed
    step = failed_step(facts.steps, completed) if failed else None
    if copied is None:
        return [RunOutputsStored(run.id, None, (), {}, step, now)]
    return [
        RunOutputsStored(
            run.id,
            copied.output,
            copied.files,
            copied.metrics,
            step,
            now,
            copied.skipped,
            copied.skipped_more,
            copied.findings,
        )
    ]
