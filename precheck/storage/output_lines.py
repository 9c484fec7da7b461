"""Captured container output, one row per line, kept in `precheck.db` beside the event log.

Lines are not events: a noisy run prints millions, and they carry no decision. They are stored
durably as they arrive (group commit, like the event store) so they outlive the container and
a restart, and readers are woken when a run's log grows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path

import aiosqlite
import attrs

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS log_lines (
    run_id TEXT    NOT NULL,
    line   INTEGER NOT NULL,
    time   TEXT    NOT NULL,
    ts     REAL    NOT NULL,
    stream TEXT    NOT NULL,
    text   TEXT    NOT NULL,
    PRIMARY KEY (run_id, line)
) WITHOUT ROWID;
"""


@attrs.frozen
class OutputLine:
    """One captured line: its 1-based number in the run, Docker's timestamp, stream and text."""

    line: int
    time: str
    ts: float
    stream: str
    text: str


LineEncoder = Callable[[OutputLine, bool], bytes]  # (line, with timestamps) -> bytes to send


def _plain(s: OutputLine, timestamps: bool) -> bytes:
    return f"{s.time} {s.text}\n".encode() if timestamps else f"{s.text}\n".encode()


@attrs.frozen
class Tail:
    """Where a run's captured log ends: last line number, its time, lines sharing that time."""

    line: int
    time: str
    same_time: int


@attrs.define
class _Write:
    run_id: str
    lines: Sequence[OutputLine]
    done: asyncio.Future[None]


