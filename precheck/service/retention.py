"""The retention pass: removes what `domain/retention.py` says is due, then records it.

Files go first and `run.files-pruned` after (invariant 1: a file is removed after the event
that retires it would let a reader meet a missing file the log still promises; here the log
keeps promising until the event, and the 410 starts with it). A crash between the two leaves
the log without the event: the next pass finds the same kinds due, removes what is left (often
nothing) and records the event with the bytes it measured.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import attrs

from precheck.clock import Clock
from precheck.config import RetentionConfig
from precheck.domain.retention import Removal, kind_of, plan
from precheck.events.store import ConcurrencyError, EventStore, RecordedEvent
from precheck.events.streams import run_stream
from precheck.events.types import Metadata, RunFilesPruned
from precheck.projections import Projections
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore

log = logging.getLogger(__name__)
SERVER = Metadata(actor="server")


class Retention:
    """The pass, run every `interval_minutes` (when retention is configured), at a run's end
    (it may pass the budget) and on demand (`precheck-server prune --retention`)."""

    def __init__(
        self,
        store: EventStore,
        projections: Projections,
        storage: Storage,
        output_lines: OutputLineStore,
        clock: Clock,
        policy: RetentionConfig,
        metadata: Metadata = SERVER,
    ) -> None:
        self.store = store
        self.projections = projections
        self.storage = storage
        self.output_lines = output_lines
        self.clock = clock
        self.policy = policy
        self.metadata = metadata
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one pass at a time: periodic, at a run's end, on demand

    def on_event(self, _: RecordedEvent) -> None:
        """Store listener: a run became final; with a budget, look again now."""
        if self.policy.max_storage_gb > 0:
            self._wake.set()

    def poke(self) -> None:
        """Look again now (the clock moved)."""
        self._wake.set()

    async def due(self, now: datetime | None = None) -> list[Removal]:
        """What a pass would remove now. The lines' bytes are read whole only for a budget
        (it reads every block); otherwise only for the runs whose lines are due."""
        budget = self.policy.max_storage_gb > 0
        sizes = await self.output_lines.bytes_by_run() if budget else {}
        runs = list(self.projections.runs.by_id.values())  # records are frozen: a snapshot
        # Planned off the loop: a first pass over a long history sorts many files into kinds.
        removals = await asyncio.to_thread(plan, runs, now or self.clock(), self.policy, sizes)
        if budget:
            return removals
        return [
            attrs.evolve(
                r, bytes=r.bytes + (await self.output_lines.bytes_by_run(r.run_id)).get(r.run_id, 0)
            )
            if "logs" in r.kinds
            else r
            for r in removals
        ]

    async def prune(
        self, *, dry_run: bool = False, metadata: Metadata | None = None
    ) -> list[Removal]:
        """Remove what is due and record each removal (as caused by `metadata`, else the
        server); return them with the bytes freed (with `dry_run` only list them, with the
        bytes the log gives). A removal the log refuses (the run changed or went meanwhile)
        is left for the next pass."""
        async with self._lock:
            removals = await self.due()
            if dry_run:
                return removals
            done: list[Removal] = []
            for removal in removals:
                event = await self._remove(removal, metadata or self.metadata)
                if event is not None:
                    done.append(attrs.evolve(removal, bytes=event.bytes_freed))
            return done

    async def _remove(self, removal: Removal, metadata: Metadata) -> RunFilesPruned | None:
        run = self.projections.runs.get(removal.run_id)
        if run is None:
            return None
        version = run.version
        kinds = set(removal.kinds)
        files, freed = 0, 0
        if kinds - {"logs"}:
            files, freed = await asyncio.to_thread(
                self.storage.remove_run_files, run.id, lambda p: kind_of(p) in kinds
            )
        if "logs" in kinds:
            freed += (await self.output_lines.bytes_by_run(run.id)).get(run.id, 0)
            await self.output_lines.delete_run(run.id)
        event = RunFilesPruned(run.id, removal.kinds, files, freed, removal.reason, self.clock())
        try:
            await self.store.append([event], metadata, {run_stream(run.id): version})
        except ConcurrencyError:
            return None  # due again next pass if still there: the event is written then
        log.info(
            "retention removed %s of run %s (%s): %d files, %d bytes",
            ", ".join(removal.kinds),
            run.id,
            removal.reason,
            files,
            freed,
        )
        return event

    async def run(self) -> None:
        """Pass, sleep `interval_minutes` or until woken, repeat; never dies."""
        while True:
            self._wake.clear()
            try:
                await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the retention pass failed; trying again at the next one")
            try:
                await asyncio.wait_for(self._wake.wait(), self.policy.interval_minutes * 60)
            except TimeoutError:
                pass
