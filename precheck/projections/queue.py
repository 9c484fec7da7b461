"""Read model of the queue: the fair order of queued runs and how many run.

Fair: FIFO within an owner, round-robin across owners. A queued run's key is (its rank among
its owner's queued runs, when its owner last had a run start, its place in arrival order): each
owner's first waiting run comes before anyone's second, and among firsts the owner served
longest ago goes first. The key is made of the log alone, so a replay gives the same order.

Re-checks the server queued for a new image (`reason` `recheck`) come after every user's runs,
in arrival order, and no more than `max_rechecks` of them hold a slot at once.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterable
from typing import Any

from precheck.domain.recheck import REASON
from precheck.events.store import RecordedEvent
from precheck.events.types import (
    RunCancelled,
    RunExited,
    RunFailedToStart,
    RunFinished,
    RunFinishFailed,
    RunQueued,
    RunRetried,
    RunReused,
    RunStarted,
)
from precheck.projections.runs import RunRecord

# A run leaves `running` when its container has exited (its slot is free), before its
# outputs are copied out.
_QUEUE_EVENTS = frozenset(
    {
        RunQueued,
        RunStarted,
        RunCancelled,
        RunFinished,
        RunExited,
        RunFailedToStart,
        RunFinishFailed,
        RunRetried,
        RunReused,  # queued and answered at once: it leaves the queue
    }
)


def fair_order(
    fifo: Iterable[str], owner: Callable[[str], str], served: Callable[[str], int]
) -> list[str]:
    """`fifo` (queued run ids in arrival order) in the fair order; `served(owner)` is the log
    position at which the owner's last run started (0 when none has)."""
    rank: dict[str, int] = {}
    keyed = []
    for i, run_id in enumerate(fifo):
        who = owner(run_id)
        n = rank.get(who, 0)
        rank[who] = n + 1
        keyed.append((n, served(who), i, run_id))
    keyed.sort()
    return [k[3] for k in keyed]


