"""No run stuck, ever: a start, finish, kill or copy-out that fails is tried again with backoff, and
after a bounded number of tries recorded as a system failure; an early `die` is still finished.

Faults are injected by a subclass of our own `Engine` around a real Docker engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from precheck.config import Config
from precheck.events.types import RunFinishFailed, RunRetried
from precheck.runner.engine import ContainerState, Engine, EngineError
from precheck.runner.finishing import FINISH_TRIES
from precheck.web import keys
from tests.docker_fixtures import Api, StartApp
from tests.layouts import gds

pytestmark = pytest.mark.docker


class FaultyEngine(Engine):
    """A real engine whose `inspect`, `kill`, `get_archive`, `remove`, `create` or `start`
    fail the first `fail[name]` calls (-1: always) with a Docker 500, and whose `start` can
    return late."""

    def __init__(
        self, url: str, fail: dict[str, int] | None = None, start_delay: float = 0.0
    ) -> None:
        super().__init__(url)
        self.fail = dict(fail or {})
        self.calls: dict[str, int] = {}
        self.start_delay = start_delay

    def _maybe_fail(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        left = self.fail.get(name, 0)
        if left == 0:
            return
        if left > 0:
            self.fail[name] = left - 1
        raise EngineError(500, f"injected {name} failure")

    async def inspect(self, container_id: str) -> ContainerState | None:
        self._maybe_fail("inspect")
        return await super().inspect(container_id)

    async def kill(self, container_id: str) -> None:
        self._maybe_fail("kill")
        await super().kill(container_id)

    async def get_archive(self, container_id: str, path: str) -> AsyncIterator[bytes] | None:
        self._maybe_fail("get_archive")
        return await super().get_archive(container_id, path)

    async def remove(self, container_id: str) -> None:
        self._maybe_fail("remove")
        await super().remove(container_id)

    async def create(self, name: str, spec: Mapping[str, Any]) -> str:
        self._maybe_fail("create")
        return await super().create(name, spec)

    async def start(self, container_id: str) -> None:
        self._maybe_fail("start")
        await super().start(container_id)
        await asyncio.sleep(self.start_delay)  # the container may die before we record it


def faulty(engines: list[FaultyEngine], **kw: Any) -> Callable[[str], Engine]:
    def make(url: str) -> Engine:
        engines.append(FaultyEngine(url, **kw))
        return engines[-1]

    return make


async def started(start_app: StartApp, config: Config, engines: list[FaultyEngine],
                  **kw: Any) -> Api:  # fmt: skip
    api = await start_app(config, engine=faulty(engines, **kw))
    api.app[keys.SUPERVISOR].retry_base = 0.05  # quick backoff for tests
    return api


async def test_a_finish_that_fails_twice_is_tried_again_and_completes(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """Inspect answering 500 twice at the end: the run still completes, each failure recorded."""
    engines: list[FaultyEngine] = []
    api = await started(start_app, sim_config(), engines)
    run = await api.run(gds("chip_top"))
    await api.wait_running(run)
    engines[0].fail["inspect"] = 2
    ended = await api.wait(run, 60)
    assert ended["Status"] == "completed", ended
    failures = await api.events("server.reaction-failed", run)
    assert len(failures) >= 2
    assert (await api.get(run))["Output"]["Available"] is True


async def test_a_finish_that_always_fails_ends_as_a_system_failure(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """Inspect failing for good: after FINISH_TRIES the run is `failed` (system), its slot free,
    and the next run starts and completes."""
    engines: list[FaultyEngine] = []
    api = await started(start_app, sim_config(), engines)
    run = await api.run(gds("chip_top", "step_sleep=0.05"))
    await api.wait_running(run)
    engines[0].fail["inspect"] = -1
    ended = await api.wait(run, 60)
    assert ended["Status"] == "failed", ended
    [gave_up] = await api.events("run.finish-failed", run)
    assert isinstance(gave_up.event, RunFinishFailed) and gave_up.event.tries == FINISH_TRIES
    doc = await api.get(run)
    assert doc["Result"]["Classification"] == "system"
    assert "could not be recorded" in doc["State"]["Error"]
    engines[0].fail["inspect"] = 0
    nxt = await api.run(gds("chip_top"))
    assert (await api.wait(nxt, 60))["Status"] == "completed"


async def test_a_copy_out_that_always_fails_settles_the_run(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """The archive API failing for good: the run goes finishing -> failed (system), never
    `completed` without its files."""
    engines: list[FaultyEngine] = []
    api = await started(start_app, sim_config(), engines, fail={"get_archive": -1})
    run = await api.run(gds("chip_top"))
    ended = await api.wait(run, 60)
    assert ended["Status"] == "failed", ended
    assert [r.type for r in await api.events(run_id=run) if r.type.startswith("run.")][-2:] == [
        "run.exited",
        "run.finish-failed",
    ]
    doc = await api.get(run)
    assert doc["Output"]["Available"] is False
    assert doc["Result"]["Classification"] == "system"


async def test_a_cancel_whose_kill_fails_is_tried_again(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """Kill answering 500 twice: the cancel still ends the run as `cancelled`."""
    engines: list[FaultyEngine] = []
    api = await started(start_app, sim_config(), engines, fail={"kill": 2})
    run = await api.run(gds("chip_top", "hang"))
    await api.wait_step(run, 14)
    status, _ = await api.cancel(run)
    assert status in (200, 202)
    ended = await api.wait(run, 60)
    assert ended["Status"] == "cancelled", ended
    assert engines[0].calls["kill"] >= 3


async def test_a_timeout_whose_kill_fails_still_ends_the_run(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """The timeout's kill failing once: it is tried again and the run fails as timed out."""
    engines: list[FaultyEngine] = []
    config = sim_config(timeout_minutes=0.05)
    api = await started(start_app, config, engines, fail={"kill": 1})
    run = await api.run(gds("chip_top", "hang"))
    ended = await api.wait(run, 60)
    assert ended["Status"] == "failed", ended
    assert "timeout" in (await api.get(run))["State"]["Error"]
    assert engines[0].calls["kill"] >= 2


