"""Captured container output, kept in `precheck.db` beside the event log.

Lines are not events: a noisy run prints millions, and they carry no decision. They travel and
are stored in blocks (`LineBlock`: consecutive lines of one stream), so a flood of short lines
costs a few operations per block rather than per line. Blocks are stored durably as they arrive
(group commit through `precheck.storage.sqlite_writer`, like the event store) so they outlive
the container and a restart, and readers are woken when a run's log grows. Readers still see
numbered lines (`OutputLine`), made from the blocks they read.
"""

from __future__ import annotations

import asyncio
import sqlite3
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

import aiosqlite
import attrs

from precheck.storage.docker_time import docker_seconds
from precheck.storage.files import StorageRefused
from precheck.storage.resource_samples import ResourceSampleStore
from precheck.storage.sqlite_writer import SQLiteWriter, connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS output_blocks (
    run_id  TEXT    NOT NULL,
    first   INTEGER NOT NULL,  -- number of the block's first line in the run
    last    INTEGER NOT NULL,  -- and of its last
    stream  TEXT    NOT NULL,
    lines   TEXT    NOT NULL,  -- "<Docker's RFC 3339 time> <text>" of each, one per line
    ts_last REAL    NOT NULL   -- unix time of the block's latest line, for `since`
);
-- Blocks follow each other without overlap: ordered by their last line as by their first, and
-- the one holding line N is the first whose last line is N or more.
CREATE UNIQUE INDEX IF NOT EXISTS output_blocks_by_last ON output_blocks (run_id, last);
"""
# Lines of one stored block at most, so reading one line decodes few others. A block's bytes
# are bounded by what one read from Docker brings (and one line by `docker.max_line_kib`).
BLOCK_LINES = 1000


@attrs.frozen
class OutputLine:
    """One captured line: its 1-based number in the run, Docker's timestamp, stream and text."""

    line: int
    time: str
    stream: str
    text: str

    @property
    def ts(self) -> float:
        """The line's time as unix seconds."""
        return docker_seconds(self.time)

    def as_text(self, timestamps: bool) -> str:
        """The line as `/logs` serves it: `<time> <text>` with timestamps, else `<text>`; also
        how a block keeps it (`LineBlock.raw`)."""
        return f"{self.time} {self.text}" if timestamps else self.text


@attrs.frozen
class LineBlock:
    """Consecutive lines of one stream, numbered from `first`, as Docker sent them with
    timestamps: `raw` is each `<RFC 3339 time> <text>` joined by newlines (a line never holds
    one: lines were split on them). Kept whole, from the read from Docker to the disk, so a
    flood of short lines costs a few operations per block, not per line; a line is taken apart
    only when read. A block just read from Docker is not numbered yet: `first` is 0."""

    first: int
    stream: str
    raw: str
    count: int  # lines in `raw`

    def times(self) -> list[str]:
        """Docker's timestamp text of each line (to resume from exactly)."""
        return [line.partition(" ")[0] for line in self.raw.split("\n")]

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    @property
    def last_time(self) -> str:
        return self.raw[self.raw.rfind("\n") + 1 :].partition(" ")[0]

    def lines(self, after: int = 0, limit: int | None = None) -> list[OutputLine]:
        """The block's lines numbered after `after`, at most `limit` of them."""
        start = max(0, after + 1 - self.first)
        stop = self.count if limit is None else min(self.count, start + limit)
        parts = self.raw.split("\n")[start:stop]
        return [
            OutputLine(self.first + start + i, stamp, self.stream, text)
            for i, (stamp, _, text) in enumerate(part.partition(" ") for part in parts)
        ]

    def texts(self) -> list[str]:
        """Each line's text, without its time."""
        return [part.partition(" ")[2] for part in self.raw.split("\n")]

    def pieces(self, size: int) -> list[LineBlock]:
        """The block cut into blocks of at most `size` lines."""
        if self.count <= size:
            return [self]
        parts = self.raw.split("\n")
        pieces = [parts[i : i + size] for i in range(0, self.count, size)]
        return [
            LineBlock(self.first + i * size, self.stream, "\n".join(piece), len(piece))
            for i, piece in enumerate(pieces)
        ]


def blocks_of(lines: Iterable[OutputLine]) -> list[LineBlock]:
    """Numbered lines (consecutive numbers) as blocks: one per run of a stream."""
    runs: list[tuple[int, str, list[str]]] = []
    for line in lines:
        if "\n" in line.text:
            raise ValueError(f"line {line.line}: a line's text holds no newline")
        if runs and runs[-1][1] == line.stream and runs[-1][0] + len(runs[-1][2]) == line.line:
            runs[-1][2].append(line.as_text(timestamps=True))
        else:
            runs.append((line.line, line.stream, [line.as_text(timestamps=True)]))
    return [LineBlock(first, stream, "\n".join(raw), len(raw)) for first, stream, raw in runs]


