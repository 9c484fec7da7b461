"""The engine pool: one `EngineFollower` per configured Docker engine, and what is done to an
engine as a whole (marking it lost, its grace period, removing containers from it).

A follower holds what the runner knows of one engine: its client, whether it answers (and
why not), where its event stream stands, whether it has the image, and which runs it is
starting. Placement reads these to choose an engine for the head of the queue (`choose`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from precheck.config import Config, EngineConfig
from precheck.events.types import StrayContainerRemoved
from precheck.projections import Projections
from precheck.projections.runs import RunRecord
from precheck.runner.engine import Engine, EngineUnreachable
from precheck.runner.recorder import Recorder
from precheck.runner.retry import Backoff, retried
from precheck.tasks import TaskSet

log = logging.getLogger(__name__)

REMOVE_TRIES = 8


class EngineFollower:
    """One Docker engine as the runner follows it."""

    def __init__(self, config: EngineConfig, engine: Engine, image: str) -> None:
        self.config = config
        self.engine = engine
        self.image = image
        self.reachable = False
        self.error = "not connected yet"
        self.image_present: bool | None = None  # None: not looked at yet
        self.since: str | None = None  # Docker time of the last event seen, to resume from
        self.connected = asyncio.Event()
        self.starting: set[str] = set()  # runs whose containers are being started here
        self.lost_at = time.monotonic()  # when it stopped answering (or was first asked)

    @property
    def name(self) -> str:
        """The engine's configured name."""
        return self.config.name

    @property
    def image_missing(self) -> bool:
        """Is the image absent here, with a pull policy that will not fetch it?"""
        return self.image_present is False and self.config.pull == "never"

    def free(self, running: int) -> int:
        """Slots free when `running` of this engine's runs hold one."""
        return self.config.max_concurrent - running - len(self.starting)

    def why_not(self, running: int) -> str | None:
        """Why no run can start here now; None when one can."""
        if not self.reachable:
            return f"engine {self.name} is unreachable ({self.error})"
        if self.image_missing:
            return f"engine {self.name} lacks image {self.image} (pull policy: never)"
        if self.free(running) <= 0:
            return f"engine {self.name} has all {self.config.max_concurrent} slots busy"
        return None

    def lost(self, why: str) -> bool:
        """Mark the engine unreachable; True when it answered until now."""
        was = self.reachable
        self.reachable = False
        self.error = why
        self.connected.clear()
        if was:
            self.lost_at = time.monotonic()
        return was

    async def look_at_image(self) -> bool:
        """Is the image here? (Asked again after an operator may have loaded it.)"""
        self.image_present = await self.engine.image_id(self.image) is not None
        return self.image_present


def choose(
    followers: list[EngineFollower], running: dict[str, int], avoid: frozenset[str] = frozenset()
) -> EngineFollower | None:
    """The engine the head of the queue starts on: an eligible one with a free slot, one not
    in `avoid` (where its earlier attempts failed) first, then most free slots, then by name."""
    eligible = [f for f in followers if f.why_not(running.get(f.name, 0)) is None]
    if not eligible:
        return None
    return min(eligible, key=lambda f: (f.name in avoid, -f.free(running.get(f.name, 0)), f.name))


# Called once an engine stayed unreachable past its grace period, with why.
EngineGone = Callable[[EngineFollower, str], None]


