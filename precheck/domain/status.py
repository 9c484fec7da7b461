"""The statuses a run goes through. Stored as their plain text values in the event log."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run is: waiting, in its container, stopped with its outputs still being stored,
    or ended (and how). Only the ended statuses are final: everything about the run is stored
    by then."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHING = "finishing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})  # its container may still print
ENDED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})  # final
STATUSES = ACTIVE | {RunStatus.FINISHING} | ENDED