LineEncoder = Callable[[OutputLine, bool], bytes]  # (line, with timestamps) -> bytes to send


def _plain(s: OutputLine, timestamps: bool) -> bytes:
    return f"{s.as_text(timestamps)}\n".encode()


@attrs.frozen
class Tail:
    """Where a run's captured log ends: last line number, its time, lines sharing that time."""

    line: int
    time: str
    same_time: int


class _Window:
    """A run's most recent lines in memory (about `size`), in the blocks they came in, and
    each line as a ready SSE message once a follower asked for that form."""

    def __init__(self, size: int, encode: LineEncoder) -> None:
        self.size = size
        self.encode = encode
        self.blocks: list[LineBlock] = []
        self.firsts: list[int] = []  # each block's first line, to find a line by bisection
        self.count = 0
        self.encoded: dict[bool, list[bytes]] = {}  # per `timestamps`, one message per line

    @property
    def first(self) -> int:
        return self.firsts[0]

    @property
    def last(self) -> int:
        return self.blocks[-1].last

    def extend(self, blocks: Sequence[LineBlock]) -> None:
        """Add `blocks`; a gap in the numbers (a resumed capture) starts the window again."""
        if self.blocks and blocks[0].first != self.last + 1:
            self.blocks, self.firsts, self.count, self.encoded = [], [], 0, {}
        for b in blocks:
            self.blocks.append(b)
            self.firsts.append(b.first)
            self.count += b.count
            for stamps, messages in self.encoded.items():
                messages.extend(self.encode(s, stamps) for s in b.lines())
        drop = 0
        while self.count - self.blocks[drop].count >= self.size:
            self.count -= self.blocks[drop].count
            drop += 1
        if drop:
            gone = self.blocks[drop].first - self.firsts[0]
            del self.blocks[:drop], self.firsts[:drop]
            for messages in self.encoded.values():
                del messages[:gone]

    def holds_next(self, after: int) -> bool:
        return bool(self.blocks) and self.first <= after + 1 <= self.last

    def read(self, after: int, limit: int) -> list[OutputLine]:
        out: list[OutputLine] = []
        i = bisect_right(self.firsts, after + 1) - 1
        while i < len(self.blocks) and len(out) < limit:
            out += self.blocks[i].lines(after, limit - len(out))
            i += 1
        return out

    def messages(self, after: int, timestamps: bool, limit: int) -> list[bytes]:
        messages = self.encoded.get(timestamps)
        if messages is None:
            messages = self.encoded[timestamps] = [
                self.encode(s, timestamps) for b in self.blocks for s in b.lines()
            ]
        start = after + 1 - self.first
        return messages[start : start + limit]


@attrs.define
class _Write:
    run_id: str
    blocks: Sequence[LineBlock]


@attrs.define
class _Delete:
    run_id: str


_INSERT = "INSERT OR IGNORE INTO output_blocks VALUES (?,?,?,?,?,?)"
_COLUMNS = "first, stream, lines, last"


def _row(run_id: str, b: LineBlock) -> tuple[object, ...]:
    # Docker stamps one stream's lines in order: the last is the latest (the first is checked
    # too, so a clock step back inside a block can only widen what `since` reads).
    ts_last = max(docker_seconds(b.raw.partition(" ")[0]), docker_seconds(b.last_time))
    return (run_id, b.first, b.last, b.stream, b.raw, ts_last)


def _block(row: Sequence[object]) -> LineBlock:
    first, stream, raw = (str(x) for x in row[:3])
    return LineBlock(int(first), stream, raw, raw.count("\n") + 1)


