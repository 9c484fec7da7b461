"""The shared SQLite writer: group commit, rollback of a failed batch, settling only after the
commit, and closing; on real files, with a plain second connection as the outside observer."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path

import aiosqlite
import pytest

from precheck.storage.sqlite_writer import SQLiteWriter, WriterClosed, connect

Row = tuple[int, str]  # (key, value) for the table `t`
Writer = SQLiteWriter[Row, int, int]


class Recorder:
    """Callbacks for a writer of rows into `t`: inserts each item, returns each key on commit,
    and records the batches and what a second connection saw at each commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batches: list[list[Row]] = []
        self.seen_at_commit: list[list[Row]] = []
        self.gate: asyncio.Event | None = None  # when set: every write waits for it
        self.started = asyncio.Event()  # a write began
        self.on_commit: Callable[[], None] = lambda: None

    async def write(self, db: aiosqlite.Connection, batch: list[Row]) -> int:
        self.batches.append(list(batch))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        # One statement per item, so a bad item fails after the ones before it were inserted.
        for row in batch:
            await db.execute("INSERT INTO t (k, v) VALUES (?, ?)", row)
        return len(batch)

    def after_commit(self, batch: list[Row], written: int) -> list[int | Exception]:
        assert written == len(batch)
        self.seen_at_commit.append(rows(self.path))
        self.on_commit()
        return [k for k, _ in batch]


def rows(path: Path) -> list[Row]:
    """The committed rows of `t`, read by a separate plain connection."""
    with closing(sqlite3.connect(path)) as db:
        return [(k, v) for k, v in db.execute("SELECT k, v FROM t ORDER BY k")]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "writer.db"
    with closing(sqlite3.connect(p)) as db:
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        db.commit()
    return p


@pytest.fixture
def recorder(path: Path) -> Recorder:
    return Recorder(path)


@pytest.fixture
async def writer(path: Path, recorder: Recorder) -> AsyncIterator[Writer]:
    w: Writer = SQLiteWriter(
        await connect(path), recorder.write, recorder.after_commit, name="test-writer"
    )
    yield w
    await w.close()


async def test_connect_sets_the_durable_pragmas(path: Path) -> None:
    """WAL for readers beside the writer, synchronous=FULL for commits that survive power loss."""
    db = await connect(path)
    try:
        async with db.execute("PRAGMA journal_mode") as cur:
            assert await cur.fetchone() == ("wal",)
        async with db.execute("PRAGMA synchronous") as cur:
            assert await cur.fetchone() == (2,)  # FULL
        async with db.execute("PRAGMA busy_timeout") as cur:
            assert await cur.fetchone() == (30000,)
    finally:
        await db.close()


async def test_concurrent_submits_share_one_commit(
    writer: Writer, recorder: Recorder, path: Path
) -> None:
    """Writes submitted while one batch is being written go together into the next one, and
    each submitter gets its own outcome."""
    recorder.gate = asyncio.Event()
    first = asyncio.create_task(writer.submit((1, "a")))
    await recorder.started.wait()
    rest = [asyncio.create_task(writer.submit((k, f"v{k}"))) for k in range(2, 12)]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await first == 1
    assert await asyncio.gather(*rest) == list(range(2, 12))
    assert [len(b) for b in recorder.batches] == [1, 10]
    assert [k for k, _ in rows(path)] == list(range(1, 12))


async def test_outcomes_resolve_only_after_the_commit(
    writer: Writer, recorder: Recorder, path: Path
) -> None:
    """When `after_commit` runs, another connection already sees the batch, and no submitter
    has resumed yet."""
    tasks = [asyncio.create_task(writer.submit((k, "x"))) for k in (1, 2, 3)]
    settled_at_commit: list[bool] = []
    recorder.on_commit = lambda: settled_at_commit.append(any(t.done() for t in tasks))
    assert await asyncio.gather(*tasks) == [1, 2, 3]
    assert recorder.seen_at_commit == [[(1, "x"), (2, "x"), (3, "x")]]
    assert settled_at_commit == [False]


async def test_a_failed_batch_is_rolled_back_and_the_next_commits(
    writer: Writer, recorder: Recorder, path: Path
) -> None:
    """A batch that fails half-way leaves none of its rows, every submitter in it gets the
    error, and the writer goes on: the next batch commits."""
    await writer.submit((1, "kept"))
    recorder.gate, recorder.started = asyncio.Event(), asyncio.Event()
    blocker = asyncio.create_task(writer.submit((2, "blocker")))
    await recorder.started.wait()
    # Queued behind the blocker, so they form one batch; (1, ...) collides after (10, ...).
    doomed = [asyncio.create_task(writer.submit(row)) for row in [(10, "doomed"), (1, "duplicate")]]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await blocker == 2
    results = await asyncio.gather(*doomed, return_exceptions=True)
    assert recorder.batches[-1] == [(10, "doomed"), (1, "duplicate")]
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results)
    assert not writer.db.in_transaction
    assert rows(path) == [(1, "kept"), (2, "blocker")]  # (10, "doomed") was rolled back
    assert await writer.submit((10, "later")) == 10
    assert rows(path) == [(1, "kept"), (2, "blocker"), (10, "later")]


