"""Following one container's output into the output-line store, line by line, as it arrives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs

from precheck.domain.verdict import OutputFacts, Step
from precheck.runner.engine import ContainerLine, Engine
from precheck.storage.output_lines import OutputLine, OutputLineStore

log = logging.getLogger(__name__)

StepSeen = Callable[[Step], Awaitable[None]]
FLOOD_WINDOW = 0.01  # seconds
FLOOD_LINES = 50  # more lines than this in one window is a flood: publish once per window
MAX_LOG_BYTES = 256 << 20
MAX_BATCH = 2000  # lines written in one go, so no single write holds the loop long
MAX_PENDING = 20000  # lines read and not yet written, before reading waits
YIELD_EVERY = 500  # lines taken between two looks at the rest of the event loop


def _nanos(stamp: str) -> int:
    """Docker's RFC 3339 text (trailing zeros trimmed) as an integer, for exact ordering."""
    from datetime import datetime

    head, _, frac = stamp.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(head + "+00:00").timestamp())
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9] or 0)


async def stored_lines(
    lines: OutputLineStore, run_id: str, after: int = 0
) -> AsyncIterator[OutputLine]:
    """Every stored line of a run after line `after`, in order, read page by page."""
    while True:
        page, more = await lines.read(run_id, after_line=after, limit=5000)
        for line in page:
            yield line
        if not page or not more:
            return
        after = page[-1].line


async def stored_facts(lines: OutputLineStore, run_id: str, after: int = 0) -> OutputFacts:
    """What a run's stored lines say (of its attempt whose lines follow line `after`)."""
    facts = OutputFacts()
    async for line in stored_lines(lines, run_id, after):
        facts.feed(line.text)
    return facts


@attrs.define
class OutputCapture:
    """Stores a run's lines durably, in batches while the next lines are read.

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
    _pending: list[OutputLine] = attrs.field(init=False, factory=list)  # read, not yet durable
    _unpublished: list[OutputLine] = attrs.field(init=False, factory=list)  # not yet shown
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
        async for line in stored_lines(self.output_lines, self.run_id, self.after_line):
            self.facts.feed(line.text)
            self._kept_bytes += len(line.text)
        flusher = asyncio.create_task(self._flush_loop(), name=f"log-flush-{self.run_id}")
        try:
            last = await self._read(tail.line, tail.time, tail.same_time)
            if self._dropped[0] and last is not None:
                lines, size = self._dropped
                note = f"[{lines} lines ({size} bytes) of output past the cap were not kept]"
                self._store(last[0] + 1, attrs.evolve(last[1], text=note, stream="stderr"))
        finally:
            self._publish()  # the last lines, before the run's end can be recorded
            self._reading_done = True
            self._has_work.set()
            await flusher
        return self.facts

    async def _read(
        self, line_no: int, since: str, skip_same: int
    ) -> tuple[int, ContainerLine] | None:
        """Take every new line; the last line number and item read, if any."""
        last, taken = None, 0
        since_n = _nanos(since) if since else None
        stream = self.engine.logs(self.container_id, follow=True, since=since or None)
        async for item in stream:
            if since_n is not None:
                n = _nanos(item.time_text)
                if n < since_n:
                    continue
                if n == since_n and skip_same > 0:
                    skip_same -= 1
                    continue
                since_n = None
            line_no = self._take(line_no, item)
            last = (line_no, item)
            taken += 1
            if taken % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a flood arrives faster than one loop turn should last
            if len(self._pending) >= MAX_PENDING:
                # A flood: read on once the writes caught up, so memory stays bounded and
                # Docker holds what we have not read.
                self._room.clear()
                await self._room.wait()
        return last

    def _take(self, line_no: int, item: ContainerLine) -> int:
        """Feed the line to the facts and store it (or count it, past the cap); the number of
        the last line stored."""
        step = self.facts.feed(item.text)
        if step is not None:
            self._steps.append(step)
            self._has_work.set()
        if self._kept_bytes + len(item.text) > self.max_bytes:
            if not self._dropped[0]:
                mib = self.max_bytes >> 20
                note = f"[output past {mib} MiB is not kept: later lines are counted, not stored]"
                line_no += 1
                self._store(line_no, attrs.evolve(item, text=note, stream="stderr"))
            self._dropped[0] += 1
            self._dropped[1] += len(item.text)
            return line_no
        self._kept_bytes += len(item.text)
        self._store(line_no + 1, item)
        return line_no + 1

    def _store(self, line_no: int, item: ContainerLine) -> None:
        line = OutputLine(line_no, item.time_text, item.time.timestamp(), item.stream, item.text)
        self._pending.append(line)
        # Shown to readers without waiting for a commit: at the end of this loop turn while the
        # log is calm; once a window of FLOOD_WINDOW seconds saw more than FLOOD_LINES lines,
        # at the end of that window, so hundreds of followers wake for batches rather than
        # for every chunk Docker sends.
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._window_start > FLOOD_WINDOW:
            self._window_start, self._window_lines = now, 0
        self._window_lines += 1
        if not self._unpublished:
            if self._window_lines <= FLOOD_LINES:
                loop.call_soon(self._publish)
            else:
                loop.call_later(self._window_start + FLOOD_WINDOW - now, self._publish)
        self._unpublished.append(line)
        self._has_work.set()

    def _publish(self) -> None:
        lines, self._unpublished = self._unpublished, []
        self.output_lines.publish(self.run_id, lines)

    async def _flush_loop(self) -> None:
        while True:
            await self._has_work.wait()
            self._has_work.clear()
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            steps, self._steps = self._steps, []
            if self._pending:
                self._has_work.set()  # more to write after this batch
            if len(self._pending) < MAX_PENDING:
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
