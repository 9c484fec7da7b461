"""Following one container's output into the output-line store as it arrives."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import attrs

from precheck.domain.verdict import OutputFacts, Step
from precheck.runner.engine import Engine
from precheck.storage.docker_time import docker_nanos
from precheck.storage.output_lines import LineBlock, OutputLineStore

log = logging.getLogger(__name__)

StepSeen = Callable[[Step], Awaitable[None]]
FLOOD_WINDOW = 0.01  # seconds
FLOOD_LINES = 50  # more lines than this in one window is a flood: publish once per window
MAX_LOG_BYTES = 256 << 20
MAX_BATCH = 4 << 20  # bytes of lines written in one go, so no single write holds the loop long
MAX_PENDING = 16 << 20  # bytes of lines read and not yet written, before reading waits
YIELD_EVERY = 500  # lines taken between two looks at the rest of the event loop


async def stored_facts(lines: OutputLineStore, run_id: str, after: int = 0) -> OutputFacts:
    """What a run's stored lines say (of its attempt whose lines follow line `after`)."""
    facts = OutputFacts()
    async for block in lines.read_blocks(run_id, after):
        facts.feed_block(block.raw, block.texts)
    return facts


def _already_stored(times: Sequence[str], since: int, same: int) -> tuple[int, int, bool]:
    """How many of a resumed capture's first lines were stored before: those before the last
    stored line's instant `since` (nanoseconds), and `same` of those at it. Also how many at
    that instant are still to drop, and whether a line past them was found."""
    for i, stamp in enumerate(times):
        n = docker_nanos(stamp)
        if n < since:
            continue
        if n == since and same > 0:
            same -= 1
            continue
        return i, same, True
    return len(times), same, False