async def test_failed_maps_the_error(path: Path, recorder: Recorder) -> None:
    """`failed` turns a batch's error into what its submitters get."""

    class Refused(Exception):
        pass

    w: Writer = SQLiteWriter(
        await connect(path),
        recorder.write,
        recorder.after_commit,
        name="test-writer",
        failed=lambda e: Refused(f"write failed: {e}"),
    )
    try:
        await w.submit((1, "a"))
        with pytest.raises(Refused, match="UNIQUE"):
            await w.submit((1, "b"))
    finally:
        await w.close()


async def test_an_outcome_can_be_an_error_for_one_item(path: Path, recorder: Recorder) -> None:
    """An exception among `after_commit`'s outcomes fails that submitter only."""

    def odd_refused(batch: list[Row], written: int) -> list[int | Exception]:
        return [ValueError(f"odd {k}") if k % 2 else k for k, _ in batch]

    w: Writer = SQLiteWriter(await connect(path), recorder.write, odd_refused, name="test-writer")
    try:
        results = await asyncio.gather(
            *(w.submit((k, "v")) for k in range(1, 5)), return_exceptions=True
        )
    finally:
        await w.close()
    assert [r if isinstance(r, int) else str(r) for r in results] == ["odd 1", 2, "odd 3", 4]


async def test_max_batch_bounds_a_commit(path: Path, recorder: Recorder) -> None:
    """No batch holds more than `max_batch` writes; all of them are written."""
    w: Writer = SQLiteWriter(
        await connect(path), recorder.write, recorder.after_commit, name="w", max_batch=4
    )
    try:
        assert await asyncio.gather(*(w.submit((k, "v")) for k in range(10))) == list(range(10))
    finally:
        await w.close()
    assert max(len(b) for b in recorder.batches) == 4
    assert len(rows(path)) == 10


async def test_an_abandoned_write_is_skipped_when_asked(path: Path, recorder: Recorder) -> None:
    """With `skip_abandoned`, a write whose submitter was cancelled before its batch began is
    not written; the others in the batch are."""
    w: Writer = SQLiteWriter(
        await connect(path),
        recorder.write,
        recorder.after_commit,
        name="w",
        skip_abandoned=True,
    )
    try:
        recorder.gate = asyncio.Event()
        blocker = asyncio.create_task(w.submit((1, "blocker")))
        await recorder.started.wait()
        gone = asyncio.create_task(w.submit((2, "gone")))
        stays = asyncio.create_task(w.submit((3, "stays")))
        await asyncio.sleep(0)
        gone.cancel()
        recorder.gate.set()
        assert (await blocker, await stays) == (1, 3)
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        await w.close()
    assert recorder.batches == [[(1, "blocker")], [(3, "stays")]]
    assert rows(path) == [(1, "blocker"), (3, "stays")]


async def test_a_batch_that_writes_nothing_commits_nothing(path: Path) -> None:
    """A batch whose `write` executes nothing still settles its submitters."""

    async def nothing(db: aiosqlite.Connection, batch: list[Row]) -> int:
        return 0

    def keys(batch: list[Row], written: int) -> list[int | Exception]:
        return [k for k, _ in batch]

    w: Writer = SQLiteWriter(await connect(path), nothing, keys, name="w")
    try:
        assert await w.submit((1, "v")) == 1
        assert not w.db.in_transaction
    finally:
        await w.close()
    assert rows(path) == []


async def test_close_writes_what_was_submitted_then_refuses(
    writer: Writer, recorder: Recorder, path: Path
) -> None:
    """Writes queued before `close` are committed and settled; a submit that comes after
    `close` began is refused with the closed error, and the connection is closed."""
    queued = [asyncio.create_task(writer.submit((k, "q"))) for k in range(5)]
    await asyncio.sleep(0)  # every one of them reaches the queue
    late = asyncio.create_task(writer.submit((99, "late")))  # first runs inside close
    await writer.close()
    assert [t.result() for t in queued] == list(range(5))
    with pytest.raises(WriterClosed):
        await late
    with pytest.raises(WriterClosed):
        await writer.submit((100, "after"))
    assert writer.closed
    assert [k for k, _ in rows(path)] == list(range(5))
    with pytest.raises(ValueError):  # the connection is closed
        await writer.db.execute("SELECT 1")
    await writer.close()  # closing twice is harmless


async def test_close_uses_the_given_closed_error(path: Path, recorder: Recorder) -> None:
    """`closed` names the error a submit after close gets."""
    w: Writer = SQLiteWriter(
        await connect(path),
        recorder.write,
        recorder.after_commit,
        name="w",
        closed=lambda: RuntimeError("the store is closed"),
    )
    await w.close()
    with pytest.raises(RuntimeError, match="store is closed"):
        await w.submit((1, "v"))
