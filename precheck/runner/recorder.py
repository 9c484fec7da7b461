"""How the runner records what it learns: appends about a run under its expected version, and
failed reactions, which are logged and recorded while the runner goes on."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable

from precheck.clock import Clock
from precheck.events.store import ConcurrencyError, EventStore
from precheck.events.streams import run_stream
from precheck.events.types import Event, Metadata, ReactionFailed
from precheck.projections import Projections
from precheck.projections.runs import RunRecord

log = logging.getLogger(__name__)

SUPERVISOR = Metadata(actor="supervisor")
REBUILDS = 5  # a run changes a handful of times at most while its end is recorded


class Recorder:
    """Appends the runner's events as `supervisor`."""

    def __init__(self, store: EventStore, state: Projections, clock: Clock) -> None:
        self.store = store
        self.state = state
        self.clock = clock

    async def append(self, run: RunRecord, events: list[Event]) -> bool:
        """Append events about `run` if it has not changed since it was read."""
        try:
            await self.store.append(events, SUPERVISOR, {run_stream(run.id): run.version})
        except ConcurrencyError:
            return False
        return True

    async def append_fact(self, events: list[Event]) -> None:
        """Append events that depend on no run's state (a stray container removed)."""
        await self.store.append(events, SUPERVISOR)

    async def append_for(
        self, run_id: str, build: Callable[[RunRecord], list[Event]]
    ) -> RunRecord | None:
        """Append what `build` makes of the run's latest record, rebuilt if the run changed
        meanwhile; return the record after it (None: the run is gone)."""
        for _ in range(REBUILDS):
            run = self.state.runs.get(run_id)
            if run is None:
                return None
            events = build(run)
            if not events or await self.append(run, events):
                return self.state.runs.get(run_id)
        raise RuntimeError(f"run {run_id} kept changing while its end was recorded")

    async def failed(self, component: str, e: BaseException, run_id: str | None = None) -> None:
        """Log a failed reaction with its traceback and record it; the caller goes on."""
        log.error("supervisor %s failed:\n%s", component, "".join(traceback.format_exception(e)))
        with contextlib.suppress(Exception):
            await self.store.append(
                [ReactionFailed(component, f"{type(e).__name__}: {e}", self.clock(), run_id)],
                SUPERVISOR,
            )
