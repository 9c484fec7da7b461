"""Reads each new upload's layout for pre-flight, in a child process, and records what it found.

A store listener wakes it (an upload arrived, a reading was recorded); it never polls. At start
it looks at every upload still `pending`, so a restart reads those again. One owner's uploads
of the same bytes (sha256) are read once: the others get the same facts, with `reused_from`
naming the upload that was read. Another owner's upload of those bytes is read again, so that
neither an event nor a timing tells one user of another's upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs

from precheck.clock import Clock
from precheck.domain.commands import RecordInspection
from precheck.events.store import RecordedEvent
from precheck.events.types import (
    MAX_LAYERS,
    MAX_TOP_CELLS,
    BBox,
    LayerPair,
    Metadata,
    TopCell,
    UploadInspected,
    UploadInspectionFailed,
    UploadReceived,
)
from precheck.layout.reading import LayoutFacts, Limits, ReadFailed, read_layout
from precheck.projections.uploads import UploadRecord
from precheck.service.command_handler import CommandHandler

log = logging.getLogger(__name__)
SERVER = Metadata(actor="server")
KNOWN = 4096  # readings remembered by owner and sha256 for uploads of the same bytes
RETRY_SECONDS = 5.0

Reader = Callable[[Path, Limits], Awaitable[LayoutFacts]]
Content = tuple[str, str]  # an owner and a sha256: what is read once


def content(upload: UploadRecord) -> Content:
    """What `upload`'s reading is shared by: its owner's uploads of the same bytes."""
    return upload.owner, upload.sha256


def inspected_event(upload_id: str, facts: LayoutFacts, clock: Clock) -> UploadInspected:
    """The event recording `facts` for `upload_id`."""
    return UploadInspected(
        upload_id,
        facts.format,
        facts.dbu,
        tuple(
            TopCell(c.name, None if c.bbox is None else BBox(*c.bbox))
            for c in facts.top_cells[:MAX_TOP_CELLS]
        ),
        facts.top_cell_count,
        tuple(LayerPair(a, b) for a, b in facts.layers[:MAX_LAYERS]),
        facts.cells,
        clock(),
    )


class LayoutInspector:
    """At most `max_concurrent` readings at once, one per owner and distinct content."""

    def __init__(
        self,
        handler: CommandHandler,
        limits: Limits,
        clock: Clock,
        max_concurrent: int = 2,
        reader: Reader = read_layout,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.clock = clock
        self.max_concurrent = max_concurrent
        self.reader = reader
        self.reads = 0  # readings made in a child process (reused facts not counted)
        self._wake = asyncio.Event()
        self._busy: dict[Content, asyncio.Task[None]] = {}
        self._known: OrderedDict[Content, UploadInspected] = OrderedDict()

    def on_event(self, r: RecordedEvent) -> None:
        """Store listener: a new upload to read, or a reading recorded (its facts reusable)."""
        e = r.event
        if isinstance(e, UploadInspected):
            upload = self.handler.projections.uploads.get(e.upload_id)
            if upload is not None:
                self._remember(content(upload), e)
            self._wake.set()
        elif isinstance(e, UploadReceived | UploadInspectionFailed):
            self._wake.set()

    async def run(self) -> None:
        """Start readings for pending uploads whenever woken; never dies."""
        for u in self.handler.projections.uploads.by_id.values():
            if u.layout is not None and u.layout.reused_from is None:
                self._remember(content(u), u.layout)
        try:
            while True:
                self._wake.clear()
                self._start_due()
                await self._wake.wait()
        finally:
            tasks = list(self._busy.values())
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _remember(self, key: Content, event: UploadInspected) -> None:
        self._known[key] = event
        self._known.move_to_end(key)
        while len(self._known) > KNOWN:
            self._known.popitem(last=False)

    def _pending(self, key: Content | None = None) -> list[UploadRecord]:
        return [
            u
            for u in self.handler.projections.uploads.by_id.values()
            if u.layout_status == "pending" and (key is None or content(u) == key)
        ]

    def _start_due(self) -> None:
        for u in self._pending():
            key = content(u)
            if key in self._busy:
                continue
            if key not in self._known and len(self._busy) >= self.max_concurrent:
                continue
            task = asyncio.create_task(self._settle(key), name=f"inspect-{u.id}")
            self._busy[key] = task
            task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: Content, _: object = None) -> None:
        self._busy.pop(key, None)
        self._wake.set()

    async def _settle(self, key: Content) -> None:
        """Read the content once (unless known), then record it for every pending upload of it."""
        try:
            known = self._known.get(key)
            if known is None:
                pending = self._pending(key)
                if not pending:
                    return
                first = pending[0]
                path = self.handler.storage.upload_file(first.id, first.filename)
                try:
                    facts = await self.reader(path, self.limits)
                except ReadFailed as e:
                    for u in self._pending(key):
                        await self._record(UploadInspectionFailed(u.id, str(e), self.clock()))
                    return
                finally:
                    self.reads += 1
                known = inspected_event(first.id, facts, self.clock)
                await self._record(known)
                self._remember(key, known)
            origin = known.reused_from or known.upload_id
            for u in self._pending(key):
                await self._record(
                    attrs.evolve(known, upload_id=u.id, at=self.clock(), reused_from=origin)
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading the layout of content %s failed; trying again", key[1][:12])
            await asyncio.sleep(RETRY_SECONDS)

    async def _record(self, event: UploadInspected | UploadInspectionFailed) -> None:
        await self.handler.handle(RecordInspection(event), SERVER)