class OutputLineStore:
    """Durable per-run log lines with group commit and a wake-up per run."""

    RECENT = 20000  # lines per run kept in memory, so many followers share one copy
    WINDOWS = 32  # runs whose recent lines are kept

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        encoder: LineEncoder | None = None,
        path: Path = Path("precheck.db"),
        resources: ResourceSampleStore | None = None,
    ) -> None:
        self.path = path
        # The run's resource timeline, kept beside its lines and deleted with them.
        self.resources = resources
        self._recent: dict[str, _Window] = {}
        self._encode: LineEncoder = encoder or _plain
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
            await _from_line_rows(writer)
            await writer.commit()
            reader = await connect(path)
        except BaseException as e:
            await writer.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise unreadable(path, e) from e
            raise
        try:
            resources = await ResourceSampleStore.open(path)
        except BaseException as e:
            await writer.close()
            await reader.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise unreadable(path, e) from e
            raise
        return cls(writer, reader, encoder, path, resources)

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
            if self.resources is not None:
                await self.resources.close()

    async def _blocks(
        self, run_id: str, after: int, *, since: float | None = None, backwards: bool = False
    ) -> AsyncIterator[LineBlock]:
        """The run's stored blocks holding lines after `after` (and a line after `since`), in
        order or from the end, read a page at a time."""
        where, args = "run_id = ? AND last > ?", [run_id, after]
        if since is not None:
            where += " AND ts_last > ?"
            args.append(since)
        order = "DESC" if backwards else ""
        bound, size = None, 1  # pages grow from one block: most reads need one or two
        while True:
            page = where
            if bound is not None:
                page += " AND last < ?" if backwards else " AND last > ?"
            sql = f"SELECT {_COLUMNS} FROM output_blocks WHERE {page} ORDER BY last {order}"
            sql += f" LIMIT {size}"
            params = args if bound is None else [*args, bound]
            async with self._reader_db.execute(sql, params) as cur:
                rows = list(await cur.fetchall())
            for row in rows:
                yield _block(row)
            if len(rows) < size:
                return
            bound, size = int(rows[-1][3]), min(2 * size, 64)

    async def tail(self, run_id: str) -> Tail:
        """Where the run's stored log ends (line 0 when it has none)."""
        last, same = None, 0
        async for b in self._blocks(run_id, 0, backwards=True):
            if last is None:
                last = OutputLine(b.last, b.last_time, b.stream, "")
            at = last.time + " "
            same += b.raw.count("\n" + at) + b.raw.startswith(at)
            if not b.raw.startswith(at):
                break  # the block begins before that instant: the lines before it do too
        if last is None:
            return Tail(0, "", 0)
        self._last.setdefault(run_id, last.line)
        return Tail(last.line, last.time, same)

    async def end(self, run_id: str) -> int:
        """The number of the run's last line, stored or shown (0: none), from the index."""
        async with self._reader_db.execute(
            "SELECT MAX(last) FROM output_blocks WHERE run_id = ?", (run_id,)
        ) as cur:
            row = await cur.fetchone()
        return max(self._last.get(run_id, 0), int(row[0] or 0) if row else 0)

    def publish(self, run_id: str, blocks: Sequence[LineBlock]) -> None:
        """Show `blocks` to readers now, from memory, before they are durable.

        A line shown and then lost in a crash is captured again with the same number and text
        (capture resumes from Docker after the last stored line), so readers never see a
        different line under an id they were sent.
        """
        if not blocks:
            return
        window = self._recent.pop(run_id, None) or _Window(self.RECENT, self._encode)
        window.extend(blocks)
        self._recent[run_id] = window  # most recently written last
        while len(self._recent) > self.WINDOWS:
            del self._recent[next(iter(self._recent))]
        self._last[run_id] = max(self._last.get(run_id, 0), blocks[-1].last)
        self._wake(run_id)

    async def append(
        self, run_id: str, blocks: Sequence[LineBlock], *, published: bool = False
    ) -> None:
        """Durably store `blocks` (numbered by the caller, following on from the tail).

        They are published first unless the caller did (`published`).
        """
        if not blocks:
            return
        if self._closed:
            raise RuntimeError("the log store is closed")
        if not published:
            self.publish(run_id, blocks)
        await self._writer.submit(_Write(run_id, blocks))

    def _after_commit(self, batch: list[_Write | _Delete], written: None) -> list[None]:
        for w in batch:
            if isinstance(w, _Delete):
                self._last.pop(w.run_id, None)
        return [None] * len(batch)

    def encoded_from(
        self, run_id: str, after_line: int, timestamps: bool, limit: int = 1000
    ) -> tuple[bytes, int] | None:
        """Lines after `after_line` as ready SSE messages (id = line number) and the last line
        sent; None when the window does not hold them (the caller formats them itself)."""
        window = self._recent.get(run_id)
        if window is not None and window.blocks and after_line >= window.last:
            return b"", after_line  # caught up
        if window is None or not window.holds_next(after_line):
            return None
        chunk = window.messages(after_line, timestamps, limit)
        return b"".join(chunk), after_line + len(chunk)

    async def read_from(self, run_id: str, after_line: int, limit: int = 1000) -> list[OutputLine]:
        """Lines after `after_line`, from memory when the window holds them, else from the file."""
        window = self._recent.get(run_id)
        if window is not None and window.blocks and after_line >= window.last:
            return []  # caught up: the window ends at the last line written
        if window is not None and window.holds_next(after_line):
            return window.read(after_line, limit)
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
        want = min(tail, limit) if tail is not None else limit + 1
        out: list[OutputLine] = []
        if want <= 0:
            return [], False
        async for b in self._blocks(run_id, after_line, since=since, backwards=tail is not None):
            lines = b.lines(after_line)
            if since is not None:
                lines = [s for s in lines if s.ts > since]
            if tail is not None:
                out[:0] = lines[-(want - len(out)) :]
            else:
                out += lines[: want - len(out)]
            if len(out) >= want:
                break
        if tail is not None:
            return out, False
        return out[:limit], len(out) > limit

    async def read_blocks(self, run_id: str, after_line: int = 0) -> AsyncIterator[LineBlock]:
        """Every stored block of the run after line `after_line`, in order, the first one cut
        to start after it: for reading a whole log without an object per line."""
        async for b in self._blocks(run_id, after_line):
            if b.first <= after_line:
                skip = after_line + 1 - b.first
                raw = "\n".join(b.raw.split("\n")[skip:])
                b = LineBlock(after_line + 1, b.stream, raw, b.count - skip)
            yield b

    async def run_ids(self) -> set[str]:
        """The runs that have stored lines (read at start: a damaged table refuses it, with
        `StorageRefused`)."""
        try:
            async with self._reader_db.execute("SELECT DISTINCT run_id FROM output_blocks") as cur:
                return {str(row[0]) for row in await cur.fetchall()}
        except sqlite3.DatabaseError as e:
            raise unreadable(self.path, e) from e

    async def bytes_by_run(self, run_id: str | None = None) -> dict[str, int]:
        """How many bytes of lines each run (or only `run_id`) has stored (for retention)."""
        where, args = ("WHERE run_id = ? ", (run_id,)) if run_id is not None else ("", ())
        sql = f"SELECT run_id, SUM(LENGTH(lines)) FROM output_blocks {where}GROUP BY run_id"
        async with self._reader_db.execute(sql, args) as cur:
            return {str(row[0]): int(row[1] or 0) for row in await cur.fetchall()}

    async def delete_run(self, run_id: str) -> None:
        """Drop a retired run's lines and samples (after the event that retired it), through the
        writer:
        in order with the writes queued before it, and durable when this returns."""
        self._recent.pop(run_id, None)
        await self._writer.submit(_Delete(run_id))
        if self.resources is not None:
            await self.resources.delete_run(run_id)


