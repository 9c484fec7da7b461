"""The events a run's end produces, and the container a run gets: pure, no Docker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from precheck.config import DockerConfig, EngineConfig
from precheck.domain.run_end import (
    GONE,
    ContainerExit,
    CopiedOut,
    Retry,
    exit_events,
    start_failed_events,
    stored_events,
)
from precheck.domain.status import RunStatus
from precheck.domain.verdict import OutputFacts
from precheck.events.types import (
    OutputFile,
    RunCancelled,
    RunExited,
    RunFailedToStart,
    RunRetried,
)
from precheck.projections.runs import RunRecord, RunResult
from precheck.runner.container_spec import (
    LABEL_INSTANCE,
    LABEL_RUN,
    container_name,
    container_spec,
    input_entries,
    instance_filter,
    precheck_argv,
    step_total,
)
from tests.factories import run_outputs_stored, running_record

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
STOPPED = datetime(2026, 11, 26, 11, 59, 58, tzinfo=UTC)
SUCCESS = "Precheck successfully completed."
# What a passed run's log says last: both DRC checkers reported, then the success line.
PASSED = (
    "INFO     Check for Magic DRC errors clear.",
    "INFO     Check for KLayout DRC errors clear.",
    SUCCESS,
)
FAILURE = "Error: The precheck failed with the following exception:"


def _run(**changes: Any) -> RunRecord:
    return running_record(NOW, **changes)


def _facts(*lines: str) -> OutputFacts:
    return OutputFacts().feed_all(lines)


def _step(n: int, name: str, run: RunRecord) -> str:
    folder = f"runs/{run.id}/{n:02d}-{name.lower().replace('.', '-')}"
    return f"[12:00:00] Running '{name}' at '{folder}'..."


def test_exit_0_with_the_success_line_completes() -> None:
    """Exit 0, the checkers' reports and the success line: `completed`, at Docker's stop
    time."""
    [e] = exit_events(_run(), ContainerExit(0, False, STOPPED), _facts(*PASSED), 180, NOW)
    assert isinstance(e, RunExited)
    assert (e.status, e.exit_code, e.classification, e.error) == ("completed", 0, None, "")
    assert (e.finished_at, e.at) == (STOPPED, NOW)


def test_a_design_failure_is_recorded_with_its_reason() -> None:
    """Exit 1 after the failure line: `failed`, design, with the reason that followed."""
    facts = _facts(FAILURE, "The top cell 'x' was not found")
    [e] = exit_events(_run(), ContainerExit(1, False, STOPPED), facts, 180, NOW)
    assert isinstance(e, RunExited)
    assert (e.status, e.classification) == ("failed", "design")
    assert "The top cell 'x' was not found" in e.error


def test_oom_and_timeout_are_system_failures() -> None:
    """An OOM kill and a timed-out run fail as system failures, OOM flagged."""
    [oom] = exit_events(_run(), ContainerExit(137, True, STOPPED), _facts(), 180, NOW)
    assert isinstance(oom, RunExited)
    assert (oom.classification, oom.oom_killed) == ("system", True)
    [late] = exit_events(
        _run(timed_out=True), ContainerExit(137, False, STOPPED), _facts(), 180, NOW
    )
    assert isinstance(late, RunExited)
    assert late.classification == "system" and "180 minutes" in late.error


def test_a_vanished_container_fails_at_now_with_exit_minus_one() -> None:
    """No container to inspect: a system failure, exit -1, stopped `now`."""
    [e] = exit_events(_run(), None, _facts(*PASSED), 180, NOW)
    assert isinstance(e, RunExited)
    assert (e.exit_code, e.error, e.finished_at, e.classification) == (-1, GONE, NOW, "system")


def test_no_stop_time_from_docker_means_now() -> None:
    """Docker's zero time is passed as None and recorded as now."""
    [e] = exit_events(_run(), ContainerExit(0, False, None), _facts(*PASSED), 180, NOW)
    assert isinstance(e, RunExited) and e.finished_at == NOW


def test_a_cancel_requested_ends_as_cancelled() -> None:
    """A run whose cancel was asked for ends `cancelled` with the container's exit code."""
    run = _run(cancel_requested=True)
    assert exit_events(run, ContainerExit(137, False, STOPPED), _facts(), 180, NOW) == [
        RunCancelled(run.id, NOW, 137)
    ]


def test_an_exit_already_recorded_adds_nothing() -> None:
    """A run no longer running gets no second exit."""
    exited = _run(status=RunStatus.FAILED)
    assert exit_events(exited, ContainerExit(1, False, STOPPED), _facts(), 180, NOW) == []


def test_stored_events_name_the_first_step_that_did_not_complete() -> None:
    """A failed run's failed step is the first announced one without `state_out.json`."""
    run = _run(status=RunStatus.FINISHING, result=RunResult(passed=False))
    facts = _facts(_step(1, "KLayout.CheckTopLevel", run), _step(2, "KLayout.CheckSize", run))
    output = OutputFile("output/chip_top.gds", 10, "a" * 64)
    report = OutputFile("run/reports/drc.json", 5, "b" * 64)
    copied = CopiedOut(
        output, (report,), frozenset({f"runs/{run.id}/01-klayout-checktoplevel"}), {"cells": 3}
    )
    [e] = stored_events(run, facts, copied, NOW)
    assert e == run_outputs_stored(
        run.id,
        output=output,
        files=(report,),
        metrics={"cells": 3},
        failed_step="KLayout.CheckSize",
        at=NOW,
    )


