"""Waiting for a run to end: woken by the store's commits, never by a sleep."""

from __future__ import annotations

import asyncio

from precheck.events.store import EventStore
from precheck.projections import Projections
from precheck.projections.runs import RunRecord


async def wait_for_end(
    store: EventStore, state: Projections, run_id: str, seconds: float
) -> RunRecord | None:
    """The run once it has ended and its outputs are stored (or it is gone), else None after
    `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                run = state.runs.get(run_id)
                if run is None or run.settled:
                    return run
                await store.wait_beyond(state.position)
    except TimeoutError:
        return None
