"""Writes the read models' snapshot beside the log: every `snapshot.EVERY` events and at stop.

Pickling takes the live state at once, in the event loop, which waits for it (seconds for a
million events' state on a busy machine, hence only every `EVERY` events); the file is written
in a thread. A failed write is logged and retried at the
next occasion: without a snapshot a restart replays the whole log, which is slower, not wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from precheck.projections import Projections
from precheck.projections.snapshot import EVERY, dump, write_bytes

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0


class SnapshotWriter:
    """Keeps the snapshot at `path` of `projections` within `every` events of their position."""

    def __init__(
        self, projections: Projections, path: Path, written: int, every: int = EVERY
    ) -> None:
        self.projections = projections
        self.path = path
        self.written = written  # the position of the snapshot on disk (0: none)
        self.every = every
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Write whenever `every` events have been applied since the last snapshot."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)  # first: a start serves before it writes
            if self.projections.position - self.written >= self.every:
                await self.write()

    async def write(self) -> bool:
        """Write a snapshot at the current position unless the one on disk is there already."""
        async with self._lock:
            if self.projections.position == self.written:
                return False
            try:
                started = time.perf_counter()
                info, data = dump(self.projections)
                taken = time.perf_counter() - started
                await asyncio.to_thread(write_bytes, self.path, info, data)
            except Exception:
                log.exception("snapshot: writing %s failed; kept the previous one", self.path)
                return False
            self.written = info.position
            log.info(
                "snapshot at position %d written (%d bytes; state taken in %.2f s)",
                info.position,
                info.bytes,
                taken,
            )
            return True
