"""Read model of the queue: FIFO order of queued runs and how many run."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from precheck.events.store import RecordedEvent
from precheck.events.types import (
    RunCancelled,
    RunExited,
    RunFailedToStart,
    RunFinished,
    RunFinishFailed,
    RunQueued,
    RunStarted,
)
from precheck.projections.runs import RunRecord

# A run leaves `running` when its container has exited (its slot is free), before its
# outputs are copied out.
_QUEUE_EVENTS = frozenset(
    {RunQueued, RunStarted, RunCancelled, RunFinished, RunExited, RunFailedToStart, RunFinishFailed}
)


class Queue:
    """Queued runs in arrival order (ticket = the queuing event's position) and running ones."""

    def __init__(self) -> None:
        self._ticket: dict[str, int] = {}
        self._tickets: list[int] = []  # sorted, since positions only grow
        self._run_of_ticket: dict[int, str] = {}
        self.running: set[str] = set()

    @property
    def length(self) -> int:
        """How many runs wait."""
        return len(self._tickets)

    def position(self, run_id: str) -> int | None:
        """1-based place of a queued run, None when it is not queued."""
        ticket = self._ticket.get(run_id)
        return None if ticket is None else bisect_left(self._tickets, ticket) + 1

    def queued(self) -> list[str]:
        """Queued run ids, first to run first."""
        return [self._run_of_ticket[t] for t in self._tickets]

    def head(self) -> str | None:
        """The run that starts next, if any."""
        return self._run_of_ticket[self._tickets[0]] if self._tickets else None

    def apply(self, r: RecordedEvent) -> None:
        """Evolve the state by one event."""
        e: Any = r.event  # dispatched on its type below
        kind = type(e)
        if kind not in _QUEUE_EVENTS:
            return
        if kind is RunQueued:
            self._ticket[e.run_id] = r.position
            self._tickets.append(r.position)
            self._run_of_ticket[r.position] = e.run_id
        elif kind is RunStarted:
            self._dequeue(e.run_id)
            self.running.add(e.run_id)
        else:
            self._dequeue(e.run_id)
            self.running.discard(e.run_id)

    def _dequeue(self, run_id: str) -> None:
        ticket = self._ticket.pop(run_id, None)
        if ticket is None:
            return
        del self._tickets[bisect_left(self._tickets, ticket)]
        del self._run_of_ticket[ticket]


def queue_at(runs: Iterable[RunRecord], run: RunRecord, position: int) -> tuple[int | None, int]:
    """The run's place in the queue and the queue's length just after event `position`.

    Derived from when each run joined and left the queue, so a stream can show a past state
    exactly without replaying the log. O(runs): used for queued runs only.
    """
    waiting = [r.queued_position for r in runs if r.queued_at(position)]
    place = None
    if run.queued_at(position):
        place = 1 + sum(1 for q in waiting if q < run.queued_position)
    return place, len(waiting)