def unreadable(path: Path, e: sqlite3.DatabaseError) -> StorageRefused:
    """Why the server does not start on output lines it cannot read, and the way out."""
    return StorageRefused(
        f"{path}: the output lines stored there cannot be read ({e}); the server did not start"
        f" and changed nothing. `precheck-server verify` checks the event log kept in the same"
        f" file; restore {path.name} from a backup of this folder (stop the server first)."
    )


async def _write_batch(db: aiosqlite.Connection, batch: list[_Write | _Delete]) -> None:
    """Insert the batch's blocks, and delete the runs it retires in their place in the order."""
    rows: list[tuple[object, ...]] = []
    for w in batch:
        if isinstance(w, _Write):
            rows.extend(_row(w.run_id, p) for b in w.blocks for p in b.pieces(BLOCK_LINES))
        else:
            if rows:
                await db.executemany(_INSERT, rows)
                rows = []
            await db.execute("DELETE FROM output_blocks WHERE run_id = ?", (w.run_id,))
    if rows:
        await db.executemany(_INSERT, rows)


async def _from_line_rows(db: aiosqlite.Connection) -> None:
    """Move lines stored one row per line (the table before blocks) into blocks, once."""
    async with db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'log_lines'"
    ) as cur:
        if await cur.fetchone() is None:
            return
    async with db.execute(
        "SELECT run_id, line, time, stream, text FROM log_lines ORDER BY run_id, line"
    ) as cur:
        run, lines = "", list[OutputLine]()
        async for row in cur:
            if row[0] != run and lines:
                await _insert_lines(db, run, lines)
                lines = []
            run = row[0]
            lines.append(OutputLine(row[1], row[2], row[3], row[4].replace("\n", " ")))
            if len(lines) >= 100_000:  # a long log moves in parts: memory stays bounded
                await _insert_lines(db, run, lines)
                lines = []
        if lines:
            await _insert_lines(db, run, lines)
    await db.execute("DROP TABLE log_lines")


async def _insert_lines(db: aiosqlite.Connection, run_id: str, lines: list[OutputLine]) -> None:
    blocks = [piece for b in blocks_of(lines) for piece in b.pieces(BLOCK_LINES)]
    await db.executemany(_INSERT, [_row(run_id, b) for b in blocks])
