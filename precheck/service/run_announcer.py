"""One line of the server's own output per change in a run's life, for the operator watching it.

A store listener: it sees each committed event once, after the projections applied it, so a
line can say how long a run took. Replayed history at start is not announced again.
"""

from __future__ import annotations

import logging

from precheck.events.store import RecordedEvent
from precheck.events.types import (
    RunCancelled,
    RunExited,
    RunFailedToStart,
    RunOutputsStored,
    RunQueued,
    RunReused,
    RunStarted,
    RunTimedOut,
)
from precheck.projections import Projections

log = logging.getLogger("precheck.runs")


class RunAnnouncer:
    """Logs runs queued, started, ended (with the verdict and duration), failed to start."""

    def __init__(self, state: Projections) -> None:
        self.state = state

    def on_event(self, r: RecordedEvent) -> None:
        """Store listener."""
        e = r.event
        who = r.metadata.actor
        if isinstance(e, RunQueued):
            log.info(
                "run %s queued by %s: %s, top cell %s, slot %s%s (%d in the queue)",
                e.run_id, who, e.input_name, e.top_cell, e.slot, ", cob" if e.cob else "",
                self.state.queue.length,
            )  # fmt: skip
        elif isinstance(e, RunReused):
            log.info(
                "run %s answered from run %s (%s): no container",
                e.run_id,
                e.source_run_id,
                e.status,
            )
        elif isinstance(e, RunStarted):
            log.info("run %s started in container %s (%s)", e.run_id, e.container_id[:12], e.image)
        elif isinstance(e, RunFailedToStart):
            log.warning("run %s failed to start: %s", e.run_id, e.error)
        elif isinstance(e, RunTimedOut):
            log.warning("run %s timed out after %g minutes: killing it", e.run_id, e.minutes)
        elif isinstance(e, RunExited):
            why = f" ({e.classification} failure: {e.error})" if e.classification else ""
            log.info(
                "run %s ended %s%s, exit code %d, after %s",
                e.run_id, e.status, why, e.exit_code, self._duration(e.run_id),
            )  # fmt: skip
        elif isinstance(e, RunCancelled):
            log.info("run %s cancelled by %s", e.run_id, who)
        elif isinstance(e, RunOutputsStored):
            stored = "output layout and " if e.output is not None else "no output layout, "
            step = f"; failed step {e.failed_step}" if e.failed_step else ""
            log.info("run %s outputs stored: %s%d files%s", e.run_id, stored, len(e.files), step)

    def _duration(self, run_id: str) -> str:
        run = self.state.runs.get(run_id)
        if run is None or run.started_at is None or run.finished_at is None:
            return "an unknown time"
        return f"{(run.finished_at - run.started_at).total_seconds():.1f} s"
