"""One SQLite writer: a durable connection and a group-commit loop that owns it.

Writers `submit` items; one task takes every item queued so far (up to `max_batch`), hands them
to `write` inside one transaction, commits, calls `after_commit` and only then resolves each
submitter with its outcome. So a durable write costs one fsync per batch, not per item, and a
submitter never hears of a write that is not yet in the file. A batch that fails is rolled back
and every submitter in it gets the error; the writer goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Generic, TypeVar

import aiosqlite

log = logging.getLogger(__name__)

T = TypeVar("T")  # one submitted write
W = TypeVar("W")  # what `write` hands on to `after_commit`
R = TypeVar("R")  # what `submit` returns for one item

WriteBatch = Callable[[aiosqlite.Connection, list[T]], Awaitable[W]]
AfterCommit = Callable[[list[T], W], Sequence[R | Exception]]


async def connect(path: Path) -> aiosqlite.Connection:
    """A connection to `path` with the pragmas every store uses."""
    db = await aiosqlite.connect(path, timeout=30)
    try:
        # WAL lets readers run beside the writer; FULL makes an acknowledged commit survive
        # power loss.
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=30000")
    except BaseException:
        await db.close()
        raise
    return db


class WriterClosed(Exception):
    """The writer was closed before the item could be written."""


def _same(error: Exception) -> Exception:
    return error


def _closed() -> Exception:
    return WriterClosed("the writer is closed")


class _Pending(Generic[T, R]):
    __slots__ = ("done", "item")

    def __init__(self, item: T, done: asyncio.Future[R]) -> None:
        self.item = item
        self.done = done


class SQLiteWriter(Generic[T, W, R]):
    """The only writer of one connection: group commit of submitted items.

    - `write(db, items)` writes a batch; the transaction it opens is committed by the writer
      (nothing is committed when it executed nothing). It may roll back and retry itself.
    - `after_commit(items, written)` runs once the batch is durable, before any submitter
      resumes; it returns one outcome per item, in order: a result for `submit` to return, or
      an exception for it to raise.
    - `failed(error)` is what the submitters of a failed batch get (the error itself unless
      given); `closed()` what a submit gets once the writer is closed.
    - `skip_abandoned`: leave out items whose submitter was cancelled before the batch began.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        write: WriteBatch[T, W],
        after_commit: AfterCommit[T, W, R],
        *,
        name: str,
        max_batch: int | None = None,
        skip_abandoned: bool = False,
        failed: Callable[[Exception], Exception] = _same,
        closed: Callable[[], Exception] = _closed,
    ) -> None:
        self.db = db
        self._write = write
        self._after_commit = after_commit
        self._name = name
        self._max_batch = max_batch or sys.maxsize
        self._skip_abandoned = skip_abandoned
        self._failed = failed
        self._closed_error = closed
        self._queue: asyncio.Queue[_Pending[T, R] | None] = asyncio.Queue()
        self._closed = False
        self._task = asyncio.create_task(self._run(), name=name)

    @property
    def closed(self) -> bool:
        """True once `close` was called: no more items are taken."""
        return self._closed

    async def submit(self, item: T) -> R:
        """Queue `item`, and return its outcome once its batch is committed."""
        if self._closed:
            raise self._closed_error()
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, done))
        return await done

    async def close(self) -> None:
        """Write every item submitted before now, stop the loop and close the connection.

        Idempotent. Anything that reaches the queue after the stop fails with `closed()`.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        try:
            await self._task
        finally:
            self._fail_queued()
            await self.db.close()

    async def _run(self) -> None:
        queue = self._queue
        while True:
            first = await queue.get()
            batch = [] if first is None else [first]
            stop = first is None
            while not queue.empty() and len(batch) < self._max_batch:
                p = queue.get_nowait()
                if p is None:
                    stop = True
                else:
                    batch.append(p)
            if self._skip_abandoned:
                batch = [p for p in batch if not p.done.done()]
            if batch:
                await self._commit(batch)
            if stop:
                self._fail_queued()
                return

    async def _commit(self, batch: list[_Pending[T, R]]) -> None:
        items = [p.item for p in batch]
        try:
            written = await self._write(self.db, items)
            if self.db.in_transaction:
                await self.db.commit()
        except BaseException as e:
            await self._rollback()
            if not isinstance(e, Exception):  # cancelled: the writer stops
                self._fail(batch, self._closed_error)
                raise
            log.exception("%s: a batch of %d writes failed", self._name, len(batch))
            self._fail(batch, partial(self._failed, e))
            return
        try:
            outcomes = self._after_commit(items, written)
            if len(outcomes) != len(batch):
                raise ValueError(f"{len(outcomes)} outcomes for {len(batch)} writes")
        except Exception as e:
            # Written, but the store could not take it in: its submitters must not go on.
            log.exception("%s: after a commit of %d writes", self._name, len(batch))
            self._fail(batch, partial(self._failed, e))
            return
        for p, outcome in zip(batch, outcomes, strict=True):
            if not p.done.done():
                if isinstance(outcome, Exception):
                    p.done.set_exception(outcome)
                else:
                    p.done.set_result(outcome)

    async def _rollback(self) -> None:
        try:
            await self.db.rollback()  # leave no transaction open behind a failure
        except Exception:
            log.exception("%s: rollback failed", self._name)

    def _fail(self, batch: list[_Pending[T, R]], error: Callable[[], Exception]) -> None:
        for p in batch:
            if not p.done.done():
                p.done.set_exception(error())

    def _fail_queued(self) -> None:
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if p is not None and not p.done.done():
                p.done.set_exception(self._closed_error())
