"""Runs prechecks in containers: reacts to the event log and to Docker's event stream.

It never polls. It wakes when the store commits (a run queued, cancelled, ended) and when
Docker reports a container of ours died, went OOM or was destroyed. On start and after every
reconnect to Docker it reconciles once: every labelled container is matched to its run and
adopted, finished or removed. Everything it learns is appended as events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from precheck.clock import Clock
from precheck.config import Config
from precheck.domain.status import RunStatus
from precheck.domain.verdict import OutputFacts, Step
from precheck.events.store import EventStore, RecordedEvent
from precheck.events.types import (
    RunFailedToStart,
    RunFinishFailed,
    RunProgressed,
    RunStarted,
    RunTimedOut,
    StrayContainerRemoved,
)
from precheck.projections import Projections
from precheck.projections.runs import RunRecord
from precheck.runner.container_spec import (
    LABEL_RUN,
    container_name,
    container_spec,
    input_entries,
    instance_filter,
    step_total,
)
from precheck.runner.copy_out import Caps
from precheck.runner.engine import Engine, EngineError
from precheck.runner.output_capture import OutputCapture
from precheck.runner.recorder import Recorder
from precheck.runner.run_end import RunEnd
from precheck.runner.tar_stream import write_tar
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore

log = logging.getLogger(__name__)

CAPTURE_GRACE = 30.0  # seconds to wait for the last log lines after a container died
# Nothing waits for ever: a failed finish or kill is tried again after RETRY_BASE seconds,
# doubled each time, and given up (and recorded) after this many tries.
FINISH_TRIES = 5
KILL_TRIES = 5
REMOVE_TRIES = 8
RETRY_BASE = 1.0


class Supervisor:
    """Keeps at most `max_concurrent` precheck containers running, first queued first."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        store: EventStore,
        projections: Projections,
        storage: Storage,
        output_lines: OutputLineStore,
        clock: Clock,
    ) -> None:
        self.config = config
        self.engine = engine
        self.engine_config = config.engines[0]  # its slots, pull policy and memory limit
        self.state = projections
        self.storage = storage
        self.output_lines = output_lines
        self.clock = clock
        self.recorder = Recorder(store, projections, clock)
        self.run_end = RunEnd(
            engine,
            projections,
            self.recorder,
            storage,
            output_lines,
            self._facts,
            config.docker.timeout_minutes,
            clock,
            self._remove,
            Caps(config.docker.max_output_files, config.docker.max_output_mib << 20),
        )
        self.docker_reachable = False
        self.docker_error = "not connected yet"
        self._wake = asyncio.Event()
        self._starting: set[str] = set()
        self._killed: set[str] = set()
        self._captures: dict[str, asyncio.Task[OutputFacts]] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._finishing: dict[str, asyncio.Task[None]] = {}
        self._recheck: set[str] = set()  # a stop came while the run's end was being recorded
        self._finish_tries: dict[str, int] = {}
        self._kill_tries: dict[str, int] = {}
        self._remove_tries: dict[str, int] = {}
        self.retry_base = RETRY_BASE
        self._tasks: set[asyncio.Task[Any]] = set()
        self._since: str | None = None  # Docker time of the last event seen, to resume from
        self._connected = asyncio.Event()

    @property
    def label(self) -> str:
        """The label filter that selects this server's containers."""
        return instance_filter(self.state.instance_id or "")

    # Lifecycle ---------------------------------------------------------------------------------

    def on_event(self, _: RecordedEvent) -> None:
        """Store listener: something changed; look at the queue again."""
        self._wake.set()

    async def run(self) -> None:
        """The supervisor's life: follow Docker and react to the log until cancelled."""
        docker = asyncio.create_task(self._follow_docker(), name="supervisor-docker-events")
        try:
            await self._react_forever()
        finally:
            docker.cancel()
            tasks = [docker, *self._tasks]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _react_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._react()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                await self.recorder.failed("react", e)
            await self._wake.wait()

    # Reacting to the log -----------------------------------------------------------------------

    async def _react(self) -> None:
        if not self.docker_reachable:
            return
        for run_id in list(self.state.queue.running):
            run = self.state.runs.get(run_id)
            if run and run.cancel_requested and run_id not in self._killed:
                await self._kill(run, "cancel")
        # A run holds its slot until its exit is recorded (`RunExited`), so the log never
        # shows more than `max_concurrent` runs running at once; copying its outputs out
        # afterwards overlaps the next run.
        live = len(self.state.queue.running) + len(self._starting)
        if self._starting or live >= self.engine_config.max_concurrent:
            return  # one start at a time, so runs are recorded as started in queue order
        head = self.state.queue.head()
        run = self.state.runs.get(head) if head is not None else None
        if run is not None:
            self._starting.add(run.id)
            self._spawn(self._start(run), f"start-{run.id}")  # its end wakes us for the next

    async def _image(self) -> str:
        """The configured image's digest, pulled first when the pull policy says so."""
        image, policy = self.config.docker.image, self.engine_config.pull
        if policy == "always":
            await self.engine.pull(image)
        digest = await self.engine.image_id(image)
        if digest is None and policy == "missing":
            await self.engine.pull(image)
            digest = await self.engine.image_id(image)
        if digest is None:
            raise EngineError(404, f"image {image} is not available (pull policy: {policy})")
        return digest

    async def _start(self, run: RunRecord) -> None:
        container_id = ""
        try:
            digest = await self._image()
            docker, instance = self.config.docker, self.state.instance_id or ""
            container_id = await self.engine.create(
                container_name(run, docker),
                container_spec(run, docker, instance, self.engine_config.memory_limit),
            )
            source = self.storage.upload_file(run.upload_id, run.input.filename)
            await self.engine.put_archive(container_id, "/", write_tar(input_entries(run, source)))
            await self.engine.start(container_id)
            started = RunStarted(
                run.id, container_id, self.config.docker.image, digest, self.clock()
            )
            if not await self.recorder.append(run, [started]):
                # Cancelled while starting: the container must not outlive that decision.
                await self._remove(container_id, "cancelled while starting")
                return
            self._watch(run.id, container_id)
            # A container that stopped at once died before `RunStarted` was recorded, when its
            # `die` was no business of a queued run: look at it again now.
            self._finish_soon(run.id)
        except EngineError as e:
            if container_id:
                await self._remove(container_id, "its start failed")
            if e.status == 900:  # Docker went away: the run stays queued for the reconnect
                self._lost_docker(e.message)
                return
            await self.recorder.append(
                run, [RunFailedToStart(run.id, f"Docker: {e.message}", self.clock())]
            )
        except FileNotFoundError as e:
            await self.recorder.append(
                run, [RunFailedToStart(run.id, f"input missing: {e}", self.clock())]
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:
            await self.recorder.failed("start", e, run.id)
            if container_id:
                await self._remove(container_id, "its start failed")
            await self.recorder.append(
                run, [RunFailedToStart(run.id, f"{type(e).__name__}: {e}", self.clock())]
            )
        finally:
            self._starting.discard(run.id)
            self._wake.set()

    # Watching a running container --------------------------------------------------------------

    def _watch(self, run_id: str, container_id: str) -> None:
        """Capture the run's log and arm its timeout (once per run, also for adopted runs)."""
        capture = self._captures.get(run_id)
        if capture is None or capture.done():
            self._captures[run_id] = self._spawn(
                self._capture(run_id, container_id), f"capture-{run_id}"
            )
        if run_id not in self._timers:
            self._timers[run_id] = self._spawn(
                self._timeout(run_id, container_id), f"timeout-{run_id}"
            )

    async def _capture(self, run_id: str, container_id: str) -> OutputFacts:
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

        capture = OutputCapture(
            self.engine,
            self.output_lines,
            run_id,
            container_id,
            on_step,
            max_bytes=self.config.docker.max_log_mib << 20,
        )
        return await capture.run()

    async def _timeout(self, run_id: str, container_id: str) -> None:
        run = self.state.runs.get(run_id)
        if run is None or run.started_at is None:
            return
        minutes = self.config.docker.timeout_minutes
        deadline = run.started_at + timedelta(minutes=minutes)
        await asyncio.sleep(max(0.0, (deadline - self.clock()).total_seconds()))
        run = self.state.runs.get(run_id)
        if run is None or run.status != RunStatus.RUNNING:
            return
        if not run.timed_out:
            await self.recorder.append(run, [RunTimedOut(run_id, minutes, self.clock())])
        while run is not None and run.status == RunStatus.RUNNING:
            if await self._kill(run, "timeout"):
                self._finish_soon(run_id)  # its `die` does too; this holds if the event is lost
                return
            if self._kill_tries.get(run_id, 0) >= KILL_TRIES:
                return
            await asyncio.sleep(self._backoff(self._kill_tries[run_id]))
            run = self.state.runs.get(run_id)

    async def _kill(self, run: RunRecord, why: str) -> bool:
        """Kill the run's container; False when that failed (tried again, up to KILL_TRIES)."""
        try:
            await self.engine.kill(run.container_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if isinstance(e, EngineError) and e.status == 900:
                self._lost_docker(e.message)  # tried again after the reconnect
                return False
            tries = self._kill_tries[run.id] = self._kill_tries.get(run.id, 0) + 1
            await self.recorder.failed(f"kill ({why}, try {tries} of {KILL_TRIES})", e, run.id)
            if tries >= KILL_TRIES:
                self._killed.add(run.id)  # given up: the timeout kills it, or an operator
            elif why == "cancel":
                asyncio.get_running_loop().call_later(self._backoff(tries), self._wake.set)
            return False
        self._killed.add(run.id)
        self._kill_tries.pop(run.id, None)
        return True

    def _backoff(self, tries: int) -> float:
        return float(self.retry_base * 2 ** (tries - 1))

    # Finishing ---------------------------------------------------------------------------------

    def _finish_soon(self, run_id: str) -> None:
        if run_id not in self._finishing:
            self._finishing[run_id] = self._spawn(self._finish(run_id), f"finish-{run_id}")

    async def _finish(self, run_id: str) -> None:
        try:
            if await self.run_end.record(run_id):
                self._forget(run_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if isinstance(e, EngineError) and e.status == 900:
                self._lost_docker(e.message)  # reconciled again on reconnect
            else:
                await self.recorder.failed("finish", e, run_id)
                self._finish_later(run_id, e)
        finally:
            self._finishing.pop(run_id, None)
            self._wake.set()
        if run_id in self._recheck:
            self._recheck.discard(run_id)
            self._finish_soon(run_id)

    def _finish_later(self, run_id: str, e: Exception) -> None:
        """Try a failed finish again after a backoff; after FINISH_TRIES, record it failed."""
        tries = self._finish_tries[run_id] = self._finish_tries.get(run_id, 0) + 1
        if tries >= FINISH_TRIES:
            self._spawn(self._give_up(run_id, e, tries), f"give-up-{run_id}")
            return

        async def again() -> None:
            await asyncio.sleep(self._backoff(tries))
            self._finish_soon(run_id)

        self._spawn(again(), f"finish-again-{run_id}")

    async def _give_up(self, run_id: str, e: Exception, tries: int) -> None:
        """Record that the run's end could not be recorded: a system failure, never stuck."""
        why = e.message if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"
        await self.recorder.append_for(
            run_id,
            lambda r: [] if r.settled else [RunFinishFailed(r.id, why, tries, self.clock())],
        )
        self._forget(run_id)
        self.output_lines.wake_all(run_id)
        run = self.state.runs.get(run_id)
        if run is not None and run.container_id:
            await self._remove(run.container_id, "its run's end could not be recorded")

    async def _remove(self, container_id: str, why: str, stray_name: str | None = None) -> bool:
        """Remove a container. A failure (Docker may be stuck removing it) is recorded and tried
        again with backoff, up to REMOVE_TRIES, so one container never wedges the rest; after
        that it is left for the next reconcile. A stray's removal is recorded as an event."""
        try:
            await self.engine.remove(container_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if isinstance(e, EngineError) and e.status == 900:
                self._lost_docker(e.message)  # the reconcile after the reconnect tries again
                return False
            tries = self._remove_tries[container_id] = self._remove_tries.get(container_id, 0) + 1
            await self.recorder.failed(f"remove ({why}, try {tries} of {REMOVE_TRIES})", e)
            if tries < REMOVE_TRIES:

                async def again() -> None:
                    await asyncio.sleep(self._backoff(tries))
                    await self._remove(container_id, why, stray_name)

                self._spawn(again(), f"remove-again-{container_id[:12]}")
            return False
        self._remove_tries.pop(container_id, None)
        if stray_name is not None:
            removed = StrayContainerRemoved(container_id, stray_name, self.clock())
            await self.recorder.append_fact([removed])
        return True

    def _forget(self, run_id: str) -> None:
        """Drop what was kept to watch a run that has ended."""
        self._killed.discard(run_id)
        self._finish_tries.pop(run_id, None)
        self._kill_tries.pop(run_id, None)
        self._captures.pop(run_id, None)
        timer = self._timers.pop(run_id, None)
        if timer is not None:
            timer.cancel()

    async def _facts(self, run: RunRecord) -> OutputFacts:
        """The whole log's facts: from the live capture, or a capture run to its end now."""
        capture = self._captures.get(run.id)
        if capture is None or (capture.done() and (capture.cancelled() or capture.exception())):
            # None yet (adopted after a restart) or cut short (Docker went away): start again;
            # it resumes after the last stored line.
            capture = self._captures[run.id] = self._spawn(
                self._capture(run.id, run.container_id), f"capture-{run.id}"
            )
        try:
            return await asyncio.wait_for(asyncio.shield(capture), CAPTURE_GRACE)
        except TimeoutError:
            capture.cancel()
            raise

    # Following Docker --------------------------------------------------------------------------

    def _lost_docker(self, why: str) -> None:
        if self.docker_reachable:
            log.warning("lost Docker: %s", why)
        self.docker_reachable = False
        self.docker_error = why
        self._connected.clear()

    async def _follow_docker(self) -> None:
        """Subscribe to Docker's events, reconcile, react; reconnect from the last event seen."""
        delay = 0.2
        while True:
            try:
                since = self._since = self._since or await self.engine.system_time()
                self.docker_reachable, self.docker_error = True, ""
                self._connected.set()
                await self._reconcile()
                self._wake.set()
                delay = 0.2
                async for event in self.engine.events(self.label, since):
                    self._since = _event_time(event) or self._since
                    self._on_docker_event(event)
                self._lost_docker("Docker closed the event stream")
            except asyncio.CancelledError:
                raise
            except EngineError as e:
                self._lost_docker(e.message)
            except Exception as e:
                self._lost_docker(f"{type(e).__name__}: {e}")
                await self.recorder.failed("docker-events", e)
            # Waiting to reconnect to an engine that is down is not polling the queue.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_docker_event(self, event: dict[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        run_id = attributes.get(LABEL_RUN)
        if not run_id:
            return
        run = self.state.runs.get(run_id)
        # `die` ends a run; `destroy` of a container someone else removed too. OOM needs no
        # reaction of its own: the `die` that follows carries it in the container's state.
        if run is not None and run.status == RunStatus.RUNNING and action in ("die", "destroy"):
            if run_id in self._finishing:
                self._recheck.add(run_id)  # the finish under way may have seen it running
            self._finish_soon(run_id)

    async def _reconcile(self) -> None:
        """Match every labelled container to its run: adopt, finish or remove it."""
        seen: set[str] = set()
        for container_id in await self.engine.list_labelled(self.label):
            c = await self.engine.inspect(container_id)
            if c is None:
                continue
            run_id = c.labels.get(LABEL_RUN, "")
            if run_id in self._starting:
                continue  # being started right now
            run = self.state.runs.get(run_id)
            if run is not None and not run.settled and run.container_id == c.id:
                seen.add(run_id)
                if c.running and run.status == RunStatus.RUNNING:
                    self._watch(run_id, c.id)
                else:
                    self._finish_soon(run_id)  # ended, or exited with outputs still inside
                continue
            if run_id in self._finishing:
                continue  # being recorded and removed right now
            tries = self._remove_tries.get(c.id, 0)
            if tries == 0 or tries >= REMOVE_TRIES:  # else it is being tried again already
                await self._remove(c.id, "a stray", stray_name=c.name)
        for run in list(self.state.runs.by_id.values()):
            started = run.container_id and not run.settled and run.status != RunStatus.QUEUED
            if started and run.id not in seen and run.id not in self._finishing:
                # Its container is gone: a running run fails as a system failure, an exited
                # one is settled without outputs.
                self._finish_soon(run.id)

    def busy_run_ids(self) -> frozenset[str]:
        """Runs whose containers the supervisor is creating or finishing right now: what it
        holds besides the projections, which a cleanup must not take from it."""
        return frozenset(self._starting) | frozenset(self._finishing)

    # Reading for the API -----------------------------------------------------------------------

    async def stats(self, run: RunRecord) -> dict[str, Any]:
        """Live resource use of a running run's container."""
        return await self.engine.stats(run.container_id)


def _event_time(event: dict[str, Any]) -> str | None:
    nanos = event.get("timeNano")
    if isinstance(nanos, int):
        return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"
    t = event.get("time")
    return str(t) if t is not None else None
