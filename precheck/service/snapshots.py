"""Writes the read models' snapshot beside the log: every `snapshot.EVERY` events and at stop.

Between stops the state is pickled in a forked copy of the server (`forked_copy.py`), which
holds it as it was at one instant, while the event loop serves on: pickling a million events'
state takes seconds. At a stop nothing else runs any more, and it is pickled in the loop. The
sha256 and the file are written in a thread. A failed write is logged and retried at the next
occasion: without a snapshot a restart replays the whole log, which is slower, not wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from precheck.projections import Projections
from precheck.projections.snapshot import EVERY, header_of, pickled, write_bytes
from precheck.service.forked_copy import made_in_forked_copy

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
                await self.write(serving=True)

    async def write(self, serving: bool = False) -> bool:
        """Write a snapshot at the current position unless the one on disk is there already.
        `serving`: the server serves on meanwhile, so the state is pickled in a forked copy."""
        async with self._lock:
            state = self.projections
            if state.position == self.written:
                return False
            try:
                started = time.perf_counter()
                # Read with the fork, in the same step of the loop: the copy's state is at them.
                position, last_hash = state.position, state.last_hash
                if serving:
                    data = await made_in_forked_copy(lambda: pickled(state))
                else:
                    data = pickled(state)
                taken = time.perf_counter() - started
                info = await asyncio.to_thread(header_of, position, last_hash, data)
                await asyncio.to_thread(write_bytes, self.path, info, data)
            except Exception:
                log.exception("snapshot: writing %s failed; kept the previous one", self.path)
                return False
            self.written = info.position
            log.info(
                "snapshot at position %d written (%d bytes; state taken in %.2f s%s)",
                info.position,
                info.bytes,
                taken,
                ", in a forked copy" if serving else "",
            )
            return True