@attrs.define
class OutputCapture:
    """Stores a run's lines durably, in batches while the next lines are read.

    Lines come and go in blocks (`LineBlock`): the facts, the per-run cap, publishing and the
    writes each cost a few operations per block, so a flood of short lines is taken at the
    speed of bytes, not of Python statements.

    On a restart it resumes after the last stored line: Docker is asked for lines since that
    line's time, and lines at that very instant that are already stored are dropped.
    """

    engine: Engine
    output_lines: OutputLineStore
    run_id: str
    container_id: str
    on_step: StepSeen
    max_bytes: int = MAX_LOG_BYTES  # output kept per run; past it lines are counted, not stored
    after_line: int = 0  # the attempt's lines follow this one (earlier attempts' lines before)
    facts: OutputFacts = attrs.field(init=False, factory=OutputFacts)
    _pending: deque[LineBlock] = attrs.field(init=False, factory=deque)  # read, not yet durable
    _pending_bytes: int = attrs.field(init=False, default=0)
    _unpublished: list[LineBlock] = attrs.field(init=False, factory=list)  # not yet shown
    _window_start: float = attrs.field(init=False, default=0.0)
    _window_lines: int = attrs.field(init=False, default=0)
    _steps: list[Step] = attrs.field(init=False, factory=list)
    _has_work: asyncio.Event = attrs.field(init=False, factory=asyncio.Event)
    _reading_done: bool = attrs.field(init=False, default=False)
    _kept_bytes: int = attrs.field(init=False, default=0)
    _room: asyncio.Event = attrs.field(init=False, factory=asyncio.Event)
    _dropped: list[int] = attrs.field(init=False, factory=lambda: [0, 0])  # lines, bytes

    async def run(self) -> OutputFacts:
        """Capture until the container's output ends; return what the whole log said."""
        tail = await self.output_lines.tail(self.run_id)
        # The verdict needs the whole log's facts, including lines stored before a restart.
        async for block in self.output_lines.read_blocks(self.run_id, self.after_line):
            self.facts.feed_block(block.raw, block.texts)
            self._kept_bytes += len(block.raw) - block.count + 1
        flusher = asyncio.create_task(self._flush_loop(), name=f"log-flush-{self.run_id}")
        try:
            last = await self._read(tail.line, tail.time, tail.same_time)
            if self._dropped[0] and last is not None:
                lines, size = self._dropped
                note = f"[{lines} lines ({size} bytes) of output past the cap were not kept]"
                self._store(LineBlock(last[0] + 1, "stderr", f"{last[1]} {note}", 1))
        finally:
            self._publish()  # the last lines, before the run's end can be recorded
            self._reading_done = True
            self._has_work.set()
            await flusher
        return self.facts

    async def _read(self, line_no: int, since: str, skip_same: int) -> tuple[int, str] | None:
        """Take every new line; the number and time of the last line taken, if any."""
        last, taken = None, 0
        resuming, since_n = bool(since), docker_nanos(since) if since else 0
        stream = self.engine.logs(self.container_id, follow=True, since=since or None)
        async for lines in stream:
            if resuming:
                times = lines.times()
                skip, skip_same, found = _already_stored(times, since_n, skip_same)
                resuming = not found
                if skip == lines.count:
                    continue
                if skip:
                    raw = "\n".join(lines.raw.split("\n")[skip:])
                    lines = LineBlock(0, lines.stream, raw, lines.count - skip)
            block = attrs.evolve(lines, first=line_no + 1)
            line_no = self._take(block)
            last = (line_no, block.last_time)
            taken += block.count
            if taken >= YIELD_EVERY:
                taken = 0
                await asyncio.sleep(0)  # a flood arrives faster than one loop turn should last
            if self._pending_bytes >= MAX_PENDING:
                # A flood: read on once the writes caught up, so memory stays bounded and
                # Docker holds what we have not read.
                self._room.clear()
                await self._room.wait()
        return last

    def _take(self, block: LineBlock) -> int:
        """Feed the block to the facts and store it (or count its lines, past the cap); the
        number of the last line stored. The cap counts each line as captured, time included."""
        steps = self.facts.feed_block(block.raw, block.texts)
        if steps:
            self._steps += steps
            self._has_work.set()
        size = len(block.raw) - block.count + 1  # the newlines between lines are not kept
        if not self._dropped[0] and self._kept_bytes + size <= self.max_bytes:
            self._kept_bytes += size
            self._store(block)
            return block.last
        parts = block.raw.split("\n")
        keep, room, line_no = 0, self.max_bytes - self._kept_bytes, block.first - 1
        if not self._dropped[0]:  # the lines that still fit, then a marker
            for n in map(len, parts):
                if n > room:
                    break
                room -= n
                keep += 1
            if keep:
                self._store(LineBlock(block.first, block.stream, "\n".join(parts[:keep]), keep))
            self._kept_bytes = self.max_bytes - room
            mib = self.max_bytes >> 20
            note = f"[output past {mib} MiB is not kept: later lines are counted, not stored]"
            line_no += keep + 1
            stamp = parts[keep].partition(" ")[0]
            self._store(LineBlock(line_no, "stderr", f"{stamp} {note}", 1))
        self._dropped[0] += len(parts) - keep
        self._dropped[1] += sum(map(len, parts[keep:]))
        return line_no

    def _store(self, block: LineBlock) -> None:
        self._pending.append(block)
        # Shown to readers without waiting for a commit: at the end of this loop turn while the
        # log is calm; once a window of FLOOD_WINDOW seconds saw more than FLOOD_LINES lines,
        # at the end of that window, so hundreds of followers wake for batches rather than for
        # every chunk Docker sends.
        if not self._unpublished:
            loop = asyncio.get_running_loop()
            now = loop.time()
            if now - self._window_start > FLOOD_WINDOW:
                self._window_start, self._window_lines = now, 0
            if self._window_lines + block.count <= FLOOD_LINES:
                loop.call_soon(self._publish)
            else:
                loop.call_later(self._window_start + FLOOD_WINDOW - now, self._publish)
        self._unpublished.append(block)
        self._window_lines += block.count
        self._pending_bytes += len(block.raw)
        self._has_work.set()

    def _publish(self) -> None:
        blocks, self._unpublished = self._unpublished, []
        self.output_lines.publish(self.run_id, blocks)

    async def _flush_loop(self) -> None:
        while True:
            await self._has_work.wait()
            self._has_work.clear()
            batch, size = [], 0
            while self._pending and size < MAX_BATCH:
                batch.append(self._pending.popleft())
                size += len(batch[-1].raw)
            self._pending_bytes -= size
            steps, self._steps = self._steps, []
            if self._pending:
                self._has_work.set()  # more to write after this batch
            if self._pending_bytes < MAX_PENDING:
                self._room.set()
            if batch:
                await self.output_lines.append(self.run_id, batch, published=True)
            for step in steps:  # after its line is stored
                try:
                    await self.on_step(step)
                except Exception:
                    log.exception("recording step %s of run %s failed", step.name, self.run_id)
            if self._reading_done and not self._pending:
                return