def test_stored_events_of_a_completed_run_name_no_step() -> None:
    """A passed run has no failed step even if folders are missing."""
    run = _run(status=RunStatus.FINISHING, result=RunResult(passed=True))
    [e] = stored_events(run, _facts(_step(1, "KLayout.CheckTopLevel", run)), None, NOW)
    assert e == run_outputs_stored(run.id, at=NOW)


def test_stored_events_of_a_settled_run_add_nothing() -> None:
    """Outputs are stored once."""
    assert stored_events(_run(status=RunStatus.FAILED, settled=True), _facts(), None, NOW) == []


def test_stored_events_of_a_retried_run_add_nothing() -> None:
    """A finish that comes after the attempt was retried (the run queued again) stores no
    outputs for it: they would settle a run that is about to start again."""
    queued = _run(status=RunStatus.QUEUED, attempt=2)
    assert stored_events(queued, _facts(), None, NOW) == []


def test_a_failed_start_with_attempts_left_is_the_next_attempt() -> None:
    """A start Docker refused queues the run again as its next attempt, on record."""
    run = _run(status=RunStatus.QUEUED)
    [e] = start_failed_events(run, "b", "Docker: gone", NOW, Retry(max_attempts=2, last_line=7))
    assert e == RunRetried(run.id, 2, "b", "Docker: gone", -1, None, NOW, 7, NOW)


def test_a_failed_start_of_the_last_attempt_fails_the_run() -> None:
    """With no attempts left the run fails to start; a run no longer queued gets nothing."""
    run = _run(status=RunStatus.QUEUED, attempt=2)
    assert start_failed_events(run, "b", "Docker: gone", NOW, Retry(max_attempts=2)) == [
        RunFailedToStart(run.id, "Docker: gone", NOW)
    ]
    cancelled = _run(status=RunStatus.CANCELLED, settled=True)
    assert start_failed_events(cancelled, "b", "x", NOW, Retry(max_attempts=3)) == []


def test_the_argv_is_productions_command_line() -> None:
    """Every flag is given; the run id is the run tag; --cob adds a 17th step."""
    run = _run()
    assert precheck_argv(run) == [
        "python3",
        "precheck.py",
        "--input",
        "/input/input.gds",
        "--output",
        "/output/chip_top.gds",
        "--top",
        "chip_top",
        "--id",
        "AB12CD34",
        "--slot",
        "1x1",
        "--run-tag",
        run.id,
    ]
    cob = _run(cob=True, input=attrs.evolve(run.input, format="oas", filename="input.oas"))
    assert precheck_argv(cob)[3:6] == ["/input/input.oas", "--output", "/output/chip_top.oas"]
    assert "--cob" in precheck_argv(cob)
    assert (step_total(run), step_total(cob)) == (16, 17)


def test_the_container_spec_is_labelled_offline_and_bounded() -> None:
    """Labels name the instance and run; no network, no swap, the configured limits."""
    run = _run()
    docker = DockerConfig(image="sim:1", memory_limit="2g", pids_limit=64)
    spec = container_spec(run, docker, "i" * 32)
    assert spec["Image"] == "sim:1"
    assert spec["Cmd"] == precheck_argv(run)
    assert spec["Labels"][LABEL_INSTANCE] == "i" * 32 and spec["Labels"][LABEL_RUN] == run.id
    assert spec["NetworkDisabled"] is True
    host = spec["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["Memory"] == host["MemorySwap"] == 2 << 30
    assert host["PidsLimit"] == 64
    assert host["CapDrop"] == ["ALL"] and "CapAdd" not in host
    assert "NanoCpus" not in host  # no CPU limit unless one is configured
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 16384, "Hard": 16384}]
    assert host["LogConfig"]["Config"] == {"max-size": "256m", "max-file": "4"}
    assert container_name(run, docker) == f"{docker.container_prefix}{run.id}"


def test_an_engine_limits_memory_and_cpus_of_its_own() -> None:
    """An engine's `memory_limit` and `cpus` win over `[docker]`'s; left empty, they are
    `[docker]`'s."""
    docker = DockerConfig(image="sim:1", memory_limit="2g", cpus=2)
    own = container_spec(_run(), docker, "i", EngineConfig("big", memory_limit="8g", cpus=6.5))
    assert (own["HostConfig"]["Memory"], own["HostConfig"]["NanoCpus"]) == (8 << 30, 6_500_000_000)
    same = container_spec(_run(), docker, "i", EngineConfig("plain"))
    assert (same["HostConfig"]["Memory"], same["HostConfig"]["NanoCpus"]) == (2 << 30, 2 * 10**9)
    assert instance_filter("i" * 32) == f"{LABEL_INSTANCE}={'i' * 32}"


def test_the_input_archive_holds_both_folders_and_the_layout() -> None:
    """The layout goes to /input under its stored name; /output exists before the start, as a
    link to a folder beside the run folders (so one archive holds the output and the run)."""
    entries = input_entries(_run(), Path("/somewhere/input.gds"))
    assert [(e.name, e.source, e.link) for e in entries] == [
        ("input", None, None),
        ("workspace/runs/.output", None, None),
        ("output", None, "/workspace/runs/.output"),
        ("input/input.gds", Path("/somewhere/input.gds"), None),
    ]
