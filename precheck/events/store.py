"""The append-only event log in SQLite.

One writer task owns all appends: concurrent `append` calls queue up and are written by one
transaction (group commit, `precheck.storage.sqlite_writer`), so a durable write costs one fsync
per batch, not per event. The store keeps the head position and the last chain hash in memory,
and the version of each stream written or checked since it opened: a stream's version is read
from the log (through the `UNIQUE(stream, version)` index) when an append first needs it, by
the writer, so opening a log of millions of events reads none of them. That constraint and the
integer primary key stay as the database's own guard against another writer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import aiosqlite
import attrs

from precheck.events.codec import decode, decode_metadata, encode, encode_metadata, iso
from precheck.events.types import Event, Metadata, stream_of
from precheck.storage.sqlite_writer import SQLiteWriter, connect

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream   TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    type     TEXT    NOT NULL,
    schema   INTEGER NOT NULL,
    data     TEXT    NOT NULL,
    metadata TEXT    NOT NULL,
    recorded TEXT    NOT NULL,
    hash     TEXT    NOT NULL,
    UNIQUE (stream, version)
);
CREATE TRIGGER IF NOT EXISTS events_are_never_updated BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS events_are_never_deleted BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE refused'); END;
"""

GENESIS = "0" * 64
_COLUMNS = "position, stream, version, type, schema, data, metadata, recorded, hash"
_PER_QUERY = 500  # streams whose versions one query reads (SQLite bounds a query's arguments)


class StoreError(Exception):
    """Root of the event store's errors."""


class ConcurrencyError(StoreError):
    """A stream did not have the version the append expected; nothing was written."""


class StoreClosed(StoreError):
    """The store was closed before the append could be written."""


class RecordedEvent(NamedTuple):
    """An event as stored: its global position, stream, version within the stream and time.

    A named tuple rather than an attrs class: a replay makes one per event, and a tuple is
    built several times faster.
    """

    position: int
    stream: str
    version: int
    event: Event
    metadata: Metadata
    recorded: datetime
    type: str
    hash: str


@attrs.frozen
class ChainReport:
    """Result of checking the hash chain: `first_bad` is None when every row checks out."""

    checked: int
    first_bad: int | None
    reason: str = ""


def chain_hash(
    prev: str,
    position: int,
    stream: str,
    version: int,
    type_: str,
    schema: int,
    data: str,
    metadata: str,
    recorded: str,
) -> str:
    """The hash of one row, chained to the hash of the row before it."""
    fields = (prev, position, stream, version, type_, schema, data, metadata, recorded)
    text = "\n".join(map(str, fields))
    return hashlib.sha256(text.encode()).hexdigest()


@attrs.define
class _Append:
    events: Sequence[Event]
    metadata: Metadata
    expect: Mapping[str, int]


Outcome = list[RecordedEvent] | StoreError  # the recorded events, or why the append failed


class _Batch(NamedTuple):
    """A batch as written: its rows, the events as recorded, the streams' new versions, and
    per append (in order) its recorded events or why it was refused."""

    rows: list[tuple[object, ...]]
    recorded: list[RecordedEvent]
    versions: dict[str, int]
    outcomes: list[Outcome]


Listener = Callable[[RecordedEvent], None]


