"""Docker-shaped JSON documents, rendered from read-model records at the edge."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from precheck.config import Config
from precheck.domain import recheck
from precheck.domain.notify import redact
from precheck.domain.preflight import slot_of
from precheck.domain.retention import pruned_kinds
from precheck.domain.status import ENDED, RunStatus
from precheck.events.codec import iso, to_jsonable
from precheck.events.store import RecordedEvent
from precheck.events.types import FindingsCount, Preflight, PreflightCheck, UploadInspected
from precheck.projections import Projections
from precheck.projections.runs import ResourcePeak, RunRecord
from precheck.projections.uploads import UploadRecord
from precheck.runner.container_spec import output_name, precheck_argv
from precheck.runner.copy_out import RUN_FOLDER
from precheck.runner.image_ref import ImageRef
from precheck.runner.run_yourself import layout_name, run_command
from precheck.web.estimates import estimate_document

ZERO_TIME = "0001-01-01T00:00:00Z"  # Docker's "never"


def _time(t: datetime | None) -> str:
    return ZERO_TIME if t is None else iso(t)


def upload_document(
    u: UploadRecord, now: datetime, state: Projections | None = None, image: str = ""
) -> dict[str, Any]:
    """`GET /api/v1/uploads/{id}`; with `state` and the configured `image`, its `Recheck`."""
    expired = u.status == "expired" or u.expires_at <= now
    return {
        "Id": u.id,
        "Name": u.name,
        "Created": iso(u.created),
        "Size": u.size,
        "Format": u.format,
        "Checksums": {"sha256": u.sha256},
        "ExpiresAt": iso(u.expires_at),
        "State": {"Status": "expired" if expired else "available", "Expired": expired},
        "Runs": list(u.run_ids),
        "Layout": layout_document(u),
        "Recheck": upload_recheck(u, state, image) if state is not None else None,
    }


def layout_document(u: UploadRecord) -> dict[str, Any]:
    """An upload's `Layout`: what reading it found (pre-flight), or why it could not be read."""
    facts: UploadInspected | None = u.layout
    return {
        "Status": u.layout_status,
        "Format": facts.format if facts else None,
        "Dbu": facts.dbu if facts else None,
        "TopCells": [
            {
                "Name": c.name,
                "BBox": None
                if c.bbox is None
                else {
                    "Left": c.bbox.left,
                    "Bottom": c.bbox.bottom,
                    "Right": c.bbox.right,
                    "Top": c.bbox.top,
                },
            }
            for c in facts.top_cells
        ]
        if facts
        else [],
        "TopCellCount": facts.top_cell_count if facts else None,
        "Layers": [[p.layer, p.datatype] for p in facts.layers] if facts else [],
        "Cells": facts.cells if facts else None,
        "Slot": slot_of(facts) if facts else None,
        "Error": u.layout_error,
    }


def check_documents(checks: tuple[PreflightCheck, ...]) -> list[dict[str, str]]:
    """Failed pre-flight checks as the API shows them."""
    return [
        {"code": c.code, "message": c.message, "expected": c.expected, "found": c.found}
        for c in checks
    ]


def preflight_document(p: Preflight | None) -> dict[str, Any] | None:
    """A run's `Preflight`: the result it was queued with (None for runs older than it)."""
    if p is None:
        return None
    return {
        "Status": p.status,
        "Mode": p.mode,
        "Passed": p.status == "passed",
        "Checks": check_documents(p.checks),
        "Reason": p.reason,
    }