class Queue:
    """Queued runs (ticket = the queuing event's position) in fair order, and running ones."""

    EVENTS = _QUEUE_EVENTS  # the types `apply` looks at: `Projections` feeds it no others

    def __init__(self) -> None:
        self._ticket: dict[str, int] = {}
        self._tickets: list[int] = []  # sorted, since positions only grow
        self._run_of_ticket: dict[int, str] = {}
        self._first_ticket: dict[str, int] = {}  # a retried run queues again at its first place
        self.running: set[str] = set()
        self._owner: dict[str, str] = {}  # run -> the actor that queued it
        self._served: dict[str, int] = {}  # owner -> position at which its last run started
        self._order: list[str] | None = None  # the fair order, made when first asked after a change
        self._place: dict[str, int] = {}
        self.max_running_per_owner = 0  # from the config: 0 for no limit
        self.rechecks: set[str] = set()  # queued or running runs the server queued as re-checks
        self.max_rechecks = 1  # re-checks holding a slot at once (from `[recheck] max_share`)
        # Why a queued run at the head cannot be placed on any engine now: set by the
        # supervisor as it places runs, not derived from the log.
        self.waiting: dict[str, str] = {}

    @property
    def length(self) -> int:
        """How many runs wait."""
        return len(self._tickets)

    def position(self, run_id: str) -> int | None:
        """1-based place of a queued run in the fair order, None when it is not queued."""
        if run_id not in self._ticket:
            return None
        self._fair()
        return self._place[run_id]

    def queued(self) -> list[str]:
        """Queued run ids in the fair order, first to run first."""
        return list(self._fair())

    def head(self) -> str | None:
        """The run that starts next, if any."""
        startable = self.startable()
        return startable[0] if startable else None

    def startable(self) -> list[str]:
        """Queued runs that may start now, in the fair order: the runs of an owner with
        `max_running_per_owner` runs running wait (a setting from the config, not the log)."""
        limit = self.max_running_per_owner
        order = self._fair()
        if self.rechecks and self.running_rechecks() >= self.max_rechecks:
            order = [r for r in order if r not in self.rechecks]
        if not limit:
            return list(order)
        running = (r for r in self.running if r not in self.rechecks)
        full = {o for o in {self.owner(r) for r in running} if self.running_by(o) >= limit}
        return [r for r in order if r in self.rechecks or self.owner(r) not in full]

    def running_rechecks(self) -> int:
        """How many re-checks hold a slot."""
        return sum(1 for run_id in self.running if run_id in self.rechecks)

    def owner(self, run_id: str) -> str:
        """Who queued the run (the actor of its `run.queued`)."""
        return self._owner.get(run_id, "")

    def queued_by(self, owner: str) -> int:
        """How many of `owner`'s runs wait (re-checks count against no one: the server's)."""
        return sum(
            1
            for run_id in self._ticket
            if self._owner.get(run_id) == owner and run_id not in self.rechecks
        )

    def running_by(self, owner: str) -> int:
        """How many of `owner`'s runs hold a slot (re-checks not counted)."""
        return sum(
            1
            for run_id in self.running
            if self._owner.get(run_id) == owner and run_id not in self.rechecks
        )

    def _fair(self) -> list[str]:
        if self._order is None:
            fifo = [self._run_of_ticket[t] for t in self._tickets]
            users = [r for r in fifo if r not in self.rechecks]
            self._order = fair_order(users, self.owner, lambda o: self._served.get(o, 0))
            self._order += [r for r in fifo if r in self.rechecks]  # last, first come first
            self._place = {run_id: i for i, run_id in enumerate(self._order, 1)}
        return self._order

    def apply(self, r: RecordedEvent) -> None:
        """Evolve the state by one event."""
        e: Any = r.event  # dispatched on its type below
        kind = type(e)
        if kind not in _QUEUE_EVENTS:
            return
        self._order = None
        if kind is RunQueued:
            self._ticket[e.run_id] = r.position
            self._tickets.append(r.position)
            self._run_of_ticket[r.position] = e.run_id
            self._owner[e.run_id] = r.metadata.actor
            self._first_ticket[e.run_id] = r.position
            if e.reason == REASON:
                self.rechecks.add(e.run_id)
        elif kind is RunRetried:
            self.running.discard(e.run_id)
            ticket = self._first_ticket.get(e.run_id, r.position)
            if e.run_id not in self._ticket:
                self._ticket[e.run_id] = ticket
                insort(self._tickets, ticket)
                self._run_of_ticket[ticket] = e.run_id
        elif kind is RunStarted:
            if e.run_id not in self.rechecks:  # a re-check's start serves no user
                self._served[self.owner(e.run_id)] = r.position
            self._dequeue(e.run_id)
            self.running.add(e.run_id)
        else:
            self._dequeue(e.run_id)
            self.running.discard(e.run_id)
            self.rechecks.discard(e.run_id)

    def __getstate__(self) -> dict[str, Any]:
        # A snapshot keeps what the log says: the config's limit and the supervisor's reasons
        # are set anew by whoever loads it, and the fair order is made again when asked.
        return self.__dict__ | {
            "waiting": {},
            "max_running_per_owner": 0,
            "_order": None,
            "_place": {},
        }

    def _dequeue(self, run_id: str) -> None:
        ticket = self._ticket.pop(run_id, None)
        if ticket is None:
            return
        del self._tickets[bisect_left(self._tickets, ticket)]
        del self._run_of_ticket[ticket]


def queue_at(runs: Iterable[RunRecord], run: RunRecord, position: int) -> tuple[int | None, int]:
    """The run's place in the queue and the queue's length just after event `position`.

    Derived from when each run joined and left the queue (and when each owner's runs started),
    so a stream can show a past state in the fair order without replaying the log. O(runs):
    used for queued runs only.
    """
    every = list(runs)
    waiting = sorted((r for r in every if r.queued_at(position)), key=lambda r: r.queued_position)
    served: dict[str, int] = {}
    for r in every:
        started = r.dequeued_position
        if r.started_at is not None and started is not None and started <= position:
            if r.reason != REASON:
                served[r.owner] = max(served.get(r.owner, 0), started)
    owners = {r.id: r.owner for r in waiting}
    users = [r.id for r in waiting if r.reason != REASON]
    order = fair_order(users, owners.__getitem__, lambda o: served.get(o, 0))
    order += [r.id for r in waiting if r.reason == REASON]
    place = order.index(run.id) + 1 if run.id in owners else None
    return place, len(waiting)
