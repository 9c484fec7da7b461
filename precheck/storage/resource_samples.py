"""A run's resource timeline (memory and CPU over the run), kept in `precheck.db` beside its
output lines.

Samples are not events: a ten-hour run has thousands and none is a decision; only their peak
is recorded in the log, at the run's end. They are kept like the output lines: durable as they
come (so a restart or a resumed run continues the timeline), deleted with the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiosqlite
import attrs

from precheck.storage.sqlite_writer import SQLiteWriter, connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS resource_samples (
    run_id       TEXT    NOT NULL,
    at           REAL    NOT NULL,  -- unix time Docker read the sample
    memory       INTEGER NOT NULL,  -- bytes in use, the page cache left out
    memory_limit INTEGER NOT NULL,  -- bytes the container may use
    cpu          REAL    NOT NULL,  -- percent of one CPU (200: two CPUs busy)
    PRIMARY KEY (run_id, at)
) WITHOUT ROWID;
"""
# Samples of one run at most: 20 h at one per 15 s is 4800; past this, later ones are dropped
# (the run's peak still counts the kept ones).
MAX_SAMPLES = 20_000


@attrs.frozen
class ResourceSample:
    """Memory and CPU of a run's container at one instant."""

    at: float  # unix seconds
    memory_bytes: int
    limit_bytes: int
    cpu_percent: float


@attrs.frozen
class Peak:
    """The highest memory and CPU among a run's samples (from `since`), and how many."""

    memory_bytes: int
    limit_bytes: int
    cpu_percent: float
    samples: int


@attrs.define
class _Write:
    run_id: str
    sample: ResourceSample


@attrs.define
class _Delete:
    run_id: str


def _sample(row: Sequence[object]) -> ResourceSample:
    at, memory, limit, cpu = (str(x) for x in row)
    return ResourceSample(float(at), int(memory), int(limit), float(cpu))


_INSERT = "INSERT OR IGNORE INTO resource_samples VALUES (?,?,?,?,?)"


async def _write_batch(db: aiosqlite.Connection, batch: list[_Write | _Delete]) -> None:
    for w in batch:  # a handful per batch: one every interval per running run
        if isinstance(w, _Write):
            s = w.sample
            await db.execute(
                _INSERT, (w.run_id, s.at, s.memory_bytes, s.limit_bytes, s.cpu_percent)
            )
        else:
            await db.execute("DELETE FROM resource_samples WHERE run_id = ?", (w.run_id,))


class ResourceSampleStore:
    """Durable per-run resource samples, and a wake-up when a run's timeline grows."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._reader_db = reader
        self._writer: SQLiteWriter[_Write | _Delete, None, None] = SQLiteWriter(
            writer,
            _write_batch,
            lambda batch, _: [None] * len(batch),
            name="resource-sample-writer",
            closed=lambda: RuntimeError("the resource sample store is closed"),
        )
        self._counts: dict[str, int] = {}
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> ResourceSampleStore:
        """Open the samples table in the database at `path` and start its writer."""
        writer = await connect(path)
        try:
            await writer.executescript(SCHEMA)
            await writer.commit()
            reader = await connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader)

    async def close(self) -> None:
        """Write what is queued and close."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writer.close()
        finally:
            await self._reader_db.close()

    async def append(self, run_id: str, sample: ResourceSample) -> bool:
        """Durably store one sample; False when the run has `MAX_SAMPLES` already."""
        count = self._counts.get(run_id)
        if count is None:
            count = await self._count(run_id)
        if count >= MAX_SAMPLES:
            return False
        self._counts[run_id] = count + 1
        await self._writer.submit(_Write(run_id, sample))
        return True

    async def _count(self, run_id: str) -> int:
        async with self._reader_db.execute(
            "SELECT COUNT(*) FROM resource_samples WHERE run_id = ?", (run_id,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def samples(self, run_id: str, since: float = 0.0) -> list[ResourceSample]:
        """The run's samples from unix time `since`, oldest first."""
        async with self._reader_db.execute(
            "SELECT at, memory, memory_limit, cpu FROM resource_samples"
            " WHERE run_id = ? AND at >= ? ORDER BY at",
            (run_id, since),
        ) as cur:
            rows: Sequence[Sequence[object]] = list(await cur.fetchall())
        return [_sample(row) for row in rows]

    async def last(self, run_id: str) -> ResourceSample | None:
        """The run's latest sample (where a resumed timeline goes on from)."""
        async with self._reader_db.execute(
            "SELECT at, memory, memory_limit, cpu FROM resource_samples"
            " WHERE run_id = ? ORDER BY at DESC LIMIT 1",
            (run_id,),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else _sample(row)

    async def peak(self, run_id: str, since: float = 0.0) -> Peak | None:
        """The highest memory and CPU of the run's samples from `since` (None: no sample)."""
        async with self._reader_db.execute(
            "SELECT MAX(memory), MAX(memory_limit), MAX(cpu), COUNT(*) FROM resource_samples"
            " WHERE run_id = ? AND at >= ?",
            (run_id, since),
        ) as cur:
            row = await cur.fetchone()
        if row is None or not row[3]:
            return None
        return Peak(int(row[0]), int(row[1]), float(row[2]), int(row[3]))

    async def delete_run(self, run_id: str) -> None:
        """Drop a retired run's samples, durably when this returns."""
        self._counts.pop(run_id, None)
        await self._writer.submit(_Delete(run_id))