def run_document(
    run: RunRecord,
    state: Projections,
    config: Config,
    queue: tuple[int | None, int] | None = None,
    waiting: bool = False,
    now: datetime | None = None,
    admin: bool = False,
) -> dict[str, Any]:
    """`GET /api/v1/prechecks/{id}`: the run as Docker would show a container, plus our parts.

    `queue` (place, length) shows a past state; by default the queue as it is now. `waiting`:
    say why a queued run cannot be placed now (what the supervisor sees, not the log: so only
    the run's own GET shows it, never a list, a stream or a replay). `now`: the document is
    live, so a queued or running run shows its `Estimate` at that instant. `admin`: the
    reader is one, and so is shown which run of another owner a run was answered from.
    """
    place, length = queue or (state.queue.position(run.id), state.queue.length)
    v = run.result
    doc: dict[str, Any] = {
        "Id": run.id,
        "Name": f"{config.docker.container_prefix}{run.id}",
        "Created": iso(run.created),
        "State": {
            "Status": run.status,
            "Running": run.status == RunStatus.RUNNING,
            "Paused": False,
            "OOMKilled": bool(v and v.oom_killed),
            "StartedAt": _time(run.started_at),
            "FinishedAt": _time(run.finished_at),
            # Docker's 0 while it has not run; -1 for a run that ended without running, as /wait.
            "ExitCode": run.exit_code
            if run.exit_code is not None
            else (-1 if run.status in ENDED else 0),
            "Error": run.error,
            "CancelRequested": run.cancel_requested,
        },
        "Config": {
            "Image": run.image or config.docker.image,
            "Cmd": precheck_argv(run),
            "Labels": {
                "upload_id": run.upload_id,
                "top_cell": run.top_cell,
                "die_id": run.die_id,
                "slot": run.slot,
                "cob": "true" if run.cob else "false",
            },
        },
        "HostConfig": {"Binds": [], "NetworkMode": "none"},
        "Queue": {
            "Position": place,
            "Length": length,
            "Waiting": state.queue.waiting.get(run.id) if waiting and queue is None else None,
        },
        "Engine": run.engine or None,
        "Attempts": attempt_documents(run),
        "ContainerId": run.container_id or None,
        # Docker's `Image` is the image's id; `ImageDigest` its repo digest, none for an
        # image built on the engine.
        "Image": run.image_id or None,
        "ImageDigest": run.image_digest or None,
        "RunItYourself": run_yourself(run, config),
        "Input": {
            "Filename": run.input.name,
            "Size": run.input.size,
            "Format": run.input.format,
            "Checksums": {"sha256": run.input.sha256},
        },
        "Output": {
            "Available": run.output is not None,
            "Filename": output_name(run) if run.output else None,
            "Size": run.output.size if run.output else None,
            "Checksums": {"sha256": run.output.sha256} if run.output else None,
            # An output of a failed run (deferred errors) is kept, never shown as a pass.
            "Passed": (run.status == RunStatus.COMPLETED) if run.output else None,
            # Files of the run folder not copied out, and why (caps, bulk): the first ones,
            # and how many more.
            "Skipped": [{"Path": s.path, "Size": s.size, "Why": s.why} for s in run.skipped],
            "SkippedMore": run.skipped_more,
        },
        "Progress": (
            {"Step": run.progress.step, "Total": run.progress.total, "Name": run.progress.name}
            if run.progress
            else None
        ),
        "Result": (
            {
                "Passed": v.passed,
                "FailedStep": v.failed_step,
                "Classification": v.classification,
                "DeferredErrors": v.deferred_errors,
                "Metrics": v.metrics,
                # The flow's own exception, where `State.Error` gives the failed tool's words.
                "Detail": v.detail or None,
                # What reading each kept report found (`/findings` has the rules and markers).
                "Findings": findings_counts(v.findings),
                # The flow's WARNING and ERROR lines (Magic's DRC counts warn, never fail), and
                # the flow's own files of them (whole records: a failed tool's last lines).
                "Warnings": {
                    "Count": v.warning_count,
                    "Lines": list(v.warnings),
                    "File": flow_file(run, "warning.log"),
                },
                "Errors": {
                    "Count": v.error_count,
                    "Lines": list(v.errors),
                    "File": flow_file(run, "error.log"),
                },
                # Answered from the cache: the run it was answered from, named only to a
                # reader who may see that run (its owner's runs, or an admin); to a user it
                # is another owner's, `Reused` alone says so.
                "Reused": bool(run.reused_from),
                "ReusedFrom": run.reused_from
                if run.reused_from and (admin or not run.reused_across_owners)
                else None,
            }
            if v
            else None
        ),
        "Preflight": preflight_document(run.preflight),
        # Whom its end is told, redacted: a URL's query string or user info may hold a token.
        "Notify": [{"Kind": s.kind, "Target": redact(s)} for s in run.notify],
        "RecheckOf": run.recheck_of or None,
        # When it should start and end, from past runs' step times (None without a basis).
        "Estimate": estimate_document(state, config, run.id, run.status, now),
        "Pruned": pruned_documents(run),
        # The peak of the resource timeline (`/resources`) of the attempt that ended the run.
        "Resources": peak_document(run.peak),
        # `recheck` for a run the server queued for a new image; "" for a user's run.
        "Reason": run.reason,
        "Recheck": run_recheck(run, state, config.docker.image),
    }
    if "outputs" in pruned_kinds(run):
        doc["Output"]["Available"] = False  # its facts stay; the file went (`Pruned` says when)
    return doc


def flow_file(run: RunRecord, name: str) -> dict[str, Any] | None:
    """A log file the flow writes at its run folder's top (`warning.log`), as `/reports`
    serves it, when it was kept, holds something and retention has not removed it."""
    if "reports" in pruned_kinds(run):
        return None
    kept = next((f for f in run.files if f.path == f"{RUN_FOLDER}/{name}"), None)
    return {"Path": name, "Size": kept.size} if kept is not None and kept.size else None


def pruned_documents(run: RunRecord) -> list[dict[str, Any]] | None:
    """A run's `Pruned`: what retention removed of its files, when and why (None: nothing)."""
    if not run.pruned:
        return None
    return [
        {
            "What": list(p.kinds),
            "At": iso(p.at),
            "Reason": p.reason,
            "Files": p.files,
            "BytesFreed": p.bytes_freed,
        }
        for p in run.pruned
    ]


