"""Read model of how long the recent runs' phases took: the history estimates rest on.

Built from `RunStarted`, `RunProgressed` (each step's start time) and the container's exit.
A phase lasts from its start to the next step's start (the last one to the exit), and only
when that next step is the very next one: a capture that missed a step gives no figure.

Runs that passed, and runs that failed on their design, are kept: the latter for the steps
they finished, not the one they failed in (cut short) nor those they never reached, so an
early design failure neither shortens nor lengthens the medians. System failures, retried
attempts, cancelled runs and runs that failed to start are left out: their times say more about
the engine than about the flow. Bounded: the last `KEEP` runs per slot size.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from itertools import pairwise
from typing import Any

import attrs

from precheck.domain.estimate import START, PastRun, flow_phases
from precheck.domain.status import RunStatus
from precheck.events.store import RecordedEvent
from precheck.events.types import (
    RunCancelled,
    RunDeleted,
    RunExited,
    RunFailedToStart,
    RunFinished,
    RunFinishFailed,
    RunProgressed,
    RunQueued,
    RunRetried,
    RunStarted,
)

KEEP = 20  # past runs kept per slot size
_ENDS = (RunCancelled, RunFailedToStart, RunFinishFailed, RunDeleted)  # forgotten, not counted
_EVENTS = frozenset(
    {RunQueued, RunStarted, RunProgressed, RunRetried, RunExited, RunFinished, *_ENDS}
)  # a replay skips every other event at once


@attrs.define
class _Open:
    """A run under way: its shape, and when each of its phases began."""

    slot: str
    cob: bool
    marks: list[tuple[int, str, datetime]] = attrs.field(factory=list)  # (step, name, began)


class StepTimes:
    """The recent ended runs' phase durations per slot size, and the runs under way."""

    EVENTS = _EVENTS  # the types `apply` looks at: `Projections` feeds it no others

    def __init__(self) -> None:
        self._shape: dict[str, tuple[str, bool]] = {}  # queued or running run -> (slot, cob)
        self._open: dict[str, _Open] = {}
        self._recent: dict[str, deque[PastRun]] = {}

    def history(self) -> list[PastRun]:
        """The runs kept, every slot size's, oldest first within each size."""
        return [r for runs in self._recent.values() for r in runs]

    def phase_of(self, run_id: str) -> tuple[str, datetime] | None:
        """The phase a running run is in and when it began; None when it is not running."""
        run = self._open.get(run_id)
        if run is None:
            return None
        _, name, began = run.marks[-1]
        return name, began

    def apply(self, r: RecordedEvent) -> None:
        """Evolve the state by one event."""
        e: Any = r.event
        kind = type(e)
        if kind not in _EVENTS:
            return
        if kind is RunProgressed:  # first: most of a log's events
            run = self._open.get(e.run_id)
            if run is not None:
                run.marks.append((e.step, e.name, e.at))
        elif kind is RunQueued:
            self._shape[e.run_id] = (e.slot, e.cob)
        elif kind is RunStarted:
            shape = self._shape.get(e.run_id)
            if shape is not None:
                self._open[e.run_id] = _Open(*shape, [(0, START, e.at)])
        elif kind is RunRetried:
            self._open.pop(e.run_id, None)  # the attempt failed on the system: not counted
        elif kind is RunExited or kind is RunFinished:
            run = self._open.pop(e.run_id, None)
            self._shape.pop(e.run_id, None)
            passed = e.status == RunStatus.COMPLETED
            if run is not None and (passed or e.classification == "design"):
                end = e.finished_at if kind is RunExited else e.at
                self._keep(PastRun(run.slot, run.cob, _durations(run, end, passed)))
        elif kind in _ENDS:
            self._open.pop(e.run_id, None)
            self._shape.pop(e.run_id, None)

    def _keep(self, run: PastRun) -> None:
        if not run.seconds:
            return
        self._recent.setdefault(run.slot, deque(maxlen=KEEP)).append(run)


def _durations(run: _Open, end: datetime, passed: bool) -> dict[str, float]:
    """Seconds each whole phase took; the last one, to the exit, counts only for a run that
    passed and was seen in the flow's last step (one that failed stopped in it)."""
    marks = run.marks
    out: dict[str, float] = {}
    for (step, name, began), (next_step, _, next_began) in pairwise(marks):
        if next_step == step + 1:
            seconds = (next_began - began).total_seconds()
            out[name] = seconds if seconds > 0.0 else 0.0  # `max(0.0, ...)`, without the call
    _, name, began = marks[-1]
    if passed and name == flow_phases(run.cob)[-1]:
        out[name] = max(0.0, (end - began).total_seconds())
    return out
