"""Read model of notifications: what each run asked to be told, and every attempt so far.

A re-check the server queued for a new image tells its subscribers (the re-checked run's)
only when its verdict differs from the one it re-checked: otherwise its end owes nothing.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from precheck.domain.recheck import verdict
from precheck.events.store import RecordedEvent
from precheck.events.types import (
    NotificationFailed,
    NotificationRedeliveryRequested,
    NotificationSent,
    RunCancelled,
    RunDeleted,
    RunFailedToStart,
    RunFinished,
    RunFinishFailed,
    RunOutputsStored,
    RunQueued,
    Subscription,
)
from precheck.projections.rechecks import Rechecks

# The events that end a run for good (its record is settled after them).
_SETTLING = frozenset(
    {RunOutputsStored, RunCancelled, RunFailedToStart, RunFinishFailed, RunFinished}
)


@attrs.frozen
class Delivery:
    """One target of one run's end.

    `attempts` counts every attempt ever made; `failures` and `first_at` the failed ones in a
    row since it was last owed anew (queued, or a redelivery asked for), which the retry
    schedule reads; `last_at` is when the last attempt was recorded. Owed while neither
    `delivered` nor `gave_up`.
    """

    run_id: str
    number: int
    subscription: Subscription
    attempts: int = 0
    failures: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    delivered: bool = False
    gave_up: bool = False
    quiet: bool = False  # a re-check that kept its verdict: nothing to tell (unless asked again)

    @property
    def owed(self) -> bool:
        """Still to deliver (once its run has ended)."""
        return not self.delivered and not self.gave_up and not self.quiet


Attempt = NotificationSent | NotificationFailed


class Notifications:
    """Deliveries by run, each run's attempts in order, and the keys of those still owed."""

    # The types `apply` looks at: `Projections` feeds it no others.
    EVENTS = frozenset(
        {RunQueued, RunDeleted, NotificationSent, NotificationFailed, *_SETTLING}
        | {NotificationRedeliveryRequested}
    )

    def __init__(self, rechecks: Rechecks | None = None) -> None:
        self.rechecks = rechecks  # applied before this model: a re-check's verdicts
        self.by_run: dict[str, tuple[Delivery, ...]] = {}
        self.attempts: dict[str, list[Attempt]] = {}
        self.owed: set[tuple[str, int]] = set()

    def get(self, run_id: str, number: int) -> Delivery | None:
        """Delivery `number` (from 1) of a run, or None."""
        found = self.by_run.get(run_id, ())
        return found[number - 1] if 0 < number <= len(found) else None

    def apply(self, r: RecordedEvent) -> None:
        """Evolve the state by one event."""
        e = r.event
        if isinstance(e, RunQueued):
            if e.notify:
                self.by_run[e.run_id] = tuple(
                    Delivery(e.run_id, i, s) for i, s in enumerate(e.notify, 1)
                )
                self.owed.update((e.run_id, i) for i in range(1, len(e.notify) + 1))
        elif type(e) in _SETTLING:  # one lookup: a replay meets these for every run
            self._settled(getattr(e, "run_id", ""))
        elif isinstance(e, RunDeleted):
            for d in self.by_run.pop(e.run_id, ()):
                self.owed.discard((e.run_id, d.number))
            self.attempts.pop(e.run_id, None)
        elif isinstance(e, NotificationSent | NotificationFailed):
            found = self.get(e.run_id, e.delivery)
            if found is None:
                return
            self.attempts.setdefault(e.run_id, []).append(e)
            if isinstance(e, NotificationSent):
                d = attrs.evolve(found, attempts=found.attempts + 1, last_at=e.at, delivered=True)
            else:
                d = attrs.evolve(
                    found,
                    attempts=found.attempts + 1,
                    failures=found.failures + 1,
                    first_at=found.first_at or e.at,
                    last_at=e.at,
                    gave_up=e.gave_up,
                )
            self._put(d)
        elif isinstance(e, NotificationRedeliveryRequested):
            again = self.get(e.run_id, e.delivery)
            if again is not None:
                self._put(
                    attrs.evolve(
                        again,
                        failures=0,
                        first_at=None,
                        last_at=None,
                        delivered=False,
                        gave_up=False,
                        quiet=False,
                    )
                )

    def _settled(self, run_id: str) -> None:
        """A run ended for good: a re-check that kept its verdict (or gave none) owes nothing."""
        rechecks = self.rechecks
        if rechecks is None or run_id not in rechecks.was:
            return
        run = rechecks.runs.get(run_id)
        now = verdict(run) if run is not None else None
        if now is None or now == rechecks.was[run_id]:
            for d in self.by_run.get(run_id, ()):
                self._put(attrs.evolve(d, quiet=True))

    def _put(self, d: Delivery) -> None:
        found = list(self.by_run[d.run_id])
        found[d.number - 1] = d
        self.by_run[d.run_id] = tuple(found)
        key = (d.run_id, d.number)
        if d.owed:
            self.owed.add(key)
        else:
            self.owed.discard(key)
