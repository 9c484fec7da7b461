"""Runs commands: decide against the read models, append, then retire files the events retired."""

from __future__ import annotations

import asyncio

from precheck.domain.commands import Command, decide
from precheck.events.store import ConcurrencyError, EventStore, RecordedEvent
from precheck.events.types import Metadata, RunDeleted, UploadDeleted, UploadExpired
from precheck.projections import Projections
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore


class CommandHandler:
    """The one way state changes: `handle(command, metadata)`.

    Commands are decided one at a time: an upload and the runs that use it span several
    streams, and deciding them in turn keeps such rules (no run on a deleted upload) exact.
    Appends from other writers (the supervisor) still share the store's group commit, and the
    expected stream versions guard against any writer this lock does not cover.
    """

    def __init__(
        self,
        store: EventStore,
        projections: Projections,
        storage: Storage,
        output_lines: OutputLineStore | None = None,
    ) -> None:
        self.store = store
        self.output_lines = output_lines
        self.projections = projections
        self.storage = storage
        self._lock = asyncio.Lock()

    async def handle(self, command: Command, metadata: Metadata) -> list[RecordedEvent]:
        """Decide and durably append; the read models include the result when this returns."""
        async with self._lock:
            for attempt in range(3):
                decision = decide(command, self.projections)
                try:
                    recorded = await self.store.append(decision.events, metadata, decision.expect)
                    break
                except ConcurrencyError:
                    if attempt == 2:
                        raise
        await self._retire_files(recorded)
        return recorded

    async def _retire_files(self, recorded: list[RecordedEvent]) -> None:
        # Removing a folder of GB-sized layouts takes a while: done in a thread.
        remove = asyncio.to_thread
        for r in recorded:
            e = r.event
            if isinstance(e, RunDeleted):
                await remove(self.storage.remove_run, e.run_id)
                if self.output_lines is not None:
                    await self.output_lines.delete_run(e.run_id)
                if self.projections.uploads.get(e.upload_id) is None:
                    await remove(self.storage.remove_upload, e.upload_id)  # went with its last run
            elif isinstance(e, UploadDeleted):
                await remove(self.storage.remove_upload, e.upload_id)
            elif isinstance(e, UploadExpired) and self.projections.uploads.get(e.upload_id) is None:
                await remove(self.storage.remove_upload, e.upload_id)
