"""Watching running containers: each one's output captured into the output-line store (its
step lines recorded as progress), its resource use sampled into its timeline, its timeout
armed, and kills (for a cancel or a timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from precheck.clock import Clock
from precheck.config import Config
from precheck.domain.status import RunStatus
from precheck.domain.verdict import OutputFacts, Step
from precheck.events.types import RunProgressed, RunTimedOut
from precheck.projections import Projections
from precheck.projections.runs import RunRecord
from precheck.runner.container_spec import step_total
from precheck.runner.engine import Engine, EngineUnreachable
from precheck.runner.engines import EngineFollower, EnginePool
from precheck.runner.output_capture import OutputCapture
from precheck.runner.recorder import Recorder
from precheck.runner.resource_sampler import ResourceSampler
from precheck.runner.retry import Backoff, retried
from precheck.storage.output_lines import OutputLineStore
from precheck.tasks import TaskSet

CAPTURE_GRACE = 30.0  # seconds to wait for the last output lines after a container died
SAMPLES_GRACE = 3.0  # and for the sampler to keep the sample it held
KILL_TRIES = 5


class Watcher:
    """Follows each running run's container until it stops."""

    def __init__(
        self,
        config: Config,
        state: Projections,
        pool: EnginePool,
        recorder: Recorder,
        output_lines: OutputLineStore,
        tasks: TaskSet,
        clock: Clock,
    ) -> None:
        self.docker = config.docker
        self.state = state
        self.pool = pool
        self.recorder = recorder
        self.output_lines = output_lines
        self.tasks = tasks
        self.clock = clock
        self.kill_backoff = Backoff(KILL_TRIES)
        self.on_killed: Callable[[str], None] = lambda run_id: None  # set by the supervisor
        self._captures: dict[str, asyncio.Task[OutputFacts]] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._samplers: dict[str, asyncio.Task[None]] = {}
        self._killing: set[str] = set()
        self._killed: set[str] = set()  # killed, or given up on: not tried again for a cancel

    def watch(self, run_id: str, container_id: str, f: EngineFollower) -> None:
        """Capture the run's output and arm its timeout (once at a time; adopted runs too)."""
        capture = self._captures.get(run_id)
        if capture is None or capture.done():
            self._captures[run_id] = self._spawn_capture(run_id, container_id, f.engine)
        timer = self._timers.get(run_id)
        if timer is None or timer.done():
            self._timers[run_id] = self.tasks.spawn(self._timeout(run_id), f"timeout-{run_id}")
        sampler = self._samplers.get(run_id)
        if (sampler is None or sampler.done()) and self.output_lines.resources is not None:
            self._samplers[run_id] = self.tasks.spawn(
                self._sample(run_id, container_id, f.engine), f"resources-{run_id}", quiet=True
            )

    def forget(self, run_id: str) -> None:
        """Drop what was kept to watch a run that has ended."""
        self._killed.discard(run_id)
        self._captures.pop(run_id, None)
        for task in (self._timers.pop(run_id, None), self._samplers.pop(run_id, None)):
            if task is not None:
                task.cancel()

    async def facts(self, run: RunRecord) -> OutputFacts:
        """The whole output's facts: from the live capture, or a capture run to its end now."""
        capture = self._captures.get(run.id)
        if capture is None or (capture.done() and (capture.cancelled() or capture.exception())):
            # None yet (adopted after a restart) or cut short (Docker went away): start again;
            # it resumes after the last stored line.
            f = self.pool.of(run)
            if f is None:
                raise EngineUnreachable(f"engine {run.engine} is not configured")
            capture = self._captures[run.id] = self._spawn_capture(
                run.id, run.container_id, f.engine
            )
        try:
            facts = await asyncio.wait_for(asyncio.shield(capture), CAPTURE_GRACE)
        except TimeoutError:
            capture.cancel()
            raise
        sampler = self._samplers.get(run.id)
        if sampler is not None:
            # The container stopped: Docker's stream would say so only at its next tick, up to
            # a second on. Stopped now, the sampler keeps what it held (it counts in the peak).
            sampler.cancel()
            await asyncio.wait((sampler,), timeout=SAMPLES_GRACE)
        return facts

    def _spawn_capture(
        self, run_id: str, container_id: str, engine: Engine
    ) -> asyncio.Task[OutputFacts]:
        # Quiet: its failure is read by `facts` when the run ends; a run whose engine was lost
        # may never ask, and then it is not worth a warning.
        return self.tasks.spawn(
            self._capture(run_id, container_id, engine), f"capture-{run_id}", quiet=True
        )

    async def _capture(self, run_id: str, container_id: str, engine: Engine) -> OutputFacts:
        async def on_step(step: Step) -> None:
            run = self.state.runs.get(run_id)
            if run is None or run.status != RunStatus.RUNNING:
                return
            if run.progress is not None and run.progress.step >= step.number:
                return  # already recorded (a resumed capture sees old lines again)
            total = step_total(run)
            await self.recorder.append(
                run, [RunProgressed(run_id, step.number, total, step.name, self.clock())]
            )

        run = self.state.runs.get(run_id)
        capture = OutputCapture(
            engine,
            self.output_lines,
            run_id,
            container_id,
            on_step,
            max_bytes=self.docker.max_log_mib << 20,
            after_line=run.after_line if run is not None else 0,
        )
        return await capture.run()

    async def _sample(self, run_id: str, container_id: str, engine: Engine) -> None:
        store = self.output_lines.resources
        if store is None:
            return

        def working() -> bool:
            run = self.state.runs.get(run_id)
            return run is not None and run.status == RunStatus.RUNNING

        sampler = ResourceSampler(
            engine, store, run_id, container_id, self.docker.stats_seconds, working
        )
        await sampler.run()

    # Timeout and kills --------------------------------------------------------------------------

    async def _timeout(self, run_id: str) -> None:
        run = self.state.runs.get(run_id)
        if run is None or run.started_at is None:
            return
        minutes = self.docker.timeout_minutes
        deadline = run.started_at + timedelta(minutes=minutes)
        await asyncio.sleep(max(0.0, (deadline - self.clock()).total_seconds()))
        run = self.state.runs.get(run_id)
        if run is None or run.status != RunStatus.RUNNING:
            return
        if not run.timed_out:
            await self.recorder.append(run, [RunTimedOut(run_id, minutes, self.clock())])
            run = self.state.runs.get(run_id) or run
        if await self.kill(run, "timeout"):
            self.on_killed(run_id)  # its `die` does too; this holds if that event is lost

    def cancel_soon(self, run: RunRecord) -> None:
        """Kill the container of a run whose cancel was asked, once, in the background."""
        if run.id not in self._killing and run.id not in self._killed:
            self.tasks.spawn(self.kill(run, "cancel"), f"kill-{run.id}")

    async def kill(self, run: RunRecord, why: str) -> bool:
        """Kill the run's container, tried again with backoff; False when it was not killed
        (given up after the last try, or its engine stopped answering: its reconnect, and
        the timer armed again by its reconcile, try again)."""
        f = self.pool.of(run)
        if f is None:
            return False  # its engine is no longer configured: nothing to kill it on

        async def failed(e: Exception, tries: int) -> None:
            n = self.kill_backoff.tries
            await self.recorder.failed(f"kill ({why}, try {tries} of {n})", e, run.id)

        self._killing.add(run.id)
        try:
            await retried(lambda: f.engine.kill(run.container_id), self.kill_backoff, failed)
        except asyncio.CancelledError:
            raise
        except EngineUnreachable as e:
            self.pool.lost(f, e.message)
            return False
        except Exception:
            self._killed.add(run.id)  # given up: the timeout kills it, or an operator
            return False
        finally:
            self._killing.discard(run.id)
        self._killed.add(run.id)
        return True
