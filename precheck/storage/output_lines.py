"""Captured container output, one row per line, kept in `precheck.db` beside the event log.

Lines are not events: a noisy run prints millions, and they carry no decision. They are stored
durably as they arrive (group commit through `precheck.storage.sqlite_writer`, like the event
store) so they outlive the container and a restart, and readers are woken when a run's log grows.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path

import aiosqlite
import attrs

from precheck.storage.sqlite_writer import SQLiteWriter, connect

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


@attrs.define
class _Delete:
    run_id: str


_INSERT = "INSERT OR IGNORE INTO log_lines VALUES (?,?,?,?,?,?)"


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
        self._reader_db = reader
        self._writer: SQLiteWriter[_Write | _Delete, None, None] = SQLiteWriter(
            writer,
            _write_batch,
            self._after_commit,
            name="log-store-writer",
            closed=lambda: RuntimeError("the log store is closed"),
        )
        self._last: dict[str, int] = {}
        self._grew: dict[str, asyncio.Future[None]] = {}  # per run, shared by its readers
        self._closed = False

    @classmethod
    async def open(cls, path: Path, encoder: LineEncoder | None = None) -> OutputLineStore:
        """Open the log table in the database at `path` and start its writer.

        `encoder` turns a line into the bytes followers are sent (SSE messages, from the web
        layer); `encoded_from` serves the window in that form.
        """
        writer = await connect(path)
        try:
            await writer.executescript(SCHEMA)
            await writer.commit()
            reader = await connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader, encoder)

    async def close(self) -> None:
        """Write what is queued and close."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writer.close()
        finally:
            for f in self._grew.values():
                if not f.done():
                    f.set_result(None)
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
        await self._writer.submit(_Write(run_id, lines))

    def _after_commit(self, batch: list[_Write | _Delete], written: None) -> list[None]:
        for w in batch:
            if isinstance(w, _Delete):
                self._last.pop(w.run_id, None)
        return [None] * len(batch)

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
        f = self._grew.pop(run_id, None)
        if f is not None and not f.done():
            f.set_result(None)

    def grew_future(self, run_id: str) -> asyncio.Future[None]:
        """A future shared by every reader of the run, done when its log next grows (or the
        store closes). Wait on it with `asyncio.wait`, never by awaiting it in a task that may
        be cancelled: that would cancel it for every other reader too."""
        f = self._grew.get(run_id)
        if f is None:
            f = self._grew[run_id] = asyncio.get_running_loop().create_future()
            if self._closed:
                f.set_result(None)
        return f

    def last_line(self, run_id: str) -> int:
        """The highest line number stored for the run in this process's view (0: none seen)."""
        return self._last.get(run_id, 0)

    async def wait_for_line(self, run_id: str, after: int) -> None:
        """Return once the run has a line after `after` (or the store closes)."""
        while self._last.get(run_id, 0) <= after and not self._closed:
            await asyncio.wait((self.grew_future(run_id),))

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

    async def run_ids(self) -> set[str]:
        """The runs that have stored lines."""
        async with self._reader_db.execute("SELECT DISTINCT run_id FROM log_lines") as cur:
            return {str(row[0]) for row in await cur.fetchall()}

    async def delete_run(self, run_id: str) -> None:
        """Drop a retired run's lines (after the event that retired it), through the writer:
        in order with the writes queued before it, and durable when this returns."""
        self._drop_sse(run_id)
        await self._writer.submit(_Delete(run_id))


async def _write_batch(db: aiosqlite.Connection, batch: list[_Write | _Delete]) -> None:
    """Insert the batch's lines, and delete the runs it retires in their place in the order."""
    rows: list[tuple[object, ...]] = []
    for w in batch:
        if isinstance(w, _Write):
            rows.extend((w.run_id, s.line, s.time, s.ts, s.stream, s.text) for s in w.lines)
        else:
            if rows:
                await db.executemany(_INSERT, rows)
                rows = []
            await db.execute("DELETE FROM log_lines WHERE run_id = ?", (w.run_id,))
    if rows:
        await db.executemany(_INSERT, rows)
