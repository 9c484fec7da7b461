"""Contract of the event store, run against the SQLite store on real files."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from precheck.events.store import (
    ChainReport,
    ConcurrencyError,
    EventStore,
    RecordedEvent,
    StoreClosed,
    StoreError,
    chain_hash,
)
from precheck.events.types import Metadata, RunProgressed, UploadDeleted

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
META = Metadata(actor="alice", client="10.0.0.7", request_id="req-1")


def step(run: str, n: int) -> RunProgressed:
    """An event on stream `run-<run>`; `n` makes it distinguishable."""
    return RunProgressed(run, n, 16, f"Step.{n}", T0)


async def follow(store: EventStore, after: int) -> AsyncGenerator[RecordedEvent, None]:
    """Every event after `after` as a live reader sees them: `read_from`, then `wait_beyond`
    once caught up; ends when the store closes while the reader is caught up."""
    position = after
    while True:
        batch = await store.read_from(position)
        if not batch:
            await store.wait_beyond(position)
            if store.head <= position:
                return  # woken by the close, not by a new event
            continue
        for r in batch:
            yield r
            position = r.position


async def collect(store: EventStore, after: int, until: int) -> list[RecordedEvent]:
    """Everything a reader following from `after` gets up to position `until`."""
    seen: list[RecordedEvent] = []
    async with aclosing(follow(store, after)) as events:
        async for r in events:
            seen.append(r)
            if r.position >= until:
                break
    return seen


class EventStoreContract:
    """What every event store must do; a subclass says how to open one on a path."""

    async def open_store(self, path: Path) -> EventStore:
        raise NotImplementedError

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "events.db"

    @pytest.fixture
    async def store(self, path: Path) -> AsyncIterator[EventStore]:
        store = await self.open_store(path)
        yield store
        await store.close()

    # Appending ---------------------------------------------------------------------------------

    async def test_append_numbers_positions_and_stream_versions(self, store: EventStore) -> None:
        """Appends get gap-free positions from 1 and a version per stream counted from 1."""
        first = await store.append([step("a", 1), step("b", 1), step("a", 2)], META)
        second = await store.append([step("b", 2), step("c", 1)], META)
        recorded = first + second
        assert [r.position for r in recorded] == [1, 2, 3, 4, 5]
        assert [(r.stream, r.version) for r in recorded] == [
            ("run-a", 1),
            ("run-b", 1),
            ("run-a", 2),
            ("run-b", 2),
            ("run-c", 1),
        ]
        assert [r.type for r in recorded] == ["run.progressed"] * 5
        assert store.head == 5
        assert (await store.version_of("run-a"), await store.version_of("run-b")) == (2, 2)
        assert await store.version_of("run-none") == 0

    async def test_an_empty_append_writes_nothing(self, store: EventStore) -> None:
        """Appending no events returns nothing and leaves the head where it was."""
        assert await store.append([], META) == []
        assert store.head == 0

    async def test_events_and_metadata_round_trip(self, store: EventStore) -> None:
        """What is read back equals what was appended: event, metadata, time and hash."""
        event = UploadDeleted("u1", T0)
        [written] = await store.append([event], META)
        [read] = await store.read()
        assert read == written
        assert read.event == event
        assert read.metadata == META
        assert read.recorded.tzinfo is not None

    async def test_wrong_expectation_raises_and_writes_nothing(self, store: EventStore) -> None:
        """An append whose expected version is stale fails whole, leaving the log unchanged."""
        await store.append([step("a", 1), step("a", 2)], META)
        with pytest.raises(ConcurrencyError):
            await store.append([step("a", 3), step("b", 1)], META, expect={"run-a": 1})
        assert store.head == 2
        assert await store.read(after=2) == []
        assert await store.read(stream="run-b") == []
        assert (await store.version_of("run-a"), await store.version_of("run-b")) == (2, 0)

    async def test_expectation_on_an_unwritten_stream_is_checked(self, store: EventStore) -> None:
        """An expectation on a stream the append does not write to is checked all the same."""
        await store.append([step("guard", 1)], META)
        with pytest.raises(ConcurrencyError):
            await store.append([step("a", 1)], META, expect={"run-guard": 0})
        with pytest.raises(ConcurrencyError):
            await store.append([step("a", 1)], META, expect={"run-never": 3})
        assert store.head == 1
        assert await store.read(after=1) == []
        [ok] = await store.append([step("a", 1)], META, expect={"run-guard": 1, "run-never": 0})
        assert (ok.position, ok.stream, ok.version) == (2, "run-a", 1)

    async def test_racing_appends_on_one_stream_let_exactly_one_win(
        self, store: EventStore
    ) -> None:
        """Ten appends expecting a new stream race in one batch: one lands, nine conflict."""
        results = await asyncio.gather(
            *(store.append([step("x", i)], META, expect={"run-x": 0}) for i in range(10)),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, list)]
        lost = [r for r in results if isinstance(r, ConcurrencyError)]
        assert (len(won), len(lost)) == (1, 9)
        assert store.head == 1
        assert [r.event for r in await store.read()] == [won[0][0].event]

    async def test_a_refused_append_fails_after_the_winner_is_applied(
        self, store: EventStore
    ) -> None:
        """The losers of a race hear of it only once the winner's events are applied, so
        deciding again they see the new version instead of the same stale one."""
        seen_by_losers: list[tuple[int, int]] = []

        async def race(i: int) -> None:
            try:
                await store.append([step("x", i)], META, expect={"run-x": 0})
            except ConcurrencyError:
                seen_by_losers.append((store.head, await store.version_of("run-x")))

        await asyncio.gather(*(race(i) for i in range(5)))
        assert seen_by_losers == [(1, 1)] * 4

    async def test_concurrent_appends_share_transactions(self, store: EventStore) -> None:
        """Fifty concurrent appends all land, gap-free, in fewer commits than appends."""
        results = await asyncio.gather(*(store.append([step(f"w{i}", 1)], META) for i in range(50)))
        recorded = [r for rs in results for r in rs]
        assert sorted(r.position for r in recorded) == list(range(1, 51))
        assert all(r.version == 1 for r in recorded)
        assert [r.position for r in await store.read(limit=100)] == list(range(1, 51))
        # One commit stamps all of its rows with one time, so distinct times bound the commits.
        commits = {r.recorded for r in recorded}
        assert len(commits) < 50

    # Reading -----------------------------------------------------------------------------------

    async def test_read_pages_and_filters_by_stream(self, store: EventStore) -> None:
        """`read` honours `after`, `limit` and `stream`, always in position order."""
        for i in range(1, 6):
            await store.append([step("a", i), step("b", i)], META)
        assert [r.position for r in await store.read(after=3, limit=4)] == [4, 5, 6, 7]
        assert [r.position for r in await store.read(after=8)] == [9, 10]
        assert await store.read(after=10) == []
        on_b = await store.read(stream="run-b")
        assert [(r.position, r.version) for r in on_b] == [(2, 1), (4, 2), (6, 3), (8, 4), (10, 5)]
        assert [r.position for r in await store.read(after=4, limit=2, stream="run-b")] == [6, 8]

    async def test_reopening_continues_positions_versions_and_chain(self, path: Path) -> None:
        """A reopened store knows its head and versions and extends the same hash chain."""
        store = await self.open_store(path)
        await store.append([step("a", 1), step("b", 1), step("a", 2)], META)
        await store.close()
        store = await self.open_store(path)
        try:
            assert store.head == 3
            assert (await store.version_of("run-a"), await store.version_of("run-b")) == (2, 1)
            [after] = await store.append([step("a", 3)], META, expect={"run-a": 2})
            assert (after.position, after.version) == (4, 3)
            # Row 4 only checks out if it was chained to row 3's hash, not started afresh.
            report = await store.verify_chain()
            assert (report.checked, report.first_bad) == (4, None)
        finally:
            await store.close()

    async def test_a_reopened_store_checks_streams_it_has_not_touched_yet(self, path: Path) -> None:
        """A reopened store reads no stream's version up front, yet the first append to each
        stream, in one batch with others, is numbered and checked against the log."""
        store = await self.open_store(path)
        await store.append([step("a", 1), step("a", 2), step("b", 1)], META)
        for i in range(3):
            await store.append([step(f"many{i}", 1)], META)
        await store.close()
        store = await self.open_store(path)
        try:
            results = await asyncio.gather(
                store.append([step("a", 3)], META),  # no expectation: still version 3
                store.append([step("b", 2)], META, expect={"run-b": 0}),  # stale
                store.append([step("c", 1)], META, expect={"run-many1": 1, "run-c": 0}),
                store.append([step("d", 1)], META, expect={"run-many2": 0}),  # stale
                return_exceptions=True,
            )
            a, b, c, d = results
            assert isinstance(a, list) and (a[0].stream, a[0].version) == ("run-a", 3)
            assert isinstance(b, ConcurrencyError) and "at version 1, expected 0" in str(b)
            assert isinstance(c, list) and (c[0].stream, c[0].version) == ("run-c", 1)
            assert isinstance(d, ConcurrencyError) and "run-many2 is at version 1" in str(d)
            versions = [await store.version_of(f"run-{s}") for s in ("a", "b", "c", "many0", "x")]
            assert versions == [3, 1, 1, 1, 0]
        finally:
            await store.close()

    # Following -------------------------------------------------------------------------------

    async def test_reader_catches_up_then_follows_racing_appends(self, store: EventStore) -> None:
        """Readers see every position after their start exactly once, in order, while
        appends keep landing during their switch from history to live events."""
        for i in range(10):
            await store.append([step("history", 10 * i + j) for j in range(10)], META)
        writers, per_writer = 5, 40
        total = 100 + writers * per_writer

        async def write(w: int) -> None:
            for i in range(per_writer):
                await store.append([step(f"live{w}", i)], META)
                if i % 3 == 0:
                    await asyncio.sleep(0)

        async def slow_collect(after: int) -> list[int]:
            seen = []
            async with aclosing(follow(store, after)) as events:
                async for r in events:
                    seen.append(r.position)
                    await asyncio.sleep(0)  # a consumer slower than the writers
                    if r.position >= total:
                        break
            return seen

        starts = (0, 30, 99, 100)
        subscribers = [asyncio.create_task(slow_collect(a)) for a in starts]
        await asyncio.gather(*(write(w) for w in range(writers)))
        seen = await asyncio.wait_for(asyncio.gather(*subscribers), 30)
        assert store.head == total
        for after, positions in zip(starts, seen, strict=True):
            assert positions == list(range(after + 1, total + 1))

    async def test_reader_gets_the_events_as_recorded(self, store: EventStore) -> None:
        """`read_from` returns the same recorded events that `read` returns."""
        await store.append([step("a", 1), step("b", 1)], META)
        live = asyncio.create_task(collect(store, 0, 4))
        await asyncio.sleep(0)
        await store.append([step("a", 2), step("b", 2)], META)
        assert await asyncio.wait_for(live, 10) == await store.read()

    async def test_reader_far_behind_gets_everything(self, store: EventStore) -> None:
        """A reader more than `RECENT` events behind gets every event once, in order,
        including those appended while it reads the old ones."""
        batches = EventStore.RECENT // 500 + 4
        for b in range(batches):
            await store.append([step(f"s{b}", i) for i in range(500)], META)
        history = batches * 500
        late = 50
        total = history + late
        readers = [asyncio.create_task(collect(store, after, total)) for after in (0, 1000)]
        for i in range(late):
            await store.append([step("late", i)], META)
        seen, tail = await asyncio.wait_for(asyncio.gather(*readers), 60)
        assert store.head == total
        assert [r.position for r in seen] == list(range(1, total + 1))
        assert [r.position for r in tail] == list(range(1001, total + 1))

    async def test_caught_up_reader_is_woken_when_the_store_closes(self, path: Path) -> None:
        """`wait_beyond` returns when the store closes, so a caught-up reader ends."""
        store = await self.open_store(path)
        await store.append([step("a", 1)], META)
        live = asyncio.create_task(collect(store, 0, 99))
        await asyncio.sleep(0.05)
        await store.close()
        assert [r.position for r in await asyncio.wait_for(live, 10)] == [1]

    async def test_reader_behind_gets_store_closed(self, path: Path) -> None:
        """A reader still reading history from the file is told `StoreClosed` once the store
        closes, not some error of the closed connection."""
        store = await self.open_store(path)
        for b in range(EventStore.RECENT // 1000 + 3):
            await store.append([step(f"s{b}", i) for i in range(1000)], META)
        seen = 0
        with pytest.raises(StoreClosed):
            async with aclosing(follow(store, 0)) as events:
                async for _ in events:
                    seen += 1
                    if seen == 10:
                        await store.close()
        assert 10 <= seen < store.head
        with pytest.raises(StoreClosed):
            await store.read()

    # Closing -----------------------------------------------------------------------------------

    async def test_close_writes_what_is_queued(self, path: Path) -> None:
        """Appends already queued when `close` is called are still written."""
        store = await self.open_store(path)
        pending = [asyncio.create_task(store.append([step("a", i)], META)) for i in range(5)]
        await asyncio.sleep(0)  # let every append reach the queue
        await store.close()
        positions = sorted(r.position for t in pending for r in t.result())
        assert positions == [1, 2, 3, 4, 5]
        store = await self.open_store(path)
        try:
            assert store.head == 5
        finally:
            await store.close()

    async def test_append_after_close_raises(self, store: EventStore) -> None:
        """A closed store refuses appends with `StoreClosed`."""
        await store.append([step("a", 1)], META)
        await store.close()
        with pytest.raises(StoreClosed):
            await store.append([step("a", 2)], META)


class TestSQLiteEventStore(EventStoreContract):
    """The SQLite store: the contract plus what its file guarantees."""

    async def open_store(self, path: Path) -> EventStore:
        return await EventStore.open(path)

    async def test_acknowledged_appends_are_in_the_file(
        self, store: EventStore, path: Path
    ) -> None:
        """Once `append` returns, another connection to the file sees the rows."""
        recorded = await store.append([step("a", 1), step("a", 2)], META)
        with _raw(path) as db:
            rows = db.execute("SELECT position, hash FROM events ORDER BY position").fetchall()
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        assert rows == [(r.position, r.hash) for r in recorded]
        assert mode == "wal"

    async def test_a_row_written_by_another_process_is_learnt_and_the_append_retried(
        self, store: EventStore, path: Path
    ) -> None:
        """When another writer took the next position, the append fails on the file's own
        constraint, is rolled back, and goes in after that row once the state is reloaded."""
        await store.append([step("a", 1)], META)
        with _raw(path) as db:
            row = (2, "run-other", 1, "run.progressed", 1, "{}", "{}", "2026-01-01T00:00:00Z")
            db.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", (*row, "h"))
        [r] = await store.append([step("a", 2)], META)
        assert (r.position, r.version) == (3, 2)
        assert (store.head, await store.version_of("run-other")) == (3, 1)
        with _raw(path) as db:
            positions = [p for (p,) in db.execute("SELECT position FROM events ORDER BY 1")]
        assert positions == [1, 2, 3]

    @pytest.mark.parametrize(
        "sql",
        [
            "UPDATE events SET data = '{}' WHERE position = 1",
            "UPDATE events SET hash = 'x'",
            "DELETE FROM events WHERE position = 1",
            "DELETE FROM events",
        ],
    )
    async def test_triggers_refuse_changes_to_rows(
        self, store: EventStore, path: Path, sql: str
    ) -> None:
        """The database itself refuses to update or delete an event row."""
        await store.append([step("a", 1), step("a", 2)], META)
        with _raw(path) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(sql)
        assert [r.event for r in await store.read()] == [step("a", 1), step("a", 2)]

    async def test_verify_chain_passes_on_an_untouched_log(self, store: EventStore) -> None:
        """Every row of a log written only by the store checks out."""
        assert (await store.verify_chain()).first_bad is None
        for i in range(4):
            await store.append([step("a", i), step(f"b{i}", 0)], META)
        report = await store.verify_chain()
        assert (report.checked, report.first_bad) == (8, None)

    async def test_verify_chain_names_an_edited_row(self, path: Path) -> None:
        """A row whose data was changed behind the store's back is named."""
        await self._write_log(path, 6)
        with _raw(path) as db:
            db.execute("DROP TRIGGER events_are_never_updated")
            db.execute(
                "UPDATE events SET data = replace(data, 'Step.3', 'Step.X') WHERE position = 4"
            )
        report = await self._verify(path)
        assert (report.first_bad, report.checked) == (4, 3)

    async def test_verify_chain_names_a_deleted_row(self, path: Path) -> None:
        """A row removed from the middle is named as missing."""
        await self._write_log(path, 6)
        with _raw(path) as db:
            db.execute("DROP TRIGGER events_are_never_deleted")
            db.execute("DELETE FROM events WHERE position = 3")
        report = await self._verify(path)
        assert report.first_bad == 3
        assert "missing" in report.reason

    async def test_verify_chain_names_a_row_inserted_in_the_middle(self, path: Path) -> None:
        """A forged row slipped in at position 3, with a hash chained to row 2, breaks the
        chain at the genuine row it pushed to position 4."""
        await self._write_log(path, 6)
        with _raw(path) as db:
            db.execute("DROP TRIGGER events_are_never_updated")
            # Highest first, so no renumbered row collides with one not yet moved.
            for position in range(6, 2, -1):
                db.execute(
                    "UPDATE events SET position = ? WHERE position = ?", (position + 1, position)
                )
            prev = db.execute("SELECT hash FROM events WHERE position = 2").fetchone()[0]
            row = (
                3,
                "run-forged",
                1,
                "upload.deleted",
                1,
                '{"upload_id":"u","at":"x"}',
                '{"actor":"x"}',
                "2026-01-01T00:00:00Z",
            )
            db.execute(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", (*row, chain_hash(prev, *row))
            )
        report = await self._verify(path)
        assert (report.first_bad, report.checked) == (4, 3)

    async def _write_log(self, path: Path, n: int) -> None:
        store = await self.open_store(path)
        try:
            for i in range(n):
                await store.append([step("a", i)], META)
        finally:
            await store.close()

    async def _verify(self, path: Path) -> ChainReport:
        store = await self.open_store(path)
        try:
            return await store.verify_chain()
        finally:
            await store.close()


def _raw(path: Path) -> closing[sqlite3.Connection]:
    """A plain sqlite3 connection to the store's file in autocommit mode, closed on exit."""
    return closing(sqlite3.connect(path, isolation_level=None))


async def test_an_append_that_cannot_be_stored_fails_alone_in_its_batch(tmp_path: Path) -> None:
    """A lone surrogate in one append of a group commit: that append fails, the other in the
    same batch is committed, and the chain stays whole."""
    store = await EventStore.open(tmp_path / "precheck.db")
    try:
        at = datetime(2026, 11, 26, tzinfo=UTC)
        bad = store.append([UploadDeleted("u-bad", at)], Metadata("cli", request_id="\ud800"))
        good = store.append([UploadDeleted("u-good", at)], Metadata("cli"))
        results = await asyncio.gather(bad, good, return_exceptions=True)
        assert isinstance(results[0], StoreError), results[0]
        assert "cannot be stored" in str(results[0])
        assert not isinstance(results[1], BaseException)
        assert [r.stream for r in results[1]] == ["upload-u-good"]
        assert store.head == 1
        assert (await store.verify_chain()).first_bad is None
    finally:
        await store.close()
