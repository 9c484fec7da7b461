"""Following each engine: its `/events` stream (filtered by our label), and on every
(re)connect one reconcile, matching each labelled container there to its run.

A running container whose run is running is adopted (watched again, its capture resuming
after the last stored line); a stopped one is finished; a container no live run owns is
removed and recorded (`StrayContainerRemoved`); a run whose container is gone is finished as
such. A dropped stream is followed again from the last event's time, then reconciled.
"""

from __future__ import annotations

import asyncio
from typing import Any

from precheck.domain.status import RunStatus
from precheck.projections import Projections
from precheck.runner.container_spec import LABEL_RUN, instance_filter
from precheck.runner.engine import EngineError
from precheck.runner.engines import EngineFollower, EnginePool
from precheck.runner.finishing import Finisher
from precheck.runner.recorder import Recorder
from precheck.runner.starting import Starter
from precheck.runner.watching import Watcher

RECONNECT_FIRST = 0.2  # seconds before the first reconnect; doubled up to RECONNECT_MAX
RECONNECT_MAX = 5.0


class Reconciler:
    """Follows every engine's events and reconciles it once per connection."""

    def __init__(
        self,
        state: Projections,
        pool: EnginePool,
        starter: Starter,
        watcher: Watcher,
        finisher: Finisher,
        recorder: Recorder,
        wake: asyncio.Event,
    ) -> None:
        self.state = state
        self.pool = pool
        self.starter = starter
        self.watcher = watcher
        self.finisher = finisher
        self.recorder = recorder
        self.wake = wake

    @property
    def label(self) -> str:
        """The label filter that selects this server's containers."""
        return instance_filter(self.state.instance_id or "")

    async def follow(self, f: EngineFollower) -> None:
        """Subscribe to engine `f`'s events, reconcile it, react; reconnect from the last event
        seen. Waiting to reconnect to an engine that is down is not polling the queue."""
        delay = RECONNECT_FIRST
        while True:
            try:
                since = f.since = f.since or await f.engine.system_time()
                await f.look_at_image()
                # Placed on only once reconciled: a start then cannot race the reconcile for
                # a container left by a start that failed while the engine was away.
                await self.reconcile(f)
                f.reachable, f.error = True, ""
                f.connected.set()
                self.wake.set()
                delay = RECONNECT_FIRST
                async for event in f.engine.events(self.label, since):
                    f.since = _event_time(event) or f.since
                    self._on_docker_event(f, event)
                self.pool.lost(f, "Docker closed the event stream")
            except asyncio.CancelledError:
                raise
            except EngineError as e:
                self.pool.lost(f, e.message)
            except Exception as e:
                self.pool.lost(f, f"{type(e).__name__}: {e}")
                await self.recorder.failed(f"docker-events ({f.name})", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

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
            self.finisher.finish_soon(run_id, died=action == "die")

    async def reconcile(self, f: EngineFollower) -> None:
        """Match every labelled container on engine `f` to its run: adopt, finish or remove it."""
        seen: set[str] = set()
        for container_id in await f.engine.list_labelled(self.label):
            c = await f.engine.inspect(container_id)
            if c is None:
                continue
            run_id = c.labels.get(LABEL_RUN, "")
            if run_id in self.starter.starting:
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
                    self.watcher.watch(run_id, c.id, f)
                else:
                    self.finisher.finish_soon(run_id)  # ended, or exited with outputs inside
                continue
            if run_id in self.finisher.finishing:
                continue  # being recorded and removed right now
            # Removed before the engine takes runs: a start may reuse the stray's name.
            await self.pool.remove_on(f, c.id, "a stray", stray_name=c.name)
        for run in list(self.state.runs.by_id.values()):
            started = run.container_id and not run.settled and run.status != RunStatus.QUEUED
            ours = run.engine == f.name or run.engine not in self.pool.followers
            if started and ours and run.id not in seen and run.id not in self.finisher.finishing:
                # Its container is gone (or its engine is no longer configured): a running
                # run fails as a system failure, an exited one is settled without outputs.
                self.finisher.finish_soon(run.id)


def _event_time(event: dict[str, Any]) -> str | None:
    nanos = event.get("timeNano")
    if isinstance(nanos, int):
        return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"
    t = event.get("time")
    return str(t) if t is not None else None