def peak_document(p: ResourcePeak | None) -> dict[str, Any] | None:
    """An attempt's resource peak: what an OOM retry on a bigger engine needs."""
    if p is None:
        return None
    return {
        "PeakMemoryBytes": p.memory_bytes,
        "MemoryLimitBytes": p.limit_bytes,
        "PeakCpuPercent": p.cpu_percent,
        "Samples": p.samples,
    }


def upload_recheck(u: UploadRecord, state: Projections, image: str) -> dict[str, Any] | None:
    """An upload's `Recheck`: that of its newest run (see `run_recheck`)."""
    for run_id in reversed(u.run_ids):
        run = state.runs.get(run_id)
        if run is not None:
            return run_recheck(run, state, image)
    return None


def run_recheck(run: RunRecord, state: Projections, image: str) -> dict[str, Any] | None:
    """A run's `Recheck`: re-checked on a newer image (the re-check queued, or its verdict the
    same, changed, or none), or a newer image is available to the newest verdict of its
    upload; None when there is nothing to say."""
    rechecks = state.rechecks
    again = state.runs.get(rechecks.run_of.get(run.id, ""))
    if again is not None:
        return _recheck_outcome(again, run.id, rechecks.was.get(again.id))
    if run.reason == recheck.REASON:
        return _recheck_outcome(run, run.recheck_of, rechecks.was.get(run.id))
    current = rechecks.current(image)
    if not current or recheck.verdict(run) is None or recheck.image_ref(run) == current:
        return None
    upload = state.uploads.get(run.upload_id)
    if upload is None or not upload.run_ids or upload.run_ids[-1] != run.id:
        return None  # an older run of its upload: the newest one speaks for it
    return {
        "State": recheck.NEWER_IMAGE,
        "Of": run.id,
        "Run": None,
        "Image": current,
        "Before": recheck.verdict(run),
        "Verdict": None,
    }


def _recheck_outcome(again: RunRecord, of: str, was: str | None) -> dict[str, Any]:
    now = recheck.verdict(again)
    if not again.settled:
        state = recheck.QUEUED
    elif now is None:
        state = recheck.FAILED
    else:
        state = recheck.SAME if now == was else recheck.CHANGED
    return {
        "State": state,
        "Of": of,
        "Run": again.id,
        "Image": recheck.image_ref(again) or None,
        "Before": was,
        "Verdict": now,
    }


def run_yourself(run: RunRecord, config: Config) -> dict[str, Any] | None:
    """`RunItYourself`: the `docker run` line that runs the attempt's container as we ran it,
    the image pinned; None until an attempt started (which image it runs is not known)."""
    if not run.image_id:
        return None
    image = ImageRef(run.image_id, run.image_digest)
    engine = next((e for e in config.engines if e.name == run.engine), None)
    return {
        "Command": run_command(run, config.docker, engine, image),
        "Layout": layout_name(run),
        "Image": image.pinned,
    }


def findings_counts(found: tuple[FindingsCount, ...]) -> list[dict[str, Any]]:
    """A run's `Result.Findings`: per report read, its markers and rules that fired."""
    return [
        {
            "Path": f.path,
            "Step": f.step,
            "Count": f.count,
            "Rules": f.rules,
            "CutShort": f.cut_short,
            "Error": f.error or None,
        }
        for f in found
    ]


def attempt_documents(run: RunRecord) -> list[dict[str, Any]]:
    """Each attempt of the run, the first first: earlier ones ended in system failures and were
    retried; the last is the one under way (or that ended the run)."""
    docs = [
        {
            "Attempt": a.number,
            "Engine": a.engine or None,
            "StartedAt": _time(a.started_at),
            "FinishedAt": _time(a.finished_at),
            "ExitCode": a.exit_code,
            "Error": a.error,
            "Image": a.image_id or None,
            "ImageDigest": a.image_digest or None,
            "PeakMemoryBytes": a.peak.memory_bytes if a.peak else None,
        }
        for a in run.attempts
    ]
    docs.append(
        {
            "Attempt": run.attempt,
            "Engine": run.engine or None,
            "StartedAt": _time(run.started_at),
            "FinishedAt": _time(run.finished_at),
            "ExitCode": run.exit_code,
            "Error": run.error,
            "Image": run.image_id or None,
            "ImageDigest": run.image_digest or None,
            "PeakMemoryBytes": run.peak.memory_bytes if run.peak else None,
        }
    )
    return docs


def queue_document(state: Projections, config: Config) -> dict[str, Any]:
    """`GET /api/v1/queue`."""
    return {
        "queued": state.queue.length,
        "running": len(state.queue.running),
        "max_concurrent": config.max_concurrent,
        "order": state.queue.queued(),
    }


def event_document(r: RecordedEvent) -> dict[str, Any]:
    """One event of the log, as the audit feed shows it."""
    return {
        "position": r.position,
        "stream": r.stream,
        "version": r.version,
        "type": r.type,
        "time": iso(r.recorded),
        "data": to_jsonable(r.event),
        "metadata": to_jsonable(r.metadata),
    }