class OutputLineStore:
    """Durable per-run log lines with group commit and a wake-up per run."""

    RECENT = 20000  # lines per run kept in memory, so many followers share one copy
    WINDOWS = 32  # runs whose recent lines are kept

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        encoder: LineEncoder | None = None,
    ) -> None:
        self._recent: dict[str, deque[OutputLine]] = {}
        self._encode: LineEncoder = encoder or _plain
        # Each line of the window as one ready SSE message, per (run, timestamps): shared by
        # every follower of the run, so a line is formatted once however many follow it.
        self._sse: dict[tuple[str, bool], deque[bytes]] = {}
        self._writer_db = writer
        self._reader_db = reader
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._last: dict[str, int] = {}
        self._grew: dict[str, asyncio.Event] = {}
        self._grew_f: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path, encoder: LineEncoder | None = None) -> OutputLineStore:
        """Open the log table in the database at `path` and start its writer.

        `encoder` turns a line into the bytes followers are sent (SSE messages, from the web
        layer); `encoded_from` serves the window in that form.
        """
        from precheck.events.store import _connect  # same pragmas as the event log

        writer = await _connect(path)
        await writer.executescript(SCHEMA)
        await writer.commit()
        store = cls(writer, await _connect(path), encoder)
        store._task = asyncio.create_task(store._write_loop(), name="log-store-writer")
        return store

    async def close(self) -> None:
        """Write what is queued and close."""
        if self._closed:
            return
        self._closed = True
        await self._queue.put(None)
        if self._task is not None:
            await self._task
        for ev in self._grew.values():
            ev.set()
        for f in self._grew_f.values():
            if not f.done():
                f.set_result(None)
        await self._writer_db.close()
        await self._reader_db.close()

    async def tail(self, run_id: str) -> Tail:
        """Where the run's stored log ends (line 0 when it has none)."""
        async with self._reader_db.execute(
            "SELECT line, time FROM log_lines WHERE run_id = ? ORDER BY line DESC LIMIT 1",
            (run_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return Tail(0, "", 0)
        async with self._reader_db.execute(
            "SELECT COUNT(*) FROM log_lines WHERE run_id = ? AND time = ?", (run_id, row[1])
        ) as cur:
            (same,) = await cur.fetchone()  # type: ignore[misc]
        self._last.setdefault(run_id, row[0])
        return Tail(row[0], row[1], same)

    def publish(self, run_id: str, lines: Sequence[OutputLine]) -> None:
        """Show `lines` to readers now, from memory, before they are durable.

        A line shown and then lost in a crash is captured again with the same number and text
        (capture resumes from Docker after the last stored line), so readers never see a
        different line under an id they were sent.
        """
        if not lines:
            return
        self._remember(run_id, lines)
        self._last[run_id] = max(self._last.get(run_id, 0), lines[-1].line)
        self._wake(run_id)

    async def append(
        self, run_id: str, lines: Sequence[OutputLine], *, published: bool = False
    ) -> None:
        """Durably store `lines` (numbered by the caller, following on from the tail).

        They are published first unless the caller did (`published`).
        """
        if not lines:
            return
        if self._closed:
            raise RuntimeError("the log store is closed")
        if not published:
            self.publish(run_id, lines)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Write(run_id, lines, done))
        await done

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [] if first is None else [first]
            stop = first is None
            while not self._queue.empty():
                item = self._queue.get_nowait()
                stop = stop or item is None
                if item is not None:
                    batch.append(item)
            if batch:
                rows = [
                    (w.run_id, s.line, s.time, s.ts, s.stream, s.text)
                    for w in batch
                    for s in w.lines
                ]
                try:
                    await self._writer_db.executemany(
                        "INSERT OR IGNORE INTO log_lines VALUES (?,?,?,?,?,?)", rows
                    )
                    await self._writer_db.commit()
                except Exception as e:
                    log.exception("log store: writing %d lines failed", len(rows))
                    for w in batch:
                        if not w.done.done():
                            w.done.set_exception(e)
                else:
                    for w in batch:
                        if not w.done.done():
                            w.done.set_result(None)
            if stop:
                return

    def _remember(self, run_id: str, lines: Sequence[OutputLine]) -> None:
        recent = self._recent.pop(run_id, None) or deque(maxlen=self.RECENT)
        if recent and lines[0].line != recent[-1].line + 1:
            recent.clear()  # not contiguous (a resumed capture): start the window again
            self._drop_sse(run_id)
        recent.extend(lines)
        self._recent[run_id] = recent  # most recently written last
        for stamps in (False, True):
            enc = self._sse.get((run_id, stamps))
            if enc is not None:
                enc.extend(self._encode(s, stamps) for s in lines)
        while len(self._recent) > self.WINDOWS:
            gone = next(iter(self._recent))
            del self._recent[gone]
            self._drop_sse(gone)

    def _drop_sse(self, run_id: str) -> None:
        self._sse.pop((run_id, False), None)
        self._sse.pop((run_id, True), None)

    def encoded_from(
        self, run_id: str, after_line: int, timestamps: bool, limit: int = 1000
    ) -> tuple[bytes, int] | None:
        """Lines after `after_line` as ready SSE messages (id = line number) and the last line
        sent; None when the window does not hold them (the caller formats them itself)."""
        recent = self._recent.get(run_id)
        if recent and after_line >= recent[-1].line:
            return b"", after_line  # caught up
        if not recent or not recent[0].line <= after_line + 1 <= recent[-1].line:
            return None
        enc = self._sse.get((run_id, timestamps))
        if enc is None:
            enc = deque((self._encode(s, timestamps) for s in recent), maxlen=self.RECENT)
            self._sse[(run_id, timestamps)] = enc
        start = after_line + 1 - recent[0].line
        chunk = list(islice(enc, start, start + limit))
        return b"".join(chunk), after_line + len(chunk)

    async def read_from(self, run_id: str, after_line: int, limit: int = 1000) -> list[OutputLine]:
        """Lines after `after_line`, from memory when the window holds them, else from the file."""
        recent = self._recent.get(run_id)
        if recent and after_line >= recent[-1].line:
            return []  # caught up: the window ends at the last line written
        if recent and recent[0].line <= after_line + 1 <= recent[-1].line:
            start = after_line + 1 - recent[0].line
            return list(islice(recent, start, start + limit))
        lines, _ = await self.read(run_id, after_line=after_line, limit=limit)
        return lines

    def _wake(self, run_id: str) -> None:
        ev = self._grew.pop(run_id, None)
        if ev is not None:
            ev.set()
        f = self._grew_f.pop(run_id, None)
        if f is not None and not f.done():
            f.set_result(None)

    def grew_future(self, run_id: str) -> asyncio.Future[None]:
        """A future shared by every reader of the run, done when its log next grows."""
        f = self._grew_f.get(run_id)
        if f is None:
            f = self._grew_f[run_id] = asyncio.get_running_loop().create_future()
            if self._closed:
                f.set_result(None)
        return f

    def last_line(self, run_id: str) -> int:
        """The highest line number stored for the run in this process's view (0: none seen)."""
        return self._last.get(run_id, 0)

    async def wait_for_line(self, run_id: str, after: int) -> None:
        """Return once the run has a line after `after` (or the store closes)."""
        while self._last.get(run_id, 0) <= after and not self._closed:
            await self._grew.setdefault(run_id, asyncio.Event()).wait()

    def wake_all(self, run_id: str) -> None:
        """Wake readers of a run (its log will not grow: it ended)."""
        self._wake(run_id)

    async def read(
        self,
        run_id: str,
        *,
        after_line: int = 0,
        since: float | None = None,
        tail: int | None = None,
        limit: int = 10000,
    ) -> tuple[list[OutputLine], bool]:
        """Lines after `after_line` (and after unix time `since`), or the last `tail` of them.

        Returns the lines (at most `limit`, in order) and whether more follow them.
        """
        where, args = "run_id = ? AND line > ?", [run_id, after_line]
        if since is not None:
            where += " AND ts > ?"
            args.append(since)
        if tail is not None:
            sql = (
                f"SELECT line, time, ts, stream, text FROM (SELECT * FROM log_lines WHERE {where} "
                "ORDER BY line DESC LIMIT ?) ORDER BY line"
            )
            args.append(min(tail, limit))
            more = False
        else:
            sql = (
                f"SELECT line, time, ts, stream, text FROM log_lines WHERE {where} "
                "ORDER BY line LIMIT ?"
            )
            args.append(limit + 1)
        async with self._reader_db.execute(sql, args) as cur:
            rows = list(await cur.fetchall())
        if tail is None:
            more = len(rows) > limit
            rows = rows[:limit]
        return [OutputLine(*r) for r in rows], more

    async def delete_run(self, run_id: str) -> None:
        """Drop a retired run's lines (after the event that retired it)."""
        self._drop_sse(run_id)
        await self._writer_db.execute("DELETE FROM log_lines WHERE run_id = ?", (run_id,))
        await self._writer_db.commit()
        self._last.pop(run_id, None)
