"""Following a running container's resource use from Docker's stats stream into the run's
timeline: one sample kept per `docker.stats_seconds`, the stream opened again when it breaks
while the run works. A timeline never fails its run: its errors end in a log line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from precheck.runner.engine import Engine, EngineError, EngineNotFound
from precheck.runner.resource_stats import Thinning, has_cpu_figure, sample_of
from precheck.storage.resource_samples import ResourceSample, ResourceSampleStore

log = logging.getLogger(__name__)

REOPEN_FIRST = 1.0  # seconds before opening a broken stream again, doubled up to REOPEN_MAX
REOPEN_MAX = 30.0


class ResourceSampler:
    """Keeps one run's resource timeline while `working()` says the run works."""

    def __init__(
        self,
        engine: Engine,
        store: ResourceSampleStore,
        run_id: str,
        container_id: str,
        interval: float,
        working: Callable[[], bool],
    ) -> None:
        self.engine = engine
        self.store = store
        self.run_id = run_id
        self.container_id = container_id
        self.thinning = Thinning(interval)
        self.working = working
        self._wait = REOPEN_FIRST  # before the next open; back to the first once samples came

    async def run(self) -> None:
        """Sample until the container stops (or the run stops working, or this is cancelled)."""
        last = await self.store.last(self.run_id)  # a resumed run continues its timeline
        if last is not None:
            peak = await self.store.peak(self.run_id)
            self.thinning.last_kept = last.at
            self.thinning.peak_kept = peak.memory_bytes if peak else 0
        try:
            while self.working():
                try:
                    if await self._follow():
                        break  # the container stopped
                except asyncio.CancelledError:
                    raise
                except EngineNotFound:
                    break  # the container is gone
                except EngineError as e:
                    log.info("resource stats of run %s: %s; opening again", self.run_id, e.message)
                except Exception:
                    log.exception("resource stats of run %s failed; opening again", self.run_id)
                await asyncio.sleep(self._wait)
                self._wait = min(2 * self._wait, REOPEN_MAX)
        finally:
            # Also when cancelled (the run's end stops it): the sample held back is kept.
            held = self.thinning.last()
            if held is not None:
                await self._keep(held)

    async def _follow(self) -> bool:
        """Read the stream; True once it says the container stopped."""
        async for stats in self.engine.stats_stream(self.container_id):
            sample = sample_of(stats)
            if sample is None:
                return True  # Docker sends empty samples once the container stopped
            self._wait = REOPEN_FIRST
            if self.thinning.last_kept is not None and not has_cpu_figure(stats):
                continue  # a reopened stream's first message: its CPU is no figure, but 0%
            if self.thinning.take(sample):
                await self._keep(sample)
        return False

    async def _keep(self, sample: ResourceSample) -> None:
        try:
            await self.store.append(self.run_id, sample)
        except Exception:  # a full disk, say: the run goes on without this sample
            log.exception("storing a resource sample of run %s failed", self.run_id)
