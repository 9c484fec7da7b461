"""The end of a run, top to bottom: inspect the container, gather the log's facts, decide the
verdict and record the exit, copy the outputs out, record what was stored, remove the container.

The exit is recorded as soon as Docker and the log tell it, so the run's slot is free for the
next one while a big layout is still being copied out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import attrs

from precheck.clock import Clock
from precheck.domain.run_end import GONE, ContainerExit, Retry, exit_events, stored_events
from precheck.domain.status import RunStatus
from precheck.domain.verdict import OutputFacts
from precheck.projections import Projections
from precheck.projections.runs import RunRecord
from precheck.runner.copy_out import Caps, copy_out
from precheck.runner.engine import ContainerState, Engine
from precheck.runner.findings_file import store_findings
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

    async def record(self, run_id: str, engine_lost: str = "") -> bool:
        """Record the end of the run; False when there was nothing to end (it runs on).
        `engine_lost`: its engine stopped answering for good, and this is why."""
        run = self.state.runs.get(run_id)
        if run is None or run.settled or run.status not in (RunStatus.RUNNING, RunStatus.FINISHING):
            return False  # gone, ended, or queued (again): no container of it to end
        # 1. What its engine says of the container (None: it is gone, or its engine is).
        engine = None if engine_lost else self.engine_of(run)
        container = None
        if engine is not None and run.container_id:
            container = await engine.inspect(run.container_id)
        if run.status == RunStatus.RUNNING:
            if container is not None and container.running:
                return False  # a stale event; the container lives on
            # 2. The log's facts: the live capture read to its end, or the stored lines.
            if container is not None:
                facts = await self.facts_of(run)
            else:
                facts = await stored_facts(self.output_lines, run.id, run.after_line)
            # 3. The verdict, recorded: the slot is free from here on. A system failure with
            # attempts left queues the run again instead.
            stopped = _exit(container)
            retry = Retry(self.max_attempts, await self.output_lines.end(run.id))
            exited = await self.recorder.append_for(
                run_id,
                lambda r: exit_events(
                    r,
                    stopped,
                    facts,
                    self.timeout_minutes,
                    self.clock(),
                    retry,
                    engine_lost or GONE,
                ),
            )
            if exited is None or exited.settled or exited.status == RunStatus.QUEUED:
                # Deleted, cancelled or retried: nothing to copy.
                await self._remove(run, container)
                return True
        else:
            # Exited before a restart, outputs not yet stored: finish the copy.
            facts = await stored_facts(self.output_lines, run.id, run.after_line)
        # 4. The outputs, copied out of the stopped container.
        copied = None
        if engine is not None and container is not None:
            copied = await copy_out(engine, self.storage, run, container.id, self.caps)
            # The reports' findings, read in a thread (a big database takes seconds) and
            # written to `findings.json` before the event that counts them.
            run_dir = self.storage.run_dir(run.id)
            found = await asyncio.to_thread(store_findings, run_dir, copied.files)
            copied = attrs.evolve(copied, findings=found)
        # 5. What was stored: nothing more will be recorded about the run.
        await self.recorder.append_for(
            run_id, lambda r: stored_events(r, facts, copied, self.clock())
        )
        await self._remove(run, container)
        return True

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
