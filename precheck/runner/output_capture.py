"""Following one container's output into the output-line store, line by line, as it arrives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import attrs

from precheck.domain.verdict import OutputFacts, Step
from precheck.runner.engine import ContainerLine, Engine
from precheck.storage.output_lines import OutputLine, OutputLineStore

log = logging.getLogger(__name__)

StepSeen = Callable[[Step], Awaitable[None]]
FLOOD_WINDOW = 0.01  # seconds
FLOOD_LINES = 50  # more lines than this in one window is a flood: publish once per window


def _nanos(stamp: str) -> int:
    """Docker's RFC 3339 text (trailing zeros trimmed) as an integer, for exact ordering."""
    from datetime import datetime

    head, _, frac = stamp.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(head + "+00:00").timestamp())
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9] or 0)


async def stored_facts(
    lines: OutputLineStore, run_id: str, facts: OutputFacts | None = None
) -> OutputFacts:
    """What a run's stored lines say (fed into `facts` when given)."""
    facts = facts if facts is not None else OutputFacts()
    after = 0
    while True:
        page, more = await lines.read(run_id, after_line=after, limit=5000)
        facts.feed_all(s.text for s in page)
        if not page or not more:
            return facts
        after = page[-1].line


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
    facts: OutputFacts = attrs.field(init=False, factory=OutputFacts)
    _pending: list[OutputLine] = attrs.field(init=False, factory=list)  # read, not yet durable
    _unpublished: list[OutputLine] = attrs.field(init=False, factory=list)  # not yet shown
    _window_start: float = attrs.field(init=False, default=0.0)
    _window_lines: int = attrs.field(init=False, default=0)
    _steps: list[Step] = attrs.field(init=False, factory=list)
    _has_work: asyncio.Event = attrs.field(init=False, factory=asyncio.Event)
    _reading_done: bool = attrs.field(init=False, default=False)

    async def run(self) -> OutputFacts:
        """Capture until the container's output ends; return what the whole log said."""
        tail = await self.output_lines.tail(self.run_id)
        if tail.line:
            # The verdict needs the whole log's facts, including lines stored before a restart.
            await stored_facts(self.output_lines, self.run_id, self.facts)
        flusher = asyncio.create_task(self._flush_loop(), name=f"log-flush-{self.run_id}")
        try:
            await self._read(tail.line, tail.time, tail.same_time)
        finally:
            self._publish()  # the last lines, before the run's end can be recorded
            self._reading_done = True
            self._has_work.set()
            await flusher
        return self.facts

    async def _read(self, line_no: int, since: str, skip_same: int) -> None:
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
            line_no += 1
            self._take(line_no, item)

    def _take(self, line_no: int, item: ContainerLine) -> None:
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
        step = self.facts.feed(item.text)
        if step is not None:
            self._steps.append(step)
        self._has_work.set()

    def _publish(self) -> None:
        lines, self._unpublished = self._unpublished, []
        self.output_lines.publish(self.run_id, lines)

    async def _flush_loop(self) -> None:
        while True:
            await self._has_work.wait()
            self._has_work.clear()
            batch, self._pending = self._pending, []
            steps, self._steps = self._steps, []
            if batch:
                await self.output_lines.append(self.run_id, batch, published=True)
            for step in steps:  # after its line is stored
                try:
                    await self.on_step(step)
                except Exception:
                    log.exception("recording step %s of run %s failed", step.name, self.run_id)
            if self._reading_done and not self._pending:
                return
