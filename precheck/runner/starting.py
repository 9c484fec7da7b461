"""Placing queued runs on engines and starting their containers.

The queue's head goes to an eligible engine with a free slot (`engines.choose`); a head that
fits nowhere waits, and its document's `Queue.Waiting` says why. A start creates the
container, copies the input in, starts it and records `RunStarted`. Starts overlap, on one
engine as on several, each holding a slot while under way; a run's `RunStarted` waits for
the one placed before it, so the log keeps queue order.

A start that fails on Docker's side (any Docker error, the engine lost half-way, a copy-in
cut) is a system failure: the attempt is recorded and the run queues again at its place,
preferring another engine, after a backoff, up to `docker.max_attempts`. An image that no
engine has nor may pull is a configuration error, not a reason to burn attempts.
"""

from __future__ import annotations

import asyncio

from precheck.clock import Clock
from precheck.config import Config
from precheck.domain.run_end import Retry, start_failed_events
from precheck.events.types import RunFailedToStart, RunStarted
from precheck.projections import Projections
from precheck.projections.runs import RunRecord
from precheck.runner.container_spec import container_name, container_spec, input_entries
from precheck.runner.engine import EngineError, EngineNotFound, EngineUnreachable
from precheck.runner.engines import EngineFollower, EnginePool, choose
from precheck.runner.finishing import Finisher
from precheck.runner.image_ref import ImageRef
from precheck.runner.recorder import Recorder
from precheck.runner.retry import Backoff
from precheck.runner.tar_stream import write_tar
from precheck.runner.watching import Watcher
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore
from precheck.tasks import TaskSet

ROOM_RECHECK = 30.0  # seconds between looks at the disk while runs wait for room


