"""The end of a run, top to bottom: inspect the container, gather the log's facts, decide the
verdict and record the exit, copy the outputs out, record what was stored, remove the container.

The exit is recorded as soon as Docker and the log tell it, so the run's slot is free for the
next one while a big layout is still being copied out. The copy-out begins as soon as the
container is known to have stopped, beside the exit's recording, and is abandoned (nothing
kept) when the exit retries, cancels or deletes the run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs

from precheck.clock import Clock
from precheck.domain.run_end import (
    GONE,
    ContainerExit,
    Retry,
    exit_events,
    stored_events,
    with_peak,
)
from precheck.domain.status import RunStatus
from precheck.domain.verdict import OutputFacts
from precheck.projections import Projections
from precheck.projections.runs import ResourcePeak, RunRecord
from precheck.runner.copy_out import Caps, CopyOut
from precheck.runner.engine import ContainerState, Engine
from precheck.runner.findings_file import write_findings
from precheck.runner.output_capture import stored_facts
from precheck.runner.recorder import Recorder
from precheck.storage.docker_time import docker_datetime
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore

# The whole log's facts for a run whose container still exists: from its live capture.
FactsOf = Callable[[RunRecord], Awaitable[OutputFacts]]
# The engine a run's container runs on (None: that engine is no longer configured).
EngineOf = Callable[[RunRecord], Engine | None]
# Removing a run's container, tried again on failure: (run, container id, why) -> removed now.
RemoveContainer = Callable[[RunRecord, str, str], Awaitable[bool]]


@attrs.frozen
class RunEnd:
    """Records how runs whose containers stopped ended."""

    engine_of: EngineOf
    state: Projections
    recorder: Recorder
    storage: Storage
    output_lines: OutputLineStore
    facts_of: FactsOf
    timeout_minutes: float
    clock: Clock
    remove: RemoveContainer
    caps: Caps = attrs.field(factory=Caps)
    max_attempts: int = 1

    async def record(self, run_id: str, engine_lost: str = "", died: bool = False) -> bool:
        """Record the end of the run; False when there was nothing to end (it runs on).
        `engine_lost`: its engine stopped answering for good, and this is why. `died`: its
        engine said the container died, so its copy-out begins beside the inspect."""
        run = self.state.runs.get(run_id)
        if run is None or run.settled or run.status not in (RunStatus.RUNNING, RunStatus.FINISHING):
            return False  # gone, ended, or queued (again): no container of it to end
        engine = None if engine_lost else self.engine_of(run)
        # 4, begun first: the outputs, copied out of the stopped container while its exit is
        # recorded, as most of a small copy is the engine preparing the archive.
        copying: CopyOut | None = None
        try:
            if died and engine is not None and run.container_id:
                copying = CopyOut(engine, self.storage, run, run.container_id, self.caps)
            # 1. What its engine says of the container (None: it is gone, or its engine is).
            container = None
            if engine is not None and run.container_id:
                container = await engine.inspect(run.container_id)
            if container is None or (run.status == RunStatus.RUNNING and container.running):
                if copying is not None:
                    await copying.abandon()
                    copying = None
                if container is not None:
                    return False  # a stale event; the container lives on
            elif copying is None and engine is not None:
                copying = CopyOut(engine, self.storage, run, container.id, self.caps)
            if run.status == RunStatus.RUNNING:
                exited, facts = await self._record_exit(run, container, engine_lost)
                if exited is None or exited.settled or exited.status == RunStatus.QUEUED:
                    # Deleted, cancelled or retried: nothing to copy.
                    if copying is not None:
                        await copying.abandon()
                        copying = None
                    await self._remove(run, container)
                    return True
            else:
                # Exited before a restart, outputs not yet stored: finish the copy.
                facts = await stored_facts(self.output_lines, run.id, run.after_line)
        except BaseException:
            if copying is not None:
                await copying.abandon()
            raise
        copied = None
        if copying is not None:
            # With the reports' findings, read in a thread (a big database takes seconds) and
            # written to `findings.json` before the event that counts them.
            copied = await copying.finish(write_findings)
        # 5. What was stored: nothing more will be recorded about the run.
        await self.recorder.append_for(
            run_id, lambda r: stored_events(r, facts, copied, self.clock())
        )
        await self._remove(run, container)
        return True

    async def _record_exit(
        self, run: RunRecord, container: ContainerState | None, engine_lost: str
    ) -> tuple[RunRecord | None, OutputFacts]:
        """Steps 2 and 3: the log's facts (the live capture read to its end, or the stored
        lines), and the verdict, recorded: the slot is free from here on. A system failure
        with attempts left queues the run again instead. The run as it is then, and the facts."""
        if container is not None:
            facts = await self.facts_of(run)
        else:
            facts = await stored_facts(self.output_lines, run.id, run.after_line)
        stopped = _exit(container)
        retry = Retry(self.max_attempts, await self.output_lines.end(run.id))
        peak = await self._peak(run)
        exited = await self.recorder.append_for(
            run.id,
            lambda r: with_peak(
                r,
                peak,
                exit_events(
                    r,
                    stopped,
                    facts,
                    self.timeout_minutes,
                    self.clock(),
                    retry,
                    engine_lost or GONE,
                ),
                self.clock(),
            ),
        )
        return exited, facts

    async def _peak(self, run: RunRecord) -> ResourcePeak | None:
        """The peak of the attempt's resource samples: those after the previous attempt."""
        store = self.output_lines.resources
        if store is None:
            return None
        since = run.attempts[-1].finished_at.timestamp() if run.attempts else 0.0
        p = await store.peak(run.id, since)
        if p is None:
            return None
        return ResourcePeak(p.memory_bytes, p.limit_bytes, p.cpu_percent, p.samples)

    async def _remove(self, run: RunRecord, container: ContainerState | None) -> None:
        # Followers of the log learn it is complete before the container goes.
        self.output_lines.wake_all(run.id)
        if container is not None:
            await self.remove(run, container.id, "its run has ended")


def _exit(container: ContainerState | None) -> ContainerExit | None:
    if container is None:
        return None
    finished = docker_datetime(container.finished_at)
    return ContainerExit(
        container.exit_code, container.oom_killed, finished if finished.year > 1 else None
    )