async def test_a_container_that_dies_before_its_start_is_recorded_is_finished(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """A container that exits at once, while `run.started` is not yet recorded (its `die` is
    then ignored): the run is still finished, with its real exit code, and the slot freed."""
    engines: list[FaultyEngine] = []
    api = await started(start_app, sim_config(), engines, start_delay=1.0)
    run = await api.run(gds("chip_top", "exit=3"))
    ended = await api.wait(run, 30)
    assert (ended["Status"], ended["StatusCode"]) == ("failed", 3), ended
    nxt = await api.run(gds("chip_top"))
    assert (await api.wait(nxt, 60))["Status"] == "completed"


async def test_a_container_that_cannot_be_removed_wedges_nothing(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """Removing a finished run's container failing three times (as when Docker is stuck
    removing it): the runs after it still start and complete, and it is removed in the end."""
    engines: list[FaultyEngine] = []
    api = await started(start_app, sim_config(), engines, fail={"remove": 3})
    first = await api.run(gds("chip_top"))
    assert (await api.wait(first, 60))["Status"] == "completed"
    second = await api.run(gds("chip_top"))
    assert (await api.wait(second, 60))["Status"] == "completed"
    for run in (first, second):
        container = (await api.get(run))["ContainerId"]
        async with asyncio.timeout(30):  # another process (Docker) removes it: polled
            while await engines[0].inspect(container) is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    failures = [r for r in await api.events("server.reaction-failed") if "remove" in str(r.event)]
    assert len(failures) == 3


async def test_a_start_that_fails_on_dockers_side_is_retried_as_the_next_attempt(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """Docker failing a container's start is a system failure: the attempt is recorded, the
    run queues again and completes on its next attempt; its first container is removed."""
    engines: list[FaultyEngine] = []
    api = await started(start_app, sim_config(max_attempts=2), engines, fail={"start": 1})
    run = await api.run(gds("chip_top"))
    assert (await api.wait(run, 60))["Status"] == "completed"
    attempts = (await api.get(run))["Attempts"]
    assert [(a["Attempt"], a["Engine"]) for a in attempts] == [(1, "local"), (2, "local")]
    assert "injected start failure" in attempts[0]["Error"]
    # It never started: Docker's zero time, as for any time that did not happen.
    assert attempts[0]["ExitCode"] == -1 and attempts[0]["StartedAt"].startswith("0001-01-01")
    retried = [r.event for r in await api.events("run.retried", run)]
    assert len(retried) == 1 and isinstance(retried[0], RunRetried)
    assert await api.events("run.failed-to-start", run) == []
    assert len(await api.events("run.started", run)) == 1
    assert engines[0].calls["start"] == 2 and engines[0].calls["create"] == 2


async def test_a_start_that_always_fails_fails_once_its_attempts_are_spent(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """Creating the container failing every time: tried `max_attempts` times, each recorded,
    then the run fails to start as a system failure; the queue behind it goes on."""
    engines: list[FaultyEngine] = []
    api = await started(start_app, sim_config(max_attempts=3), engines, fail={"create": 3})
    run = await api.run(gds("chip_top"))
    assert (await api.wait(run, 60))["Status"] == "failed"
    ended = await api.get(run)
    assert ended["Result"]["Classification"] == "system"
    assert "injected create failure" in ended["State"]["Error"]
    assert [a["Attempt"] for a in ended["Attempts"]] == [1, 2, 3]
    assert len(await api.events("run.retried", run)) == 2
    assert len(await api.events("run.failed-to-start", run)) == 1
    after = await api.run(gds("chip_top"))
    assert (await api.wait(after, 60))["Status"] == "completed"


async def test_a_give_up_that_cannot_be_recorded_is_tried_again_and_frees_the_slot(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """Recording a run's end gives up, and recording the give-up fails too (a full disk): the
    give-up is tried again until it is in the log, and meanwhile the run's container is gone
    and its slot free, so the next run starts and completes instead of waiting for a restart."""
    engines: list[FaultyEngine] = []
    api = await started(start_app, sim_config(max_concurrent=1), engines)
    store = api.app[keys.STORE]
    real_append = store.append
    disk_full = asyncio.Event()
    disk_full.set()
    refused, refused_twice = 0, asyncio.Event()

    async def append(events: Any, metadata: Any, expect: Any = None) -> Any:
        nonlocal refused
        if disk_full.is_set() and any(isinstance(e, RunFinishFailed) for e in events):
            refused += 1
            if refused >= 2:  # the give-up was tried, refused, and tried again
                refused_twice.set()
            raise OSError(28, "No space left on device")
        return await real_append(events, metadata, expect)

    store.append = append  # type: ignore[method-assign]
    first = await api.run(gds("chip_top", "step_sleep=0.05"))
    await api.wait_running(first)
    engines[0].fail["inspect"] = -1
    second = await api.run(gds("chip_top"))
    await asyncio.wait_for(refused_twice.wait(), 30)
    engines[0].fail["inspect"] = 0
    assert (await api.wait(second, 60))["Status"] == "completed"
    assert (await api.get(first))["State"]["Status"] == "running"  # not in the log yet
    disk_full.clear()  # the operator frees the disk
    assert (await api.wait(first, 60))["Status"] == "failed"
    [gave_up] = await api.events("run.finish-failed", first)
    assert isinstance(gave_up.event, RunFinishFailed)
