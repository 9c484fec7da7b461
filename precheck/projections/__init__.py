"""Read models rebuilt from the event log: uploads, runs and the queue."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

from precheck.events.store import EventStore, RecordedEvent
from precheck.events.types import InstanceCreated
from precheck.projections.keys import Keys
from precheck.projections.notifications import Notifications
from precheck.projections.queue import Queue
from precheck.projections.rechecks import Rechecks
from precheck.projections.runs import Runs
from precheck.projections.step_times import StepTimes
from precheck.projections.uploads import Uploads

log = logging.getLogger(__name__)


class Projections:
    """All read models, fed one event at a time in position order by the store."""

    def __init__(self) -> None:
        self.uploads = Uploads()
        self.runs = Runs()
        self.queue = Queue()
        self.keys = Keys()
        self.rechecks = Rechecks(self.runs)
        self.notifications = Notifications(self.rechecks)
        self.step_times = StepTimes()  # what run estimates rest on
        self.position = 0
        self.last_hash = ""  # the log's chain hash at `position`: a snapshot is taken there
        self.instance_id: str | None = None  # labels this server's containers
        self._appliers: dict[type, tuple[Callable[[RecordedEvent], None], ...]] = {}

    def _parts(self) -> list[Any]:
        """Every read model set in `__init__` (anything with an `apply`), in that order: a read
        model added there is fed without a line here."""
        return [v for v in vars(self).values() if callable(getattr(v, "apply", None))]

    def _appliers_of(self, kind: type) -> tuple[Callable[[RecordedEvent], None], ...]:
        """The read models an event type can change, in order: a replay skips the others. A
        read model names the types its `apply` looks at in `EVENTS`; without it, it gets all."""
        found = tuple(
            part.apply
            for part in self._parts()
            if kind in getattr(part, "EVENTS", (kind,))  # no `EVENTS`: every type
        )
        self._appliers[kind] = found
        return found

    def apply(self, r: RecordedEvent) -> None:
        """Apply one event; events at or before the current position are ignored."""
        if r.position <= self.position:
            return
        if r.position != self.position + 1:
            log.error("projections: event %d follows %d: a gap", r.position, self.position)
        kind = type(r.event)
        appliers = self._appliers.get(kind)
        for apply in self._appliers_of(kind) if appliers is None else appliers:
            apply(r)
        if kind is InstanceCreated and self.instance_id is None:
            self.instance_id = r.event.instance_id  # type: ignore[union-attr]
        self.position = r.position
        self.last_hash = r.hash

    def __getstate__(self) -> dict[str, Any]:
        # A snapshot holds the read models, not the bound methods cached to reach them.
        return self.__dict__ | {"_appliers": {}}

    async def catch_up(self, store: EventStore) -> int:
        """Apply every committed event not applied yet; return how many were applied.

        The loop is `apply` written out for the event that follows the position (the only
        kind a page holds unless the log has a gap): a replay then makes one call per read
        model an event reaches, not one more per event.
        """
        start, apply, appliers = self.position, self.apply, self._appliers
        async for events in store.read_pages(after=self.position):
            for r in events:
                position = r.position
                if position != self.position + 1:
                    apply(r)  # a repeat or a gap: its checks and its log line
                    continue
                kind = type(r.event)
                found = appliers.get(kind)
                for part in self._appliers_of(kind) if found is None else found:
                    part(r)
                if kind is InstanceCreated and self.instance_id is None:
                    self.instance_id = r.event.instance_id  # type: ignore[union-attr]
                self.position = position
                self.last_hash = r.hash
        return self.position - start

    @classmethod
    async def replay(cls, store: EventStore) -> Projections:
        """Fresh read models built from the whole log.

        The collector is paused meanwhile: a replay only adds live objects, and collections
        would rescan the growing read models over and over for no garbage. What remains is
        then frozen out of later collections.
        """
        projections = cls()
        await projections.fold(store)
        return projections

    async def fold(self, store: EventStore) -> int:
        """`catch_up` for many events at once (a replay, or the events after a snapshot):
        collections paused as for `replay`, what remains frozen. Returns how many applied."""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            count = await self.catch_up(store)
        finally:
            if was_enabled:
                gc.enable()
        gc.freeze()
        return count

    def attach(self, store: EventStore) -> None:
        """Keep these read models current: every later commit is applied before it returns."""
        store.add_listener(self.apply)