class Starter:
    """Starts queued runs, head first, each on the eligible engine with the most free slots."""

    def __init__(
        self,
        config: Config,
        state: Projections,
        pool: EnginePool,
        watcher: Watcher,
        finisher: Finisher,
        recorder: Recorder,
        storage: Storage,
        output_lines: OutputLineStore,
        tasks: TaskSet,
        wake: asyncio.Event,
        clock: Clock,
    ) -> None:
        self.docker = config.docker
        self.min_free_mb = config.server.min_free_mb
        self.state = state
        self.pool = pool
        self.watcher = watcher
        self.finisher = finisher
        self.recorder = recorder
        self.storage = storage
        self.output_lines = output_lines
        self.tasks = tasks
        self.wake = wake
        self.clock = clock
        self.backoff = Backoff(config.docker.max_attempts)  # the wait before a retried start
        self.starting: set[str] = set()
        self.room_recheck = ROOM_RECHECK
        self._room_timer: asyncio.TimerHandle | None = None
        self._held: dict[str, float] = {}  # run -> loop time before which it does not start
        # Done when the last start spawned has recorded `RunStarted` (or given up): starts
        # overlap, but each records after the one before, so the log shows queue order.
        self._last_start: asyncio.Future[None] | None = None

    async def place(self) -> None:
        """Start queued runs, head first; the first that cannot be placed waits, and its
        document says why."""
        waiting: dict[str, str] = {}
        if (why := self._no_room()) is not None:
            for run_id in self.state.queue.startable()[:1]:
                waiting[run_id] = why
            self.state.queue.waiting = waiting
            return
        followers = list(self.pool)
        queue, limit = self.state.queue, self.state.queue.max_running_per_owner
        now = asyncio.get_running_loop().time()
        self._held = {run_id: t for run_id, t in self._held.items() if t > now}
        for run_id in queue.startable():
            if run_id in self.starting:
                continue
            run = self.state.runs.get(run_id)
            if run is None:
                continue
            if self._held.get(run_id, 0.0) > now:
                waiting[run_id] = (
                    f"its start failed; tried again in {self._held[run_id] - now:.0f} s"
                )
                continue
            if run_id in queue.rechecks:
                # Behind every user's run (the fair order puts them last), and within the
                # share of slots re-checks may hold, re-checks being started counted too.
                starting = sum(1 for s in self.starting if s in queue.rechecks)
                if queue.running_rechecks() + starting >= queue.max_rechecks:
                    waiting.setdefault(
                        run_id,
                        f"a re-check: {queue.max_rechecks} of them at most hold a slot at"
                        " once (recheck.max_share)",
                    )
                    continue
            elif limit:  # an owner's runs being started count against its limit too
                owner = queue.owner(run_id)
                starting = sum(1 for s in self.starting if queue.owner(s) == owner)
                if queue.running_by(owner) + starting >= limit:
                    continue
            running = self.pool.running()
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
            self.starting.add(run.id)
            f.starting.add(run.id)
            before, turn = self._last_start, asyncio.get_running_loop().create_future()
            self._last_start = turn
            self.tasks.spawn(self._start(run, f, before, turn), f"start-{run.id}")  # ends: wakes
        self.state.queue.waiting = waiting

    def _no_room(self) -> str | None:
        """Why no run may start for lack of disk, or None. A run's outputs are copied into the
        storage folder at its end; one started with the disk full would fail half-copied. No
        event says the disk was freed: while runs wait for room it is looked at again every
        ROOM_RECHECK seconds (a timer, not a poll of the queue)."""
        keep_free = self.min_free_mb << 20
        if not keep_free or not self.state.queue.length:
            return None
        free = self.storage.free_bytes()
        if free >= keep_free:
            return None
        if self._room_timer is None or self._room_timer.when() <= asyncio.get_running_loop().time():
            self._room_timer = asyncio.get_running_loop().call_later(
                self.room_recheck, self.wake.set
            )
        return (
            f"the server's storage has {free >> 20} MB free, below server.min_free_mb"
            f" ({self.min_free_mb}): runs wait until there is room for their outputs"
        )

    async def _look_at_image(self, f: EngineFollower) -> None:
        try:
            await f.look_at_image()
        except EngineUnreachable as e:
            self.pool.lost(f, e.message)

    async def _no_engine_has_the_image(self, run: RunRecord) -> None:
        """No engine has the image nor may pull it: the run fails now rather than wait."""
        image = self.docker.image
        why = f"Docker: image {image} is not available (pull policy: never)"
        await self.recorder.append(run, [RunFailedToStart(run.id, why, self.clock())])

    async def _image(self, f: EngineFollower, anew: bool = False) -> ImageRef:
        """The configured image's id and repo digest on engine `f`, pulled first when its pull
        policy says so; `anew` (a re-check with the latest image): whenever it may pull."""
        image, policy = self.docker.image, f.config.pull
        if policy == "always" or (anew and policy != "never"):
            await f.engine.pull(image)
        ref = await f.engine.image_ref(image)
        if ref is None and policy == "missing":
            await f.engine.pull(image)
            ref = await f.engine.image_ref(image)
        f.image_present = ref is not None
        if ref is None:
            raise EngineNotFound(404, f"image {image} is not available (pull policy: {policy})")
        return ref

    async def _start(
        self,
        run: RunRecord,
        f: EngineFollower,
        before: asyncio.Future[None] | None,
        turn: asyncio.Future[None],
    ) -> None:
        container_id = ""
        try:
            ref = await self._image(f, anew=bool(run.recheck_of))
            instance = self.state.instance_id or ""
            container_id = await f.engine.create(
                container_name(run, self.docker),
                container_spec(run, self.docker, instance, f.config),
            )
            source = self.storage.upload_file(run.upload_id, run.input.filename)
            await f.engine.put_archive(container_id, "/", write_tar(input_entries(run, source)))
            await f.engine.start(container_id)
            if before is not None:
                await asyncio.wait((before,))  # the run queued before this one records first
            started = RunStarted(
                run.id, container_id, self.docker.image, ref.digest, self.clock(), f.name, ref.id
            )
            if not await self.recorder.append(run, [started]):
                # Cancelled while starting: the container must not outlive that decision.
                await self.pool.remove_on(f, container_id, "cancelled while starting")
                return
            self._held.pop(run.id, None)
            self.watcher.watch(run.id, container_id, f)
            # A container that stopped at once died before `RunStarted` was recorded, when its
            # `die` was no business of a queued run: look at it again now.
            self.finisher.finish_soon(run.id)
        except asyncio.CancelledError:
            raise
        except FileNotFoundError as e:
            self._remove(f, container_id)
            await self.recorder.append(
                run, [RunFailedToStart(run.id, f"input missing: {e}", self.clock())]
            )
        except EngineNotFound as e:
            self._remove(f, container_id)
            if not (f.image_missing and not container_id):
                await self._failed(run, f, f"Docker: {e.message}")
            # else: placed elsewhere, or failed when no engine has the image
        except EngineError as e:
            if isinstance(e, EngineUnreachable):
                self.pool.lost(f, e.message)
            self._remove(f, container_id)
            await self._failed(run, f, f"Docker: {e.message}")
        except Exception as e:
            await self.recorder.failed("start", e, run.id)
            self._remove(f, container_id)
            await self._failed(run, f, f"{type(e).__name__}: {e}")
        finally:
            if not turn.done():
                turn.set_result(None)
            self.starting.discard(run.id)
            f.starting.discard(run.id)
            self.wake.set()

    def _remove(self, f: EngineFollower, container_id: str) -> None:
        # In the background: the retry is recorded now. An engine that stopped answering has
        # it removed as a stray by its reconcile.
        if container_id and f.reachable:
            self.pool.remove_soon(f, container_id, "its start failed")

    async def _failed(self, run: RunRecord, f: EngineFollower, why: str) -> None:
        """A system failure of this attempt's start: retried as the next attempt (held back
        for a backoff), or the run fails to start once its attempts are spent."""
        retry = Retry(self.docker.max_attempts, await self.output_lines.end(run.id))
        after = await self.recorder.append_for(
            run.id, lambda r: start_failed_events(r, f.name, why, self.clock(), retry)
        )
        if after is not None and after.attempt > run.attempt and not after.settled:
            delay = self.backoff.delay(after.attempt - 1)
            loop = asyncio.get_running_loop()
            self._held[run.id] = loop.time() + delay
            loop.call_later(delay, self.wake.set)