class EnginePool:
    """Every configured engine's follower, by name, and what is done to engines as a whole.

    `released` holds runs that no longer hold a slot although the log still shows them
    running: their end could not be recorded yet and their container is gone (see
    `finishing.py`), so they must not block the queue until the log catches up."""

    def __init__(
        self,
        config: Config,
        clients: list[Engine],
        state: Projections,
        recorder: Recorder,
        tasks: TaskSet,
        wake: asyncio.Event,
    ) -> None:
        if len(clients) != len(config.engines):
            raise ValueError("one Engine client per configured engine")
        self.followers = {
            e.name: EngineFollower(e, client, config.docker.image)
            for e, client in zip(config.engines, clients, strict=True)
        }
        self.grace_seconds = config.docker.engine_grace_seconds
        self.state = state
        self.recorder = recorder
        self.tasks = tasks
        self.wake = wake
        self.remove_backoff = Backoff(REMOVE_TRIES)
        self.on_gone: EngineGone = lambda f, why: None  # set by the supervisor
        self.released: set[str] = set()
        self._removing: set[str] = set()  # containers whose removal is under way

    def __iter__(self) -> Any:
        return iter(self.followers.values())

    def of(self, run: RunRecord) -> EngineFollower | None:
        """The engine the run's container runs on; None when it is no longer configured."""
        return self.followers.get(run.engine)

    def engine_of(self, run: RunRecord) -> Engine | None:
        """The client of the engine the run's container runs on (None: not configured)."""
        f = self.of(run)
        return f.engine if f is not None else None

    @property
    def first(self) -> Engine:
        """The first configured engine's client (the only one in the one-engine form)."""
        return next(iter(self.followers.values())).engine

    @property
    def reachable(self) -> bool:
        """Does every configured engine answer?"""
        return all(f.reachable for f in self)

    @property
    def error(self) -> str:
        """Why engines do not answer, one clause per engine ("" when all do)."""
        down = [f for f in self if not f.reachable]
        if len(self.followers) == 1:
            return down[0].error if down else ""
        return "; ".join(f"{f.name}: {f.error}" for f in down)

    def running(self) -> dict[str, int]:
        """Runs holding a slot, per engine.

        A run holds its slot until its exit is recorded (`RunExited`), so the log never shows
        more than an engine's `max_concurrent` runs running there at once; copying its outputs
        out afterwards overlaps the next run."""
        counts: dict[str, int] = {}
        for run_id in self.state.queue.running:
            run = self.state.runs.get(run_id)
            if run is not None and run_id not in self.released:
                counts[run.engine] = counts.get(run.engine, 0) + 1
        return counts

    def documents(self) -> list[dict[str, Any]]:
        """Each engine as `/health` shows it: does it answer, why not, its runs and slots, and
        whether it has the image."""
        running = self.running()
        return [
            {
                "name": f.name,
                "reachable": f.reachable,
                "error": f.error or None,
                "running": running.get(f.name, 0),
                "slots": f.config.max_concurrent,
                "image_present": f.image_present,
            }
            for f in self
        ]

    # An engine lost ---------------------------------------------------------------------------

    def lost(self, f: EngineFollower, why: str) -> None:
        """Engine `f` stopped answering: no new runs go there; its grace period starts."""
        if f.lost(why):
            log.warning("lost engine %s: %s", f.name, why)
            self.start_grace(f)
        self.wake.set()  # placement may change

    def start_grace(self, f: EngineFollower) -> None:
        """Give engine `f` its grace period from when it was lost (or first asked)."""
        self.tasks.spawn(self._grace(f, f.lost_at), f"grace-{f.name}")

    async def _grace(self, f: EngineFollower, lost_at: float) -> None:
        """An engine that stopped answering (at `lost_at`) gets `docker.engine_grace_seconds`
        to return, its runs adopted as if nothing happened; after that `on_gone` ends them."""
        await asyncio.sleep(self.grace_seconds)
        if f.reachable or f.lost_at != lost_at:
            return  # it came back (a later loss has a grace of its own)
        why = f"engine lost: {f.name} did not answer for {self.grace_seconds:g} s"
        log.warning("%s (%s)", why, f.error)
        self.on_gone(f, why)

    # Removing containers ----------------------------------------------------------------------

    async def remove(self, run: RunRecord, container_id: str, why: str) -> bool:
        """Remove a run's container from the engine it runs on."""
        f = self.of(run)
        return f is not None and await self.remove_on(f, container_id, why)

    async def remove_on(
        self, f: EngineFollower, container_id: str, why: str, stray_name: str | None = None
    ) -> bool:
        """Remove a container from engine `f`: one try now; a failure (Docker may be stuck
        removing it) is recorded and tried again in the background with backoff, so one
        container never wedges the rest; after the last try it is left for the next
        reconcile. A stray's removal is recorded as an event. True when removed now."""
        if container_id in self._removing:
            return False  # tried again in the background already
        try:
            await f.engine.remove(container_id)
        except asyncio.CancelledError:
            raise
        except EngineUnreachable as e:
            self.lost(f, e.message)  # the reconcile after the reconnect tries again
            return False
        except Exception as e:
            await self._remove_failed(why, e, 1)
            self.remove_soon(f, container_id, why, stray_name, failed=1)
            return False
        await self._removed(container_id, stray_name)
        return True

    def remove_soon(
        self,
        f: EngineFollower,
        container_id: str,
        why: str,
        stray_name: str | None = None,
        failed: int = 0,
    ) -> None:
        """Remove a container in the background, with retries (once: a removal under way
        is not doubled)."""
        if container_id in self._removing:
            return
        self._removing.add(container_id)

        async def remove() -> None:
            async def failed_again(e: Exception, tries: int) -> None:
                await self._remove_failed(why, e, tries)

            try:
                await retried(
                    lambda: f.engine.remove(container_id),
                    self.remove_backoff,
                    failed_again,
                    failed=failed,
                )
            except asyncio.CancelledError:
                raise
            except EngineUnreachable as e:
                self.lost(f, e.message)
                return
            except Exception:
                return  # recorded try by try; the next reconcile finds it again
            finally:
                self._removing.discard(container_id)
            await self._removed(container_id, stray_name)

        self.tasks.spawn(remove(), f"remove-{container_id[:12]}")

    async def _remove_failed(self, why: str, e: Exception, tries: int) -> None:
        n = self.remove_backoff.tries
        await self.recorder.failed(f"remove ({why}, try {tries} of {n})", e)

    async def _removed(self, container_id: str, stray_name: str | None) -> None:
        if stray_name is not None:
            removed = StrayContainerRemoved(container_id, stray_name, self.recorder.clock())
            await self.recorder.append_fact([removed])
