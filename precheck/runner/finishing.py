"""When a run's end is recorded, and what happens when recording it fails.

`run_end.py` tells what ending a run is, top to bottom; this module runs it once per run at
a time, again when a stop came while it ran, with retries and backoff when it fails, and,
once the tries are spent, records the run's end as a system failure (`RunFinishFailed`), that
record itself tried again until it is in the log: no run stays `running` or `finishing` once
its container is gone (invariant 10).
"""

from __future__ import annotations

import asyncio
import logging

from precheck.clock import Clock
from precheck.events.types import Event, RunFinishFailed
from precheck.projections import Projections
from precheck.projections.runs import RunRecord
from precheck.runner.engine import EngineError, EngineUnreachable
from precheck.runner.engines import EnginePool
from precheck.runner.recorder import Recorder
from precheck.runner.retry import Backoff, retried
from precheck.runner.run_end import RunEnd
from precheck.runner.watching import Watcher
from precheck.storage.output_lines import OutputLineStore
from precheck.tasks import TaskSet

log = logging.getLogger(__name__)

FINISH_TRIES = 5
# Recording the give-up is the last word on a run: tried until it is in the log (a full disk
# may take an operator), the wait between tries capped.
GIVE_UP_TRIES = 1_000_000
GIVE_UP_CAP = 60.0


class Finisher:
    """Records how runs whose containers stopped ended, one finish per run at a time."""

    def __init__(
        self,
        run_end: RunEnd,
        state: Projections,
        pool: EnginePool,
        watcher: Watcher,
        recorder: Recorder,
        output_lines: OutputLineStore,
        tasks: TaskSet,
        wake: asyncio.Event,
        clock: Clock,
    ) -> None:
        self.run_end = run_end
        self.state = state
        self.pool = pool
        self.watcher = watcher
        self.recorder = recorder
        self.output_lines = output_lines
        self.tasks = tasks
        self.wake = wake
        self.clock = clock
        self.finish_backoff = Backoff(FINISH_TRIES)
        self.give_up_backoff = Backoff(GIVE_UP_TRIES, cap=GIVE_UP_CAP)
        self.finishing: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()  # a stop came while the run's end was being recorded

    def finish_soon(self, run_id: str, engine_lost: str = "", died: bool = False) -> None:
        """Record the run's end in the background (`engine_lost`: its engine is gone for good,
        and why; `died`: its engine said the container died). A stop seen while it is under
        way finishes it again afterwards."""
        if run_id in self.finishing:
            self._again.add(run_id)  # the finish under way may have seen it running
            return
        self.finishing[run_id] = self.tasks.spawn(
            self._finish(run_id, engine_lost, died), f"finish-{run_id}"
        )

    async def _finish(self, run_id: str, engine_lost: str, died: bool) -> None:
        async def failed(e: Exception, tries: int) -> None:
            await self.recorder.failed(f"finish (try {tries} of {FINISH_TRIES})", e, run_id)

        try:
            ended = await retried(
                lambda: self.run_end.record(run_id, engine_lost, died), self.finish_backoff, failed
            )
            if ended:
                self.watcher.forget(run_id)
        except asyncio.CancelledError:
            raise
        except EngineUnreachable as e:
            run = self.state.runs.get(run_id)
            f = self.pool.of(run) if run is not None else None
            if f is not None:
                self.pool.lost(f, e.message)  # finished by its reconcile on reconnect
        except Exception as e:
            await self._give_up(run_id, e)
        finally:
            self.finishing.pop(run_id, None)
            self.wake.set()
        if run_id in self._again:
            self._again.discard(run_id)
            self.finish_soon(run_id)

    async def _give_up(self, run_id: str, e: Exception) -> None:
        """Record that the run's end could not be recorded: a system failure, never stuck.
        Its container goes first; from then on its slot is free, whether or not the record
        is in the log yet (it waits for a full disk to be freed, say)."""
        run = self.state.runs.get(run_id)
        if run is not None and run.container_id:
            if await self.pool.remove(run, run.container_id, "its run's end could not be recorded"):
                self.pool.released.add(run_id)
                self.wake.set()
        why = e.message if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"

        def gave_up(r: RunRecord) -> list[Event]:
            return [] if r.settled else [RunFinishFailed(r.id, why, FINISH_TRIES, self.clock())]

        async def failed(err: Exception, tries: int) -> None:
            log.error("recording that run %s could not end failed (try %d): %s", run_id, tries, err)

        try:
            await retried(
                lambda: self.recorder.append_for(run_id, gave_up), self.give_up_backoff, failed
            )
        finally:
            self.pool.released.discard(run_id)
        self.watcher.forget(run_id)
        self.output_lines.wake_all(run_id)
