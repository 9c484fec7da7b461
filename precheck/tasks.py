"""Background tasks: started under a name, kept while they run, cancelled and awaited on stop.

One helper for every part that works in the background (the supervisor's rooms, upload expiry,
the layout inspector), so starting and stopping one is written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskSet:
    """Tasks of one owner: each kept until it ends; `close` cancels and awaits them all.

    A task that fails is logged with its name (its owner records what it must); one that is
    only `quiet` is not, because its failure is read by whoever awaits it."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, *, quiet: bool = False
    ) -> asyncio.Task[Any]:
        """Start `coro` as a task named `name`."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve if quiet else _report)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel every task still running and wait until all have ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _report(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (e := task.exception()) is not None:
        log.error("background task %s failed", task.get_name(), exc_info=e)


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, Any], name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Run `coro` as a task while the block runs; cancel and await it when the block ends
    (for an app's cleanup context: set up, `yield`, stop)."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
