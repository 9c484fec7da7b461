"""The result cache: which ended run may answer a new one, and the event that answers it. Pure.

A run is answered from an earlier one when everything that decides its outcome is equal: the
layout's bytes (sha256 and size), top cell, die id, slot, cob, output format and the image the
new run would use now (its id, and its repo digest where it has one). Only a verdict on the
design may answer: a run that completed, or failed on its design; never a system failure, a
cancelled run or one whose end is not stored yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import attrs

from precheck.domain.status import RunStatus
from precheck.events.types import RunReused
from precheck.projections.runs import RunRecord


@attrs.frozen
class Reuse:
    """Answer a queued run from `source_run_id`, found for the image resolved as `image_id`
    and `image_digest` just before (what the run would use now)."""

    source_run_id: str
    image_id: str
    image_digest: str = ""


@attrs.frozen
class CacheKey:
    """What decides a run's outcome."""

    sha256: str
    size: int
    top_cell: str
    die_id: str
    slot: str
    cob: bool
    output_format: str
    image_id: str
    image_digest: str


class SourceGone(Exception):
    """The run chosen to answer from no longer may (deleted, or changed) when deciding."""


def output_format_of(run: RunRecord) -> str:
    """The run's output format: the one it asked for; for a run queued before it could ask,
    the input's (gzip undone)."""
    return run.output_format or ("oas" if run.input.format == "oas" else "gds")


def key_of(run: RunRecord, image_id: str, image_digest: str) -> CacheKey:
    """The key of `run` with the image it would run (or ran)."""
    return CacheKey(
        run.input.sha256,
        run.input.size,
        run.top_cell,
        run.die_id,
        run.slot,
        run.cob,
        output_format_of(run),
        image_id,
        image_digest,
    )


def may_answer(run: RunRecord) -> bool:
    """Does `run` hold a verdict on its design: ended and stored, completed or failed on the
    design?"""
    if not run.settled or run.result is None or not run.image_id:
        return False
    if run.status == RunStatus.COMPLETED:
        return True
    return run.status == RunStatus.FAILED and run.result.classification == "design"


def answers(source: RunRecord, key: CacheKey) -> bool:
    """May `source` answer a run of `key`?"""
    return may_answer(source) and key_of(source, source.image_id, source.image_digest) == key


def find_source(runs: Iterable[RunRecord], key: CacheKey) -> RunRecord | None:
    """The latest run that may answer a run of `key` (`runs` in creation order), or None.
    One that ran itself comes before one that was answered (its files are the same links)."""
    found = [r for r in runs if answers(r, key)]
    ran = [r for r in found if not r.reused_from]
    chosen = ran or found
    return chosen[-1] if chosen else None


def reused_event(run_id: str, owner: str, source: RunRecord, now: datetime) -> RunReused:
    """The event that ends run `run_id` of `owner` with `source`'s verdict and files."""
    v = source.result
    assert v is not None  # `may_answer` holds
    return RunReused(
        run_id,
        source.id,
        now,
        status=str(source.status),
        exit_code=source.exit_code,
        error=source.error,
        image=source.image,
        image_id=source.image_id,
        image_digest=source.image_digest,
        failed_step=v.failed_step,
        classification=v.classification,
        deferred_errors=v.deferred_errors,
        metrics=v.metrics,
        oom_killed=v.oom_killed,
        detail=v.detail,
        warnings=v.warnings,
        warning_count=v.warning_count,
        errors=v.errors,
        error_count=v.error_count,
        findings=v.findings,
        output=source.output,
        files=source.files,
        skipped=source.skipped,
        skipped_more=source.skipped_more,
        across_owners=source.owner != owner,
    )
