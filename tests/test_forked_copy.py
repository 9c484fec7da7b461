"""Bytes made in a forked copy of the server: of the state at the fork, while the loop runs
on; a failure or a cut-short copy is an error, a cancelled one is killed and waited for; and
a snapshot written so while serving loads as the state it was taken at."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from pathlib import Path

import pytest

from precheck.events.store import EventStore
from precheck.projections import Projections
from precheck.projections import snapshot as snap
from precheck.service.forked_copy import ForkedCopyFailed, made_in_forked_copy
from precheck.service.snapshots import SnapshotWriter
from tests.test_snapshot import log, more_events  # noqa: F401 - `log` is a fixture


async def test_the_copy_reads_the_state_as_it_was_at_the_fork() -> None:
    state = {"runs": ["r1", "r2"]}

    def make() -> bytes:
        time.sleep(0.2)  # the parent changes the state meanwhile
        return pickle.dumps(state)

    task = asyncio.ensure_future(made_in_forked_copy(make))
    await asyncio.sleep(0)  # the task runs up to its first wait: the fork is behind it
    state["runs"].append("r3")
    assert pickle.loads(await task) == {"runs": ["r1", "r2"]}
    assert state == {"runs": ["r1", "r2", "r3"]}


async def test_the_loop_runs_on_while_the_copy_works() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    def slow() -> bytes:
        time.sleep(1.0)  # in the loop, this would stop every tick
        return b"x" * 3_000_000  # more than a pipe holds: read as it is written

    ticker = asyncio.ensure_future(tick())
    try:
        started = time.perf_counter()
        data = await made_in_forked_copy(slow)
        took = time.perf_counter() - started
    finally:
        ticker.cancel()
    assert data == b"x" * 3_000_000
    assert took >= 1.0
    assert ticks >= 30, f"the loop ticked {ticks} times in {took:.2f} s"


async def test_what_the_copy_raised_is_the_error() -> None:
    def broken() -> bytes:
        raise ValueError("nothing to pickle")

    with pytest.raises(ForkedCopyFailed, match="ValueError: nothing to pickle"):
        await made_in_forked_copy(broken)


async def test_a_copy_that_leaves_without_its_result_is_an_error() -> None:
    def leaves() -> bytes:
        os._exit(3)

    with pytest.raises(ForkedCopyFailed, match="ended with code 3"):
        await made_in_forked_copy(leaves)


async def test_a_cancelled_copy_is_killed_and_waited_for(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def forever() -> bytes:
        pid_file.write_text(str(os.getpid()))
        time.sleep(120)
        return b""

    task = asyncio.ensure_future(made_in_forked_copy(forever))
    for _ in range(3000):  # the copy has started once it wrote its pid
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the forked copy never started")
    pid = int(pid_file.read_text())
    assert pid != os.getpid()
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - started < 10
    with pytest.raises(ProcessLookupError):  # gone, and no zombie left: it was waited for
        os.kill(pid, 0)


async def test_a_snapshot_written_while_serving_is_the_state_at_its_position(
    log: tuple[EventStore, Projections, Path],  # noqa: F811 - the fixture
) -> None:
    store, live, path = log
    writer = SnapshotWriter(live, path, written=0)
    position = live.position
    writing = asyncio.ensure_future(writer.write(serving=True))
    await asyncio.sleep(0)  # forked: events committed now are not in the snapshot
    await more_events(store)
    assert await writing
    assert writer.written == position == store.head - 3

    loaded = await snap.load(path, store)
    assert loaded.position == position
    assert snap.differences(loaded, await Projections.replay(store)) != ""  # 3 events short
    await loaded.fold(store)
    assert snap.differences(loaded, live) == ""
    assert await writer.write(serving=True) and writer.written == store.head
    assert not await writer.write(serving=True)  # nothing since: nothing written