class EventStore:
    """Append-only, hash-chained event log with group commit; live readers follow it with
    `read_from` and `wait_beyond` (or `advanced_future`)."""

    RECENT = 8192  # events kept in memory so live readers rarely read the file
    MAX_BATCH = 2000

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        """Take over two open connections to `path`; call only from a running event loop."""
        self.path = path
        self._writer_db = writer
        self._reader_db = reader
        self._writer: SQLiteWriter[_Append, _Batch, list[RecordedEvent]] = SQLiteWriter(
            writer,
            self._write_batch,
            self._after_commit,
            name="event-store-writer",
            max_batch=self.MAX_BATCH,
            skip_abandoned=True,  # a caller that went away has nothing to write
            failed=lambda e: StoreError(f"append failed: {e}"),
            closed=lambda: StoreClosed("the event store is closed"),
        )
        self._head = 0
        self._last_hash = GENESIS
        # Streams' versions, as the writer learnt them: every stream it wrote or checked since
        # the open, each read from the log first. Only the writer sets them.
        self._versions: dict[str, int] = {}
        self._recent: deque[RecordedEvent] = deque(maxlen=self.RECENT)
        self._advanced: asyncio.Future[None] | None = None  # shared by every waiter
        self._listeners: list[Listener] = []
        self._closed = False
        self.append_observer: Callable[[float], None] | None = None  # seconds per append

    # Opening and closing ----------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path) -> EventStore:
        """Open (creating if needed) the log at `path` and start its writer."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await connect(path)
        try:
            await writer.executescript(SCHEMA)
            await writer.commit()
            reader = await connect(path)
        except BaseException:
            await writer.close()
            raise
        store = cls(path, writer, reader)
        try:
            await store._load_state()  # before anyone can append: the writer waits idle
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Write what is queued, stop the writer and close the file."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writer.close()  # writes what is queued, then closes the connection
        finally:
            self._wake()
            await self._reader_db.close()

    async def _load_state(self) -> None:
        async with self._writer_db.execute(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        ) as cur:
            row = await cur.fetchone()
        self._head, self._last_hash = (row[0], row[1]) if row else (0, GENESIS)
        self._versions = {}  # read again as appends need them

    async def _read_versions(
        self, db: aiosqlite.Connection, streams: Iterable[str]
    ) -> dict[str, int]:
        """The versions of `streams` in the log (0: no events), read through its index."""
        found = dict.fromkeys(streams, 0)
        names = list(found)
        for start in range(0, len(names), _PER_QUERY):
            chunk = names[start : start + _PER_QUERY]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT stream, MAX(version) FROM events WHERE stream IN ({marks}) GROUP BY 1"
            async with db.execute(sql, chunk) as cur:
                found.update({s: v for s, v in await cur.fetchall()})
        return found

    async def _learn_versions(self, db: aiosqlite.Connection, batch: list[_Append]) -> None:
        """Read the versions of the streams `batch` writes or checks that are not known yet."""
        known = self._versions
        missing = {
            s for a in batch for s in (*a.expect, *map(stream_of, a.events)) if s not in known
        }
        if missing:
            known.update(await self._read_versions(db, missing))

    # Writing ----------------------------------------------------------------------------------

    @property
    def head(self) -> int:
        """Position of the last committed event (0 for an empty log)."""
        return self._head

    async def version_of(self, stream: str) -> int:
        """Current version of `stream` (0 if it has no events)."""
        if stream in self._versions:
            return self._versions[stream]
        if self._closed:
            raise StoreClosed("the event store is closed")
        # Not kept: only the writer sets versions, in order with its commits.
        return (await self._read_versions(self._reader_db, [stream]))[stream]

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` with every committed event, in position order, before appends return."""
        self._listeners.append(listener)

    async def append(
        self,
        events: Sequence[Event],
        metadata: Metadata,
        expect: Mapping[str, int] | None = None,
    ) -> list[RecordedEvent]:
        """Durably append `events` as one atomic unit and return them as recorded.

        `expect` maps a stream to the version it must have now (0: no events yet), whether or
        not this append writes to it; on a mismatch `ConcurrencyError` is raised and nothing
        is written.
        """
        if self._closed:
            raise StoreClosed("the event store is closed")
        if not events:
            return []
        loop = asyncio.get_running_loop()
        started = loop.time()
        recorded = await self._writer.submit(_Append(events, metadata, dict(expect or {})))
        if self.append_observer is not None:
            self.append_observer(loop.time() - started)
        return recorded

    async def _write_batch(self, db: aiosqlite.Connection, batch: list[_Append]) -> _Batch:
        """Insert the batch's accepted rows; the writer commits them."""
        for attempt in (1, 2):
            await self._learn_versions(db, batch)
            prepared = self._prepare(batch)
            if not prepared.rows:
                break
            try:
                await db.executemany(
                    f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", prepared.rows
                )
                break
            except sqlite3.IntegrityError:
                # Another process appended to the file: learn its state and decide again.
                await db.rollback()
                if attempt == 2:
                    raise
                await self._load_state()
        return prepared

    def _prepare(self, batch: list[_Append]) -> _Batch:
        """Check expectations, number the rows and chain their hashes, without touching state."""
        versions: dict[str, int] = {}
        position, prev = self._head, self._last_hash
        now = datetime.now(UTC)
        now_text = iso(now)
        rows: list[tuple[object, ...]] = []
        recorded: list[RecordedEvent] = []
        outcomes: list[Outcome] = []
        for a in batch:
            wrong = [
                (s, v, versions.get(s, self._versions[s]))
                for s, v in a.expect.items()
                if versions.get(s, self._versions[s]) != v
            ]
            if wrong:
                s, want, have = wrong[0]
                outcomes.append(
                    ConcurrencyError(f"stream {s} is at version {have}, expected {want}")
                )
                continue
            # Built apart, so an append that cannot be stored fails alone, not its batch.
            mine: list[tuple[object, ...]] = []
            done: list[RecordedEvent] = []
            seen, pos, chain = dict(versions), position, prev
            try:
                meta = encode_metadata(a.metadata)
                meta.encode("utf-8")  # a lone surrogate cannot be stored as text
                for event in a.events:
                    stream = stream_of(event)
                    version = seen.get(stream, self._versions[stream]) + 1
                    seen[stream] = version
                    pos += 1
                    tag, schema, data = encode(event)
                    data.encode("utf-8")
                    chain = chain_hash(
                        chain, pos, stream, version, tag, schema, data, meta, now_text
                    )
                    mine.append((pos, stream, version, tag, schema, data, meta, now_text, chain))
                    done.append(
                        RecordedEvent(pos, stream, version, event, a.metadata, now, tag, chain)
                    )
            except (UnicodeError, ValueError, TypeError) as e:
                outcomes.append(StoreError(f"append refused: it cannot be stored: {e}"))
                continue
            versions, position, prev = seen, pos, chain
            rows.extend(mine)
            recorded.extend(done)
            outcomes.append(done)
        return _Batch(rows, recorded, versions, outcomes)

    def _after_commit(self, batch: list[_Append], written: _Batch) -> list[Outcome]:
        """Apply a committed batch (state, recent window, listeners, waiters) and hand back each
        append's outcome. The writer settles the appends only after this: one refused fails
        once the events that beat it are applied, so a caller that decides again sees them
        instead of the same stale state."""
        if written.recorded:
            self._publish(written.recorded, written.versions)
        return written.outcomes

    def _publish(self, recorded: list[RecordedEvent], versions: dict[str, int]) -> None:
        self._versions.update(versions)
        self._head = recorded[-1].position
        self._last_hash = recorded[-1].hash
        for r in recorded:
            self._recent.append(r)
            for listener in self._listeners:
                try:
                    listener(r)
                except Exception:
                    log.exception("event store: listener failed on position %d", r.position)
        self._wake()

    def _wake(self) -> None:
        f, self._advanced = self._advanced, None
        if f is not None and not f.done():
            f.set_result(None)

    def advanced_future(self) -> asyncio.Future[None]:
        """A future shared by every waiter, done when the head next moves (or the store closes).

        Wait on it with `asyncio.wait` (or `wait_beyond`), never by awaiting it in a task that
        may be cancelled: that would cancel it for every other waiter too.
        """
        if self._advanced is None:
            self._advanced = asyncio.get_running_loop().create_future()
            if self._closed:
                self._advanced.set_result(None)
        return self._advanced

    async def wait_beyond(self, position: int) -> None:
        """Return once the head is past `position` (or the store closes)."""
        while self._head <= position and not self._closed:
            await asyncio.wait((self.advanced_future(),))

    # Reading ----------------------------------------------------------------------------------

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        stream: str | None = None,
        where: tuple[str, tuple[object, ...]] = ("", ()),
    ) -> list[RecordedEvent]:
        """Up to `limit` events after position `after`, in position order; of one `stream`, and
        matching `where` (an SQL clause starting with AND, and its arguments), if given."""
        return list(_decoded(await self._rows(after, limit, stream, where)))

    async def _rows(
        self,
        after: int,
        limit: int,
        stream: str | None = None,
        where: tuple[str, tuple[object, ...]] = ("", ()),
    ) -> list[sqlite3.Row]:
        if self._closed:  # its file can no longer be read
            raise StoreClosed("the event store is closed")
        clause, extra = where
        if stream is not None:
            clause, extra = " AND stream = ?" + clause, (stream, *extra)
        sql = f"SELECT {_COLUMNS} FROM events WHERE position > ?{clause} ORDER BY position LIMIT ?"
        args = (after, *extra, limit)
        async with self._reader_db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def position_at(self, t: datetime) -> int:
        """The position of the last event recorded at or before `t` (0: none was)."""
        sql = "SELECT max(position) FROM events WHERE recorded <= ?"
        async with self._reader_db.execute(sql, (iso(t),)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def read_all(self, after: int = 0, page: int = 5000) -> AsyncIterator[RecordedEvent]:
        """Every event after `after` that is committed now, read in pages."""
        async for events in self.read_pages(after, page):
            for r in events:
                yield r

    async def read_pages(
        self, after: int = 0, page: int = 5000
    ) -> AsyncIterator[Iterator[RecordedEvent]]:
        """`read_all` a page at a time, each page an iterator: a replay's inner loop then has
        no await per event."""
        end = self._head
        # The next page is read in the database's thread while this one is decoded here.
        ahead: asyncio.Future[list[sqlite3.Row]] | None = None
        try:
            while after < end:
                rows = await (ahead or self._rows(after, min(page, end - after)))
                ahead = None
                if not rows:
                    return
                after = rows[-1][0]
                if after < end:
                    ahead = asyncio.ensure_future(self._rows(after, min(page, end - after)))
                # Each row is decoded as it is consumed, not the page at once: a replay's
                # events then die young, instead of piling into the oldest GC generation and
                # making the collector rescan the whole read models again and again.
                yield _decoded(rows)
        finally:
            if ahead is not None:  # the reader stopped early: the page read ahead is not wanted
                ahead.cancel()

    async def read_from(self, after: int, limit: int = 1000) -> list[RecordedEvent]:
        """Committed events after `after` without waiting: from memory when recent enough.

        With `wait_beyond` (or `advanced_future`) this is how a live reader follows the log;
        once the store is closed it raises `StoreClosed`.
        """
        if self._closed:
            raise StoreClosed("the event store is closed")
        if after >= self._head:
            return []
        recent = self._recent
        if recent and recent[0].position <= after + 1:
            start = after + 1 - recent[0].position
            batch = list(islice(recent, start, start + min(limit, 1000)))
            if batch:
                return batch
        return await self.read(after, limit)

    async def verify_chain(self) -> ChainReport:
        """Recompute the hash chain over every row; name the first row that does not fit."""
        prev, expected_position, checked = GENESIS, 1, 0
        async with self._reader_db.execute(
            f"SELECT {_COLUMNS} FROM events ORDER BY position"
        ) as cur:
            async for row in cur:
                position, stream, version, tag, schema, data, meta, recorded, stored = row
                if position != expected_position:
                    return ChainReport(
                        checked, expected_position, f"position {expected_position} is missing"
                    )
                want = chain_hash(
                    prev, position, stream, version, tag, schema, data, meta, recorded
                )
                if want != stored:
                    return ChainReport(
                        checked, position, f"hash of position {position} does not match"
                    )
                prev, expected_position, checked = stored, position + 1, checked + 1
        return ChainReport(checked, None)


def _decoded(rows: list[sqlite3.Row]) -> Iterator[RecordedEvent]:
    """The events of a page of rows, as a generator: a replay resumes it once per event
    instead of calling a function and the tuple's constructor."""
    make = tuple.__new__
    for position, stream, version, tag, schema, data, meta, recorded, hash_ in rows:
        event, metadata = decode(tag, schema, data), decode_metadata(meta)
        fields = (position, stream, version, event, metadata, _recorded_time(recorded), tag, hash_)
        yield make(RecordedEvent, fields)


# Every row of one commit has the same recorded time: a replay parses each once.
_recorded_time = lru_cache(maxsize=256)(datetime.fromisoformat)
