"""Plans re-checks when the configured image changes (`[recheck] enabled`).

What is owed is read from the log: an upload whose newest ended run gave a verdict on an
image other than the newest one seen, with no `recheck.planned` for that upload and image.
So it looks at every upload when it starts and whenever a run's start shows a new image, and
at one upload when one of its runs ends (a run under way is waited for); a restart picks up
where the log says. Planning is a command (`PlanRechecks`): the events say what was planned,
so a second look plans nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from precheck.clock import Clock
from precheck.domain.commands import PlanRechecks
from precheck.domain.recheck import newest_ref
from precheck.events.store import RecordedEvent
from precheck.events.types import (
    Metadata,
    RunCancelled,
    RunFailedToStart,
    RunFinished,
    RunFinishFailed,
    RunOutputsStored,
    RunStarted,
)
from precheck.service.command_handler import CommandHandler

log = logging.getLogger(__name__)
SERVER = Metadata(actor="server")
_ENDS = (RunOutputsStored, RunCancelled, RunFailedToStart, RunFinishFailed, RunFinished)
RETRY_SECONDS = 30.0  # after a plan that could not be recorded


class Rechecker:
    """Plans the re-checks the log owes, woken by run starts and ends."""

    def __init__(self, handler: CommandHandler, image: str, clock: Clock) -> None:
        self.handler = handler
        self.image = image
        self.clock = clock
        self._wake = asyncio.Event()
        self._everything = True  # look at every upload (at start, and on a new image)
        self._uploads: set[str] = set()  # uploads whose run ended since the last look
        self._ref = ""  # the image ref every upload was last looked at for

    def on_event(self, r: RecordedEvent) -> None:
        """Store listener: a run started (on a new image?) or ended."""
        e = r.event
        if isinstance(e, RunStarted):
            if self.handler.projections.rechecks.current(self.image) != self._ref:
                self._everything = True
                self._wake.set()
        elif isinstance(e, _ENDS):
            run = self.handler.projections.runs.get(e.run_id)
            if run is not None:
                self._uploads.add(run.upload_id)
                self._wake.set()

    async def run(self) -> None:
        """Plan what is owed whenever woken; never dies."""
        while True:
            self._wake.clear()
            try:
                await self.plan_owed()
                delay = None
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("planning re-checks failed; trying again in %.0f s", RETRY_SECONDS)
                self._everything = True
                delay = RETRY_SECONDS
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def plan_owed(self) -> list[RecordedEvent]:
        """Plan the re-checks owed for the newest image seen."""
        ref = self.handler.projections.rechecks.current(self.image)
        everything, uploads = self._everything, frozenset(self._uploads)
        self._everything, self._uploads = False, set()
        if not ref or not (everything or uploads):
            return []
        self._ref = ref
        command = PlanRechecks(self.image, ref, self.clock(), None if everything else uploads)
        return await self.handler.handle(command, SERVER)

    async def scan(
        self, found: Sequence[str], metadata: Metadata = SERVER
    ) -> tuple[str, list[RecordedEvent]]:
        """Plan for the refs engines report now (`found`): a ref never seen before is the new
        image; else the newest seen. Returns the ref planned for and what was recorded."""
        rechecks = self.handler.projections.rechecks
        ref = newest_ref(
            lambda r: rechecks.seen(self.image, r), rechecks.current(self.image), found
        )
        if not ref:
            return "", []
        self._ref = ref
        command = PlanRechecks(self.image, ref, self.clock())
        recorded = await self.handler.handle(command, metadata)
        return ref, recorded
