"""Read models rebuilt from the event log: uploads, runs and the queue."""

from __future__ import annotations

import gc
import logging

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
        self.instance_id: str | None = None  # labels this server's containers

    def apply(self, r: RecordedEvent) -> None:
        """Apply one event; events at or before the current position are ignored."""
        if r.position <= self.position:
            return
        if r.position != self.position + 1:
            log.error("projections: event %d follows %d: a gap", r.position, self.position)
        self.uploads.apply(r)
        self.runs.apply(r)
        self.queue.apply(r)
        self.keys.apply(r)
        self.rechecks.apply(r)
        self.notifications.apply(r)
        self.step_times.apply(r)
        if isinstance(r.event, InstanceCreated) and self.instance_id is None:
            self.instance_id = r.event.instance_id
        self.position = r.position

    async def catch_up(self, store: EventStore) -> int:
        """Apply every committed event not applied yet; return how many were applied."""
        count = 0
        async for r in store.read_all(after=self.position):
            self.apply(r)
            count += 1
        return count

    @classmethod
    async def replay(cls, store: EventStore) -> Projections:
        """Fresh read models built from the whole log.

        The collector is paused meanwhile: a replay only adds live objects, and collections
        would rescan the growing read models over and over for no garbage. What remains is
        then frozen out of later collections.
        """
        projections = cls()
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            await projections.catch_up(store)
        finally:
            if was_enabled:
                gc.enable()
        gc.freeze()
        return projections

    def attach(self, store: EventStore) -> None:
        """Keep these read models current: every later commit is applied before it returns."""
        store.add_listener(self.apply)
