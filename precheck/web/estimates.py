"""Estimates of the queued and running runs now, from the read models and the config."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

from precheck.config import Config
from precheck.domain.estimate import Estimate, QueuedRun, RunningRun, estimate
from precheck.domain.status import RunStatus
from precheck.events.codec import iso
from precheck.projections import Projections

# One set of estimates per state and instant: a list of runs renders many documents at once.
_last: WeakKeyDictionary[Projections, tuple[tuple[int, datetime], dict[str, Estimate]]] = (
    WeakKeyDictionary()
)


def estimates_now(state: Projections, config: Config, now: datetime) -> dict[str, Estimate]:
    """Every queued and running run's estimate at `now`, by id (none without a basis).

    Made once a second at most per state: the followers of many runs share it."""
    now = now.replace(microsecond=0)
    key = (state.position, now)
    memo = _last.get(state)
    if memo is not None and memo[0] == key:
        return memo[1]
    running = []
    for run_id in sorted(state.queue.running):
        run = state.runs.get(run_id)
        phase = state.step_times.phase_of(run_id)
        if run is None or run.started_at is None or phase is None:
            continue
        owner = state.queue.owner(run_id)
        running.append(RunningRun(run_id, run.slot, run.cob, owner, run.started_at, *phase))
    queued = []
    for run_id in state.queue.queued():
        run = state.runs.get(run_id)
        if run is not None:
            queued.append(QueuedRun(run_id, run.slot, run.cob, state.queue.owner(run_id)))
    found = estimate(
        state.step_times.history(),
        running,
        queued,
        config.max_concurrent,
        now,
        config.server.max_running_per_owner,
    )
    _last[state] = (key, found)
    return found


def estimate_of(
    state: Projections, config: Config, run_id: str, status: str, now: datetime | None
) -> Estimate | None:
    """A queued or running run's estimate at `now` (None: not live, or no basis)."""
    if now is None or status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        return None
    return estimates_now(state, config, now).get(run_id)


def estimate_json(found: Estimate | None) -> dict[str, Any] | None:
    """An estimate as documents show it: `Estimate{StartAt, EndAt, Basis}`."""
    if found is None:
        return None
    return {"StartAt": iso(found.start_at), "EndAt": iso(found.end_at), "Basis": found.basis}


def estimate_document(
    state: Projections, config: Config, run_id: str, status: str, now: datetime | None
) -> dict[str, Any] | None:
    """A run's `Estimate`: for a queued or running run with a basis, shown live (`now`)."""
    return estimate_json(estimate_of(state, config, run_id, status, now))
