"""Automatic re-checks on a new image: which runs count, their verdicts, their share. Pure.

An upload is re-checked when its newest ended run passed or failed on its design (a verdict
about the layout) on an image other than the newest one seen. Images are compared by their
repo digest, or by their id when they have none (an image built on the engine).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from precheck.domain.status import RunStatus

REASON = "recheck"  # `run.queued` `reason` of a run the server queued for a new image

# The states a run's or an upload's `Recheck` shows.
NEWER_IMAGE = "newer-image-available"
QUEUED = "recheck-queued"
SAME = "rechecked-same"
CHANGED = "verdict-changed"
FAILED = "recheck-failed"


class Result(Protocol):
    """What a verdict reads of a run's result (a projection's `RunResult`)."""

    @property
    def classification(self) -> str | None: ...
    @property
    def failed_step(self) -> str | None: ...


class Run(Protocol):
    """What these rules read of a run (a projection's `RunRecord`; the read models use these
    rules too, so this module does not import them)."""

    @property
    def status(self) -> str: ...
    @property
    def settled(self) -> bool: ...
    @property
    def result(self) -> Result | None: ...
    @property
    def image_digest(self) -> str: ...
    @property
    def image_id(self) -> str: ...


def image_ref(run: Run) -> str:
    """The image a run ran, as re-checks compare it: its repo digest, else its id."""
    return run.image_digest or run.image_id


def verdict(run: Run) -> str | None:
    """What an ended run said about its layout: `passed`, `failed at <step>` (a design
    failure); None for a run with no verdict on the design (a system failure, cancelled,
    not ended)."""
    if not run.settled or run.result is None:
        return None
    if run.status == RunStatus.COMPLETED:
        return "passed"
    if run.status == RunStatus.FAILED and run.result.classification == "design":
        return f"failed at {run.result.failed_step or 'an unknown step'}"
    return None


def recheck_slots(max_share: float, slots: int) -> int:
    """How many re-checks may hold a slot at once: floor(max_share * slots), at least one, so
    two slots at 0.25 run one re-check at a time (what a production server does)."""
    return max(1, math.floor(max_share * slots + 1e-9))


def recheck_run_id(upload_id: str, ref: str) -> str:
    """The id of the re-check of `upload_id` on image `ref`: made of the two, so planning the
    same pair twice can only collide (its stream exists), never queue a second run."""
    return hashlib.sha256(f"recheck\0{upload_id}\0{ref}".encode()).hexdigest()[:32]


def newest_ref(seen: Callable[[str], bool], current: str, found: Sequence[str]) -> str:
    """The image to re-check on, of the refs engines report now: one never seen before is
    new (the last such, if several), else the newest one seen (`current`)."""
    unseen = [r for r in found if r and not seen(r)]
    return unseen[-1] if unseen else current
