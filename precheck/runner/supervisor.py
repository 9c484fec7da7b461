"""Runs prechecks in containers on one or more Docker engines: reacts to the event log and to
each engine's event stream.

It never polls. It wakes when the store commits (a run queued, cancelled, ended) and when an
engine reports a container of ours died, went OOM or was destroyed. One queue serves every
engine: its head starts on an eligible engine with a free slot. On start and after every
reconnect to an engine it reconciles that engine once: every labelled container there is matched
to its run and adopted, finished or removed. Everything it learns is appended as events.
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
from precheck.runner.engines import EngineFollower, choose
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
    """Keeps at most each engine's `max_concurrent` precheck containers running on it, first
    queued first."""

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
        self.config = config
        clients = engines if isinstance(engines, list) else [engines]
        if len(clients) != len(config.engines):
            raise ValueError("one Engine client per configured engine")
        self.followers = {
            e.name: EngineFollower(e, client, config.docker.image)
            for e, client in zip(config.engines, clients, strict=True)
        }
        self.state = projections
        self.storage = storage
        self.output_lines = output_lines
        self.clock = clock
        self.recorder = Recorder(store, projections, clock)
        self.run_end = RunEnd(
            self._engine_of,
            projections,
            self.recorder,
            storage,
            output_lines,
            self._facts,
            config.docker.timeout_minutes,
            clock,
            self._remove,
            Caps(config.docker.max_output_files, config.docker.max_output_mib << 20),
            config.docker.max_attempts,
        )
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
        # Done when the last start spawned has recorded `RunStarted` (or given up): starts
        # overlap, but each records after the one before, so the log shows queue order.
        self._last_start: asyncio.Future[None] | None = None

    @property
    def engine(self) -> Engine:
        """The first configured engine's client (the only one in the one-engine form)."""
        return next(iter(self.followers.values())).engine

    @property
    def docker_reachable(self) -> bool:
        """Does every configured engine answer?"""
        return all(f.reachable for f in self.followers.values())

    @property
    def docker_error(self) -> str:
        """Why engines do not answer, one clause per engine ("" when all do)."""
        down = [f for f in self.followers.values() if not f.reachable]
        if len(self.followers) == 1:
            return down[0].error if down else ""
        return "; ".join(f"{f.name}: {f.error}" for f in down)

    def _follower(self, run: RunRecord) -> EngineFollower | None:
        """The engine the run's container runs on; None when it is no longer configured."""
        return self.followers.get(run.engine)

    def _engine_of(self, run: RunRecord) -> Engine | None:
        f = self._follower(run)
        return f.engine if f is not None else None

    @property
    def label(self) -> str:
        """The label filter that selects this server's containers."""
        return instance_filter(self.state.instance_id or "")

    # Lifecycle ---------------------------------------------------------------------------------

    def on_event(self, _: RecordedEvent) -> None:
        """Store listener: something changed; look at the queue again."""
        self._wake.set()

    async def run(self) -> None:
        """The supervisor's life: follow every engine and react to the log until cancelled."""
        followers = [
            asyncio.create_task(self._follow_docker(f), name=f"supervisor-events-{f.name}")
            for f in self.followers.values()
        ]
        for f in self.followers.values():
            self._spawn(self._grace(f, f.lost_at), f"grace-{f.name}")  # until it first answers
        try:
            await self._react_forever()
        finally:
            tasks = [*followers, *self._tasks]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if name.startswith("capture-"):
            # Its failure is read by `_facts` when the run ends; a run whose engine was lost
            # may never ask, and then it is not worth a warning.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
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
        for run_id in list(self.state.queue.running):
            run = self.state.runs.get(run_id)
            f = self._follower(run) if run is not None else None
            if run and f and f.reachable and run.cancel_requested and run_id not in self._killed:
                await self._kill(run, "cancel")
        await self._place()

    def _running_per_engine(self) -> dict[str, int]:
        # A run holds its slot until its exit is recorded (`RunExited`), so the log never
        # shows more than an engine's `max_concurrent` runs running there at once; copying
        # its outputs out afterwards overlaps the next run.
        counts: dict[str, int] = {}
        for run_id in self.state.queue.running:
            run = self.state.runs.get(run_id)
            if run is not None:
                counts[run.engine] = counts.get(run.engine, 0) + 1
        return counts

    async def _place(self) -> None:
        """Start queued runs, head first, each on the eligible engine with the most free
        slots; the first that cannot be placed waits, and its document says why."""
        waiting: dict[str, str] = {}
        followers = list(self.followers.values())
        queue, limit = self.state.queue, self.state.queue.max_running_per_owner
        for run_id in queue.startable():
            if run_id in self._starting:
                continue
            run = self.state.runs.get(run_id)
            if run is None:
                continue
            if limit:  # an owner's runs being started count against its limit too
                owner = queue.owner(run_id)
                starting = sum(1 for s in self._starting if queue.owner(s) == owner)
                if queue.running_by(owner) + starting >= limit:
                    continue
            running = self._running_per_engine()
            avoid = frozenset(a.engine for a in run.attempts)  # a retry prefers another
            f = choose(followers, running, avoid)
            if f is None and any(g.reachable and g.image_missing for g in followers):
                # An operator may have loaded the image since it was looked at.
                for g in followers:
                    if g.reachable and g.image_missing:
                        await self._look_at_image(g)
                f = choose(followers, running, avoid)
            if f is None:
                if all(g.reachable and g.image_missing for g in followers):
                    await self._no_engine_has_the_image(run)
                    continue
                reasons = (g.why_not(running.get(g.name, 0)) for g in followers)
                waiting[run_id] = "; ".join(r for r in reasons if r)
                break
            self._starting.add(run.id)
            f.starting.add(run.id)
            before, turn = self._last_start, asyncio.get_running_loop().create_future()
            self._last_start = turn
            self._spawn(self._start(run, f, before, turn), f"start-{run.id}")  # ends: wakes us
        self.state.queue.waiting = waiting

    async def _look_at_image(self, f: EngineFollower) -> None:
        try:
            await f.look_at_image()
        except EngineError as e:
            if e.status == 900:
                self._lost_docker(f, e.message)

    async def _no_engine_has_the_image(self, run: RunRecord) -> None:
        """No engine has the image nor may pull it: the run fails now rather than wait."""
        image = self.config.docker.image
        why = f"Docker: image {image} is not available (pull policy: never)"
        await self.recorder.append(run, [RunFailedToStart(run.id, why, self.clock())])

    async def _image(self, f: EngineFollower) -> str:
        """The configured image's digest on engine `f`, pulled first when its pull policy
        says so."""
        image, policy = self.config.docker.image, f.config.pull
        if policy == "always":
            await f.engine.pull(image)
        digest = await f.engine.image_id(image)
        if digest is None and policy == "missing":
            await f.engine.pull(image)
            digest = await f.engine.image_id(image)
        f.image_present = digest is not None
        if digest is None:
            raise EngineError(404, f"image {image} is not available (pull policy: {policy})")
        return digest

    async def _start(
        self,
        run: RunRecord,
        f: EngineFollower,
        before: asyncio.Future[None] | None = None,
        turn: asyncio.Future[None] | None = None,
    ) -> None:
        container_id = ""
        engine = f.engine
        try:
            digest = await self._image(f)
            docker, instance = self.config.docker, self.state.instance_id or ""
            container_id = await engine.create(
                container_name(run, docker),
                container_spec(run, docker, instance, f.config),
            )
            source = self.storage.upload_file(run.upload_id, run.input.filename)
            await engine.put_archive(container_id, "/", write_tar(input_entries(run, source)))
            await engine.start(container_id)
            if before is not None:
                await asyncio.wait((before,))  # the run queued before this one records first
            started = RunStarted(
                run.id, container_id, self.config.docker.image, digest, self.clock(), f.name
            )
            if not await self.recorder.append(run, [started]):
                # Cancelled while starting: the container must not outlive that decision.
                await self._remove_on(f, container_id, "cancelled while starting")
                return
            self._watch(run.id, container_id, f)
            # A container that stopped at once died before `RunStarted` was recorded, when its
            # `die` was no business of a queued run: look at it again now.
            self._finish_soon(run.id)
        except EngineError as e:
            if container_id:
                await self._remove_on(f, container_id, "its start failed")
            if e.status == 900:  # the engine went away: the run stays queued for another
                self._lost_docker(f, e.message)
                return
            if e.status == 404 and f.image_missing:
                return  # placed elsewhere, or failed when no engine has the image
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
                await self._remove_on(f, container_id, "its start failed")
            await self.recorder.append(
                run, [RunFailedToStart(run.id, f"{type(e).__name__}: {e}", self.clock())]
            )
        finally:
            if turn is not None and not turn.done():
                turn.set_result(None)
            self._starting.discard(run.id)
            f.starting.discard(run.id)
            self._wake.set()

    # Watching a running container --------------------------------------------------------------

    def _watch(self, run_id: str, container_id: str, f: EngineFollower) -> None:
        """Capture the run's log and arm its timeout (once per run, also for adopted runs)."""
        capture = self._captures.get(run_id)
        if capture is None or capture.done():
            self._captures[run_id] = self._spawn(
                self._capture(run_id, container_id, f.engine), f"capture-{run_id}"
            )
        if run_id not in self._timers:
            self._timers[run_id] = self._spawn(
                self._timeout(run_id, container_id), f"timeout-{run_id}"
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
            max_bytes=self.config.docker.max_log_mib << 20,
            after_line=run.after_line if run is not None else 0,
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
        f = self._follower(run)
        if f is None:
            return False  # its engine is no longer configured: nothing to kill it on
        try:
            await f.engine.kill(run.container_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if isinstance(e, EngineError) and e.status == 900:
                self._lost_docker(f, e.message)  # tried again after the reconnect
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

    def _finish_soon(self, run_id: str, engine_lost: str = "") -> None:
        if run_id not in self._finishing:
            self._finishing[run_id] = self._spawn(
                self._finish(run_id, engine_lost), f"finish-{run_id}"
            )

    async def _finish(self, run_id: str, engine_lost: str = "") -> None:
        try:
            if await self.run_end.record(run_id, engine_lost):
                self._forget(run_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            run = self.state.runs.get(run_id)
            f = self._follower(run) if run is not None else None
            if isinstance(e, EngineError) and e.status == 900 and f is not None:
                self._lost_docker(f, e.message)  # reconciled again on reconnect
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
            await self._remove(run, run.container_id, "its run's end could not be recorded")

    async def _remove(self, run: RunRecord, container_id: str, why: str) -> bool:
        """Remove a run's container from the engine it runs on."""
        f = self._follower(run)
        return f is not None and await self._remove_on(f, container_id, why)

    async def _remove_on(
        self, f: EngineFollower, container_id: str, why: str, stray_name: str | None = None
    ) -> bool:
        """Remove a container from engine `f`. A failure (Docker may be stuck removing it) is
        recorded and tried again with backoff, up to REMOVE_TRIES, so one container never
        wedges the rest; after that it is left for the next reconcile. A stray's removal is
        recorded as an event."""
        try:
            await f.engine.remove(container_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if isinstance(e, EngineError) and e.status == 900:
                self._lost_docker(f, e.message)  # the reconcile after the reconnect tries again
                return False
            tries = self._remove_tries[container_id] = self._remove_tries.get(container_id, 0) + 1
            await self.recorder.failed(f"remove ({why}, try {tries} of {REMOVE_TRIES})", e)
            if tries < REMOVE_TRIES:

                async def again() -> None:
                    await asyncio.sleep(self._backoff(tries))
                    await self._remove_on(f, container_id, why, stray_name)

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
            engine = self._engine_of(run)
            if engine is None:
                raise EngineError(900, f"engine {run.engine} is not configured")
            capture = self._captures[run.id] = self._spawn(
                self._capture(run.id, run.container_id, engine), f"capture-{run.id}"
            )
        try:
            return await asyncio.wait_for(asyncio.shield(capture), CAPTURE_GRACE)
        except TimeoutError:
            capture.cancel()
            raise

    # Following Docker --------------------------------------------------------------------------

    def _lost_docker(self, f: EngineFollower, why: str) -> None:
        if f.lost(why):
            log.warning("lost engine %s: %s", f.name, why)
            self._spawn(self._grace(f, f.lost_at), f"grace-{f.name}")

    async def _grace(self, f: EngineFollower, lost_at: float) -> None:
        """An engine that stopped answering (at `lost_at`) gets `docker.engine_grace_seconds`
        to return, its runs adopted as if nothing happened; after that they end as system
        failures, "engine lost" (retried elsewhere when attempts are left)."""
        await asyncio.sleep(self.config.docker.engine_grace_seconds)
        if f.reachable or f.lost_at != lost_at:
            return  # it came back (a later loss has a grace of its own)
        grace = self.config.docker.engine_grace_seconds
        why = f"engine lost: {f.name} did not answer for {grace:g} s"
        log.warning("%s (%s)", why, f.error)
        for run in list(self.state.runs.by_id.values()):
            on_it = run.engine == f.name and run.container_id and not run.settled
            if on_it and run.status != RunStatus.QUEUED:
                self._finish_soon(run.id, why)

    async def _follow_docker(self, f: EngineFollower) -> None:
        """Subscribe to engine `f`'s events, reconcile it, react; reconnect from the last event
        seen."""
        delay = 0.2
        while True:
            try:
                since = f.since = f.since or await f.engine.system_time()
                await f.look_at_image()
                # Placed on only once reconciled: a start then cannot race the reconcile for
                # a container left by a start that failed while the engine was away.
                await self._reconcile(f)
                f.reachable, f.error = True, ""
                f.connected.set()
                self._wake.set()
                delay = 0.2
                async for event in f.engine.events(self.label, since):
                    f.since = _event_time(event) or f.since
                    self._on_docker_event(f, event)
                self._lost_docker(f, "Docker closed the event stream")
            except asyncio.CancelledError:
                raise
            except EngineError as e:
                self._lost_docker(f, e.message)
            except Exception as e:
                self._lost_docker(f, f"{type(e).__name__}: {e}")
                await self.recorder.failed(f"docker-events ({f.name})", e)
            self._wake.set()  # its runs' placement may change
            # Waiting to reconnect to an engine that is down is not polling the queue.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_docker_event(self, f: EngineFollower, event: dict[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        run_id = attributes.get(LABEL_RUN)
        if not run_id:
            return
        run = self.state.runs.get(run_id)
        if run is None or run.engine != f.name:
            return  # not the container the run runs in now
        # `die` ends a run; `destroy` of a container someone else removed too. OOM needs no
        # reaction of its own: the `die` that follows carries it in the container's state.
        if run.status == RunStatus.RUNNING and action in ("die", "destroy"):
            if run_id in self._finishing:
                self._recheck.add(run_id)  # the finish under way may have seen it running
            self._finish_soon(run_id)

    async def _reconcile(self, f: EngineFollower) -> None:
        """Match every labelled container on engine `f` to its run: adopt, finish or remove it."""
        seen: set[str] = set()
        for container_id in await f.engine.list_labelled(self.label):
            c = await f.engine.inspect(container_id)
            if c is None:
                continue
            run_id = c.labels.get(LABEL_RUN, "")
            if run_id in self._starting:
                continue  # being started right now
            run = self.state.runs.get(run_id)
            if (
                run is not None
                and not run.settled
                and run.container_id == c.id
                and run.engine == f.name
            ):
                seen.add(run_id)
                if c.running and run.status == RunStatus.RUNNING:
                    self._watch(run_id, c.id, f)
                else:
                    self._finish_soon(run_id)  # ended, or exited with outputs still inside
                continue
            if run_id in self._finishing:
                continue  # being recorded and removed right now
            tries = self._remove_tries.get(c.id, 0)
            if tries == 0 or tries >= REMOVE_TRIES:  # else it is being tried again already
                await self._remove_on(f, c.id, "a stray", stray_name=c.name)
        for run in list(self.state.runs.by_id.values()):
            started = run.container_id and not run.settled and run.status != RunStatus.QUEUED
            ours = run.engine == f.name or run.engine not in self.followers
            if started and ours and run.id not in seen and run.id not in self._finishing:
                # Its container is gone (or its engine is no longer configured): a running
                # run fails as a system failure, an exited one is settled without outputs.
                self._finish_soon(run.id)

    def busy_run_ids(self) -> frozenset[str]:
        """Runs whose containers the supervisor is creating or finishing right now: what it
        holds besides the projections, which a cleanup must not take from it."""
        return frozenset(self._starting) | frozenset(self._finishing)

    # Reading for the API -----------------------------------------------------------------------

    def engine_documents(self) -> list[dict[str, Any]]:
        """Each engine as `/health` shows it: does it answer, why not, its runs and slots, and
        whether it has the image."""
        running = self._running_per_engine()
        return [
            {
                "name": f.name,
                "reachable": f.reachable,
                "error": f.error or None,
                "running": running.get(f.name, 0),
                "slots": f.config.max_concurrent,
                "image_present": f.image_present,
            }
            for f in self.followers.values()
        ]

    async def stats(self, run: RunRecord) -> dict[str, Any]:
        """Live resource use of a running run's container, from the engine it runs on."""
        engine = self._engine_of(run)
        if engine is None:
            raise EngineError(404, f"engine {run.engine} is not configured")
        return await engine.stats(run.container_id)


def _event_time(event: dict[str, Any]) -> str | None:
    nanos = event.get("timeNano")
    if isinstance(nanos, int):
        return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"
    t = event.get("time")
    return str(t) if t is not None else None
