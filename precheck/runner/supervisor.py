"""Runs prechecks in containers on one or more Docker engines: reacts to the event log and to
each engine's event stream, through the runner's rooms, each with one job:

- `engines.py`, the engine pool: each engine's follower, loss and grace, container removal;
- `starting.py`: placing the queue's head on an engine and starting its container;
- `watching.py`: a running container's output capture, its timeout, kills;
- `finishing.py`: recording a run's end (the story is `run_end.py`), retried, or given up;
- `reconcile.py`: each engine's `/events`, and one reconcile per (re)connection (adoption).

It never polls. It wakes when the store commits (a run queued, cancelled, ended) and when an
engine reports a container of ours died, went OOM or was destroyed. Everything it learns is
appended as events (`recorder.py`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from precheck.clock import Clock
from precheck.config import Config
from precheck.domain.status import RunStatus
from precheck.events.store import EventStore, RecordedEvent
from precheck.projections import Projections
from precheck.projections.runs import RunRecord
from precheck.runner.copy_out import Caps
from precheck.runner.engine import Engine, EngineNotFound
from precheck.runner.engines import EngineFollower, EnginePool
from precheck.runner.finishing import Finisher
from precheck.runner.reconcile import Reconciler
from precheck.runner.recorder import Recorder
from precheck.runner.run_end import RunEnd
from precheck.runner.starting import Starter
from precheck.runner.watching import Watcher
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore
from precheck.tasks import TaskSet


class Supervisor:
    """Keeps at most each engine's `max_concurrent` precheck containers running on it, first
    queued first (fairly across owners)."""

    def __init__(
        self,
        config: Config,
        engines: Engine | list[Engine],
        store: EventStore,
        projections: Projections,
        storage: Storage,
        output_lines: OutputLineStore,
        clock: Clock,
    ) -> None:
        self.state = projections
        self.tasks = TaskSet()
        self.wake = asyncio.Event()
        recorder = Recorder(store, projections, clock)
        clients = engines if isinstance(engines, list) else [engines]
        self.pool = EnginePool(config, clients, projections, recorder, self.tasks, self.wake)
        self.watcher = Watcher(
            config, projections, self.pool, recorder, output_lines, self.tasks, clock
        )
        docker = config.docker
        run_end = RunEnd(
            self.pool.engine_of,
            projections,
            recorder,
            storage,
            output_lines,
            self.watcher.facts,
            docker.timeout_minutes,
            clock,
            self.pool.remove,
            Caps(docker.max_output_files, docker.max_output_mib << 20),
            docker.max_attempts,
        )
        self.finisher = Finisher(
            run_end,
            projections,
            self.pool,
            self.watcher,
            recorder,
            output_lines,
            self.tasks,
            self.wake,
            clock,
        )
        self.starter = Starter(
            config,
            projections,
            self.pool,
            self.watcher,
            self.finisher,
            recorder,
            storage,
            output_lines,
            self.tasks,
            self.wake,
            clock,
        )
        self.reconciler = Reconciler(
            projections, self.pool, self.starter, self.watcher, self.finisher, recorder, self.wake
        )
        self.recorder = recorder
        self.watcher.on_killed = self.finisher.finish_soon
        self.pool.on_gone = self._engine_gone

    @property
    def retry_base(self) -> float:
        """Seconds of the first wait of every retry (tests make it short)."""
        return self.finisher.finish_backoff.base

    @retry_base.setter
    def retry_base(self, seconds: float) -> None:
        for backoff in (
            self.finisher.finish_backoff,
            self.finisher.give_up_backoff,
            self.watcher.kill_backoff,
            self.pool.remove_backoff,
            self.starter.backoff,
        ):
            backoff.base = seconds

    # Lifecycle ---------------------------------------------------------------------------------

    def on_event(self, _: RecordedEvent) -> None:
        """Reaction to the log: something changed; look at the queue again."""
        self.wake.set()

    async def run(self) -> None:
        """The supervisor's life: follow every engine and react to the log until cancelled."""
        for f in self.pool:
            self.tasks.spawn(self.reconciler.follow(f), f"supervisor-events-{f.name}")
            self.pool.start_grace(f)  # until it first answers
        try:
            while True:
                self.wake.clear()
                try:
                    await self._react()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    await self.recorder.failed("react", e)
                await self.wake.wait()
        finally:
            await self.tasks.close()

    async def _react(self) -> None:
        for run_id in list(self.state.queue.running):
            run = self.state.runs.get(run_id)
            f = self.pool.of(run) if run is not None else None
            if run is not None and f is not None and f.reachable and run.cancel_requested:
                self.watcher.cancel_soon(run)
        await self.starter.place()

    def _engine_gone(self, f: EngineFollower, why: str) -> None:
        """An engine stayed unreachable past its grace: its runs end as system failures,
        "engine lost", without asking it (retried elsewhere when attempts are left)."""
        for run in list(self.state.runs.by_id.values()):
            on_it = run.engine == f.name and run.container_id and not run.settled
            if on_it and run.status != RunStatus.QUEUED:
                self.finisher.finish_soon(run.id, why)

    # Reading for the API -----------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The first configured engine's client (the only one in the one-engine form)."""
        return self.pool.first

    @property
    def followers(self) -> dict[str, EngineFollower]:
        """Each configured engine's follower, by name."""
        return self.pool.followers

    @property
    def docker_reachable(self) -> bool:
        """Does every configured engine answer?"""
        return self.pool.reachable

    @property
    def docker_error(self) -> str:
        """Why engines do not answer, one clause per engine ("" when all do)."""
        return self.pool.error

    def engine_documents(self) -> list[dict[str, Any]]:
        """Each engine as `/health` shows it."""
        return self.pool.documents()

    def busy_run_ids(self) -> frozenset[str]:
        """Runs whose containers the supervisor is creating or finishing right now: what it
        holds besides the projections, which a cleanup must not take from it."""
        return frozenset(self.starter.starting) | frozenset(self.finisher.finishing)

    async def stats(self, run: RunRecord) -> dict[str, Any]:
        """Live resource use of a running run's container, from the engine it runs on."""
        f = self.pool.of(run)
        if f is None:
            raise EngineNotFound(404, f"engine {run.engine} is not configured")
        return await f.engine.stats(run.container_id)
