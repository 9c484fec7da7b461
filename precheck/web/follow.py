"""Following one run live over SSE: its changes, its log lines, or both on one connection.

Every message's id says exactly where the client is: the global position of the event behind a
status message, the line number of a log line, or `position:line` when both are followed. A
reconnect with that id continues after it from the store, however long ago it was. Past
documents are rebuilt from the run's own events and the queue's join/leave positions, so a
resumed stream sends what the client would have seen live.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from precheck.domain.estimate import Estimate
from precheck.domain.status import ACTIVE, RunStatus
from precheck.errors import Invalid
from precheck.events.store import RecordedEvent
from precheck.events.streams import run_stream
from precheck.events.types import (
    RunCancelled,
    RunFailedToStart,
    RunProgressed,
    RunQueued,
    RunStarted,
)
from precheck.projections.queue import queue_at
from precheck.projections.runs import RunRecord, Runs
from precheck.web import keys
from precheck.web.access import identity
from precheck.web.estimates import estimate_json, estimate_of
from precheck.web.render import run_document
from precheck.web.requests import query_bool
from precheck.web.sse import Stream, last_event_id, message

QUEUE_EVENTS = (RunQueued, RunStarted, RunCancelled, RunFailedToStart)


class RunFollower:
    """One client following one run."""

    def __init__(
        self,
        request: web.Request,
        run: RunRecord,
        *,
        events: bool,
        logs: bool,
        timestamps: bool = False,
    ) -> None:
        self.request = request
        self.app = request.app
        self.run_id = run.id
        self.stream_name = run_stream(run.id)
        self.events, self.logs, self.timestamps = events, logs, timestamps
        self.state = self.app[keys.PROJECTIONS]
        self.store = self.app[keys.STORE]
        self.log_store = self.app[keys.OUTPUT_LINES]
        self.position = self.state.position
        self.line = 0
        self.past = Runs()  # the run as of `position`
        self.sent_queue: tuple[int | None, int] | None = None
        # With `estimates=1`, an `estimate` message (no id: it is of now, not of the log, so a
        # resumed stream is the same without it) whenever the run's estimate moved.
        self.estimates = events and query_bool(request, "estimates")
        self.sent_estimate: tuple[str, Estimate | None] | None = None  # (status, estimate)

    # Where to start ---------------------------------------------------------------------------

    def _resume_id(self) -> tuple[int | None, int | None]:
        raw = last_event_id(self.request)
        if raw is None:
            return None, None
        try:
            if self.events and self.logs:
                p, _, line = raw.partition(":")
                return int(p), int(line or 0)
            return (int(raw), None) if self.events else (None, int(raw))
        except ValueError:
            raise Invalid(f"Last-Event-ID {raw!r} is not an id this stream sent") from None

    async def start(self, first_line: int = 0) -> bool:
        """Set the starting point; False when the client already saw the end (answer 204)."""
        position, line = self._resume_id()
        live = self.state.runs.by_id[self.run_id]
        if position is not None:
            # Not before the run existed, not beyond what is committed.
            self.position = max(min(position, self.store.head), live.queued_position - 1)
        self.line = line if line is not None else (0 if position is not None else first_line)
        for r in await self.store.read(0, 100000, stream=self.stream_name):
            if r.position <= self.position:
                self.past.apply(r)
        if position is None and line is None:
            return True
        seen_end = not self.events or self._ended(self._run())
        if self.logs:
            seen_end = seen_end and self._ended(live) and self.line >= await self._last_line()
        return not seen_end

    def _ended(self, run: RunRecord) -> bool:
        """Nothing more to send: a log ends with the container (every line is captured by
        then); the run's changes end once its outputs are stored too."""
        # A log is complete once the container stopped; the run's changes once it is final.
        return run.settled if self.events else run.status not in ACTIVE

    def _run(self) -> RunRecord:
        run = self.past.get(self.run_id)
        if run is None:  # resumed from before the run existed: show it as it is now
            run = self.state.runs.by_id[self.run_id]
        return run

    async def _last_line(self) -> int:
        return await self.log_store.end(self.run_id)

    # Sending ----------------------------------------------------------------------------------

    def _id(self) -> str:
        if self.events and self.logs:
            return f"{self.position}:{self.line}"
        return str(self.position if self.events else self.line)

    def _queue(self, run: RunRecord) -> tuple[int | None, int]:
        if self.position == self.state.position:
            return self.state.queue.position(run.id), self.state.queue.length
        live = self.state.runs.by_id.get(run.id, run)
        return queue_at(self.state.runs.by_id.values(), live, self.position)

    def _document(self, run: RunRecord, queue: tuple[int | None, int]) -> dict[str, Any]:
        admin = identity(self.request).admin
        return run_document(run, self.state, self.app[keys.CONFIG], queue, admin=admin)

    def _status_message(self, kind: str) -> str:
        run = self._run()
        queue = self._queue(run)
        self.sent_queue = queue
        return message(self._document(run, queue), id=self._id(), event=kind)

    def _on_event(self, r: RecordedEvent) -> str:
        """The message an event causes for this run, if any."""
        self.position = r.position
        if r.stream == self.stream_name:
            self.past.apply(r)
            return self._status_message(
                "progress" if isinstance(r.event, RunProgressed) else "status"
            )
        run = self.past.get(self.run_id)
        if run is not None and run.status == RunStatus.QUEUED and isinstance(r.event, QUEUE_EVENTS):
            if self._queue(run) != self.sent_queue:
                return self._status_message("status")
        return ""

    def _estimate_message(self) -> str:
        """The run's estimate now, when it moved since the last one sent (live only)."""
        if not self.estimates or self.position != self.state.position:
            return ""
        live = self.state.runs.get(self.run_id)
        if live is None:
            return ""
        now = self.app[keys.CLOCK]()
        found = estimate_of(self.state, self.app[keys.CONFIG], live.id, live.status, now)
        if self.sent_estimate is not None:
            status, sent = self.sent_estimate
            if status == live.status and not _moved(sent, found):
                return ""
        elif found is None:
            return ""  # nothing to say yet
        self.sent_estimate = (live.status, found)
        return message({"Status": live.status, "Estimate": estimate_json(found)}, event="estimate")

    def _line_messages(self, lines: list[Any]) -> str:
        out = []
        for s in lines:
            self.line = s.line
            event = "log" if self.events else None
            out.append(message(s.as_text(self.timestamps), id=self._id(), event=event))
        return "".join(out)

    def _end_message(self) -> str:
        run = self._run()
        if self.events:
            data: Any = self._document(run, self._queue(run))
        else:
            data = {
                "StatusCode": run.exit_code if run.exit_code is not None else -1,
                "Status": run.status,
            }
        return message(data, id=self._id(), event="end")

    async def serve(self, stream: Stream, resumed: bool) -> None:
        """Send until the run has ended and everything was sent, then `end`."""
        if self.events and not resumed:
            await stream.write(self._status_message("status"))
        while True:
            out: list[str] = []
            if self.events or self.logs:
                for r in await self.store.read_from(self.position, 500):
                    if self.events:
                        out.append(self._on_event(r))
                    else:
                        self.position = r.position
                        if r.stream == self.stream_name:
                            self.past.apply(r)
            shared = None
            if self.logs and not self.events:  # the same message for every follower: shared
                shared = self.log_store.encoded_from(self.run_id, self.line, self.timestamps)
            if shared is not None:
                self.line = shared[1]
            elif self.logs:
                out.append(
                    self._line_messages(await self.log_store.read_from(self.run_id, self.line))
                )
            text = "".join(out).encode("utf-8")
            if shared is not None:
                text += shared[0]
            if text:
                await stream.write(text)
            if moved := self._estimate_message():
                await stream.write(moved)
            if self.position < self.store.head or (text and self.logs):
                continue  # more may be waiting already
            run = self._run()
            if self._ended(run) and (not self.logs or self.line >= await self._last_line()):
                await stream.write(self._end_message())
                return
            await self._wait(stream)

    async def _wait(self, stream: Stream) -> None:
        if self.store.head > self.position:
            return
        if self.logs and self.log_store.last_line(self.run_id) > self.line:
            return
        news = [self.store.advanced_future()]
        if self.logs:
            news.append(self.log_store.grew_future(self.run_id))
        await stream.wait_for_futures(*news)


ESTIMATE_STEP = 60.0  # seconds an estimate must move by to be sent again


def _moved(sent: Estimate | None, now: Estimate | None) -> bool:
    """Is the estimate worth sending again: new, gone, another basis, or a time moved by
    `ESTIMATE_STEP` or more (one whose step overran its median moves every second)?"""
    if sent is None or now is None:
        return sent != now
    start = abs((now.start_at - sent.start_at).total_seconds())
    end = abs((now.end_at - sent.end_at).total_seconds())
    return now.basis != sent.basis or max(start, end) >= ESTIMATE_STEP


async def follow(
    request: web.Request,
    run: RunRecord,
    *,
    events: bool,
    logs: bool,
    first_line: int = 0,
    timestamps: bool = False,
) -> web.StreamResponse:
    """Answer a stream request for `run` (204 when the client already has everything)."""
    follower = RunFollower(request, run, events=events, logs=logs, timestamps=timestamps)
    resumed = last_event_id(request) is not None
    if not await follower.start(first_line):
        return web.Response(status=204)
    stream = Stream(request)
    await stream.open()
    try:
        await follower.serve(stream, resumed)
    except ConnectionResetError:
        pass  # the client left; it resumes by id
    finally:
        await stream.close()
    return stream.response
