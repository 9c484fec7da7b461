"""The end of a run, top to bottom: inspect the container, gather the log's facts, decide the
verdict and record the exit, copy the outputs out, record what was stored, remove the container.

The exit is recorded as soon as Docker and the log tell it, so the run's slot is free for the
next one while a big layout is still being copied out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs

from precheck.clock import Clock
from precheck.domain.run_end import ContainerExit, exit_events, stored_events
from precheck.domain.status import RunStatus
from precheck.domain.verdict import OutputFacts
from precheck.projections import Projections
from precheck.projections.runs import RunRecord
from precheck.runner.copy_out import Caps, copy_out
from precheck.runner.engine import ContainerState, Engine, parse_docker_time
from precheck.runner.output_capture import stored_facts
from precheck.runner.recorder import Recorder
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore

# The whole log's facts for a run whose container still exists: from its live capture.
FactsOf = Callable[[RunRecord], Awaitable[OutputFacts]]
# Removing a container, tried again on failure: (container id, why) -> removed now.
RemoveContainer = Callable[[str, str], Awaitable[bool]]


@attrs.frozen
class RunEnd:
    """Records how runs whose containers stopped ended."""

    engine: Engine
    state: Projections
    recorder: Recorder
    storage: Storage
    output_lines: OutputLineStore
    facts_of: FactsOf
    timeout_minutes: float
    clock: Clock
    remove: RemoveContainer
    caps: Caps = attrs.field(factory=Caps)

    async def record(self, run_id: str) -> bool:
        """Record the end of the run; False when there was nothing to end (it runs on)."""
        run = self.state.runs.get(run_id)
        if run is None or run.settled:
            return False
        # 1. What Docker says of the container (None: it is gone).
        container = await self.engine.inspect(run.container_id) if run.container_id else None
        if run.status == RunStatus.RUNNING:
            if container is not None and container.running:
                return False  # a stale event; the container lives on
            # 2. The log's facts: the live capture read to its end, or the stored lines.
            if container is not None:
                facts = await self.facts_of(run)
            else:
                facts = await stored_facts(self.output_lines, run.id)
            # 3. The verdict, recorded: the slot is free from here on.
            stopped = _exit(container)
            exited = await self.recorder.append_for(
                run_id,
                lambda r: exit_events(r, stopped, facts, self.timeout_minutes, self.clock()),
            )
            if exited is None or exited.settled:  # deleted, or cancelled: nothing to copy
                await self._remove(run_id, container)
                return True
        else:
            # Exited before a restart, outputs not yet stored: finish the copy.
            facts = await stored_facts(self.output_lines, run.id)
        # 4. The outputs, copied out of the stopped container.
        copied = None
        if container is not None:
            copied = await copy_out(self.engine, self.storage, run, container.id, self.caps)
        # 5. What was stored: nothing more will be recorded about the run.
        await self.recorder.append_for(
            run_id, lambda r: stored_events(r, facts, copied, self.clock())
        )
        await self._remove(run_id, container)
        return True

    async def _remove(self, run_id: str, container: ContainerState | None) -> None:
        # Followers of the log learn it is complete before the container goes.
        self.output_lines.wake_all(run_id)
        if container is not None:
            await self.remove(container.id, "its run has ended")


def _exit(container: ContainerState | None) -> ContainerExit | None:
    if container is None:
        return None
    finished = parse_docker_time(container.finished_at)
    return ContainerExit(
        container.exit_code, container.oom_killed, finished if finished.year > 1 else None
    )
