"""When queued and running runs will start and end, from how long past runs' steps took. Pure.

Each step's duration is the median of the recent past runs of the same slot size that went
through it (all slot sizes' runs when this size has none yet). A running run ends after the
rest of its current step and the medians of the steps after it. Queued runs are started in the
fair queue's order as slots free up (each owner kept to its running limit), each taking the
sum of its steps' medians: the first slot to free takes the first run that may start.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from statistics import median

import attrs

from precheck.domain.flow import STEPS

START = "(start)"  # the phase from the container's start to the flow's first step
PAD_MASK = "KLayout.CheckPadMask"  # a step of chip-on-board runs only


def flow_phases(cob: bool) -> tuple[str, ...]:
    """The phases a run goes through, in order: its start, then each step of its flow."""
    return (START, *(s for s in STEPS if cob or s != PAD_MASK))


@attrs.frozen
class PastRun:
    """A run that ended (passed, or failed on its design): how long each phase took, in
    seconds. Only whole phases are given: a step cut short by a failure is left out."""

    slot: str
    cob: bool
    seconds: Mapping[str, float]


@attrs.frozen
class RunningRun:
    """A run holding a slot: the phase it is in (`START` before its first step) since when."""

    id: str
    slot: str
    cob: bool
    owner: str
    started_at: datetime
    phase: str
    phase_began: datetime


@attrs.frozen
class QueuedRun:
    """A run waiting for a slot."""

    id: str
    slot: str
    cob: bool
    owner: str


@attrs.frozen
class Estimate:
    """When a run should start and end, and how many past runs that rests on."""

    start_at: datetime
    end_at: datetime
    basis: int


class Medians:
    """Each phase's median duration per slot size, from past runs."""

    def __init__(self, history: Iterable[PastRun]) -> None:
        runs = list(history)
        self._basis: dict[str, int] = {}
        self._by_slot: dict[str, dict[str, float]] = {}
        self._pooled = _medians(runs)
        self._pooled_basis = len(runs)
        self.known = bool(runs)  # any past run at all
        for slot in {r.slot for r in runs}:
            mine = [r for r in runs if r.slot == slot]
            self._by_slot[slot] = _medians(mine)
            self._basis[slot] = len(mine)

    def basis(self, slot: str) -> int:
        """How many past runs the durations of a run of this slot size rest on: those of its
        size, or all of them when it has none (0: no past run at all)."""
        return self._basis.get(slot, self._pooled_basis)

    def phase(self, slot: str, phase: str) -> float:
        """Seconds the phase takes for this slot size; any size's when this one never went
        through it; 0 when no run did."""
        mine = self._by_slot.get(slot, {})
        return mine.get(phase, self._pooled.get(phase, 0.0))

    def after(self, slot: str, cob: bool, phase: str) -> float:
        """Seconds the phases after `phase` take (all of them for a phase not of the flow)."""
        phases = flow_phases(cob)
        rest = phases[phases.index(phase) + 1 :] if phase in phases else phases
        return sum(self.phase(slot, p) for p in rest)

    def whole(self, slot: str, cob: bool) -> float:
        """Seconds a whole run takes."""
        return sum(self.phase(slot, p) for p in flow_phases(cob))


def _medians(runs: Sequence[PastRun]) -> dict[str, float]:
    samples: dict[str, list[float]] = {}
    for r in runs:
        for phase, seconds in r.seconds.items():
            samples.setdefault(phase, []).append(seconds)
    return {phase: median(values) for phase, values in samples.items()}


def remaining(run: RunningRun, medians: Medians, now: datetime) -> float:
    """Seconds until a running run ends: what its phase has left (none once it overran its
    median), then the phases after it."""
    elapsed = (now - run.phase_began).total_seconds()
    known = run.phase in flow_phases(run.cob)
    left = max(0.0, medians.phase(run.slot, run.phase) - elapsed) if known else 0.0
    return left + medians.after(run.slot, run.cob, run.phase)


def estimate(
    history: Iterable[PastRun],
    running: Sequence[RunningRun],
    queued: Sequence[QueuedRun],
    slots: int,
    now: datetime,
    max_running_per_owner: int = 0,
) -> dict[str, Estimate]:
    """The estimate of each running and queued run (`queued` in the order the fair queue
    starts them), by id; empty when no past run gives a basis."""
    medians = Medians(history)
    if not medians.known:
        return {}
    out: dict[str, Estimate] = {}
    ends: list[tuple[datetime, int, str]] = []  # (end, tie-break, owner) of slot holders
    for i, run in enumerate(running):
        end = now + timedelta(seconds=remaining(run, medians, now))
        out[run.id] = Estimate(run.started_at, end, medians.basis(run.slot))
        ends.append((end, i, run.owner))
    heapq.heapify(ends)
    waiting = list(queued)
    t, n = now, len(ends)
    while waiting:
        started = _start_what_fits(waiting, ends, slots, max_running_per_owner)
        for next_run in started:
            end = t + timedelta(seconds=medians.whole(next_run.slot, next_run.cob))
            out[next_run.id] = Estimate(t, end, medians.basis(next_run.slot))
            heapq.heappush(ends, (end, n, next_run.owner))
            n += 1
        if not waiting:
            break
        if not ends:  # nothing runs and nothing may start (no slots): no start to foresee
            break
        t = max(t, heapq.heappop(ends)[0])
    return out


def _start_what_fits(
    waiting: list[QueuedRun], ends: list[tuple[datetime, int, str]], slots: int, limit: int
) -> list[QueuedRun]:
    """Take from `waiting`, in order, the runs that start while slots are free: those of an
    owner at its running limit wait for one of its runs to end."""
    started: list[QueuedRun] = []
    busy: dict[str, int] = {}
    for _, _, owner in ends:
        busy[owner] = busy.get(owner, 0) + 1
    free = slots - len(ends)
    i = 0
    while free > 0 and i < len(waiting):
        owner = waiting[i].owner
        if limit and busy.get(owner, 0) >= limit:
            i += 1
            continue
        started.append(waiting.pop(i))
        busy[owner] = busy.get(owner, 0) + 1
        free -= 1
    return started
