"""Estimates of when runs start and end, from made-up histories of past runs' step times."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.estimate_bench import Day, arrivals, errors
from precheck.domain.estimate import (
    START,
    Estimate,
    Medians,
    PastRun,
    QueuedRun,
    RunningRun,
    estimate,
    flow_phases,
)
from precheck.events.types import (
    Event,
    RunCancelled,
    RunProgressed,
    RunRetried,
)
from precheck.projections.step_times import KEEP
from tests.factories import given, run_exited, run_queued, run_started

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
PHASES = flow_phases(cob=False)  # the start and 16 steps
MIN = timedelta(minutes=1)


def past(slot: str = "1x1", minutes: float = 1.0, cob: bool = False, **odd: float) -> PastRun:
    """A past run whose every phase took `minutes`, but those named in `odd` (`_` for `.`)."""
    seconds = {p: minutes * 60 for p in flow_phases(cob)}
    seconds.update({k.replace("_", "."): v * 60 for k, v in odd.items()})
    return PastRun(slot, cob, seconds)


def running(run_id: str, phase: str, began: datetime, owner: str = "a") -> RunningRun:
    """A 1x1 run started half an hour ago, in `phase` since `began`."""
    return RunningRun(run_id, "1x1", False, owner, NOW - 30 * MIN, phase, began)


def test_no_past_run_no_estimate() -> None:
    """Without any past run there is nothing to rest an estimate on."""
    queued = [QueuedRun("q1", "1x1", False, "a")]
    assert estimate([], [running("r1", START, NOW)], queued, 1, NOW) == {}


def test_each_phase_takes_the_median_of_the_past_runs() -> None:
    """Three past runs: each phase's median, whatever the others' order."""
    m = Medians([past(KLayout_DRC=5), past(KLayout_DRC=50), past(KLayout_DRC=20)])
    assert m.phase("1x1", "KLayout.DRC") == 20 * 60
    assert m.phase("1x1", "Magic.DRC") == 60
    assert m.whole("1x1", False) == (16 + 20) * 60
    assert m.basis("1x1") == 3


def test_a_running_run_ends_after_its_steps_left() -> None:
    """In `KLayout.DRC` (median 20 min) for 5 min: 15 min more, then two 1-min steps."""
    history = [past(KLayout_DRC=20)] * 3
    out = estimate(history, [running("r1", "KLayout.DRC", NOW - 5 * MIN)], [], 1, NOW)
    assert out == {"r1": Estimate(NOW - 30 * MIN, NOW + 17 * MIN, 3)}


def test_a_step_past_its_median_has_nothing_left() -> None:
    """A step running longer than its median is taken to end now: only the later ones remain."""
    out = estimate([past()], [running("r1", "Checker.KLayoutDRC", NOW - 9 * MIN)], [], 1, NOW)
    assert out["r1"].end_at == NOW + MIN


def test_a_queued_run_starts_when_the_slot_frees() -> None:
    """One slot: the run just started (17 min left) holds it; the two queued follow."""
    queued = [QueuedRun("q1", "1x1", False, "b"), QueuedRun("q2", "1x1", False, "c")]
    out = estimate([past()], [running("r1", START, NOW)], queued, 1, NOW)
    assert out["q1"] == Estimate(NOW + 17 * MIN, NOW + 34 * MIN, 1)
    assert out["q2"] == Estimate(NOW + 34 * MIN, NOW + 51 * MIN, 1)


def test_queued_runs_take_the_first_slot_to_free() -> None:
    """Two slots, ending in 10 and 2 min: the first queued run takes the one freeing in 2."""
    hold = [
        running("r1", "KLayout.DRC", NOW - 9 * MIN),  # 1 + 1 + 1 left (median 10): ... 3 min
        running("r2", "Checker.KLayoutDRC", NOW),  # 1 + 1 left: 2 min
    ]
    history = [past(KLayout_DRC=10)]
    queued = [QueuedRun(f"q{i}", "1x1", False, "b") for i in (1, 2, 3)]
    out = estimate(history, hold, queued, 2, NOW)
    assert out["r1"].end_at == NOW + 3 * MIN
    assert out["r2"].end_at == NOW + 2 * MIN
    whole = 26 * MIN  # 16 one-minute phases and DRC's 10
    assert out["q1"].start_at == NOW + 2 * MIN
    assert out["q2"].start_at == NOW + 3 * MIN
    assert out["q3"] == Estimate(NOW + 2 * MIN + whole, NOW + 2 * MIN + 2 * whole, 1)


def test_a_free_slot_starts_the_first_queued_run_now() -> None:
    """Nothing runs and three slots are free: two queued runs start now."""
    queued = [QueuedRun("q1", "1x1", False, "a"), QueuedRun("q2", "1x1", False, "a")]
    out = estimate([past(minutes=2)], [], queued, 3, NOW)
    assert out == {
        "q1": Estimate(NOW, NOW + 34 * MIN, 1),
        "q2": Estimate(NOW, NOW + 34 * MIN, 1),
    }


def test_an_owner_at_its_running_limit_waits_for_its_own_run() -> None:
    """Limit 1, two slots: A's queued run waits for A's running one; B's, later, starts now."""
    hold = [running("r1", START, NOW, owner="a")]
    queued = [QueuedRun("qa", "1x1", False, "a"), QueuedRun("qb", "1x1", False, "b")]
    out = estimate([past()], hold, queued, 2, NOW, max_running_per_owner=1)
    assert out["qb"].start_at == NOW
    assert out["qa"].start_at == NOW + 17 * MIN


def test_no_slot_at_all_gives_no_start() -> None:
    """With no slot (every engine removed) a queued run has no start to foresee."""
    out = estimate([past()], [], [QueuedRun("q1", "1x1", False, "a")], 0, NOW)
    assert out == {}


def test_each_slot_size_rests_on_its_own_runs() -> None:
    """Small dies take their own time; a size never run yet takes every size's median."""
    history = [past("1x1", 2), past("1x1", 2), past("0p5x0p5", 1), past("1x1", 4)]
    queued = [QueuedRun("small", "0p5x0p5", False, "a"), QueuedRun("new", "1x0p5", False, "b")]
    out = estimate(history, [], queued, 2, NOW)
    assert out["small"] == Estimate(NOW, NOW + 17 * MIN, 1)
    assert out["new"] == Estimate(NOW, NOW + 34 * MIN, 4)  # the median of 1, 2, 2, 4 is 2


def test_a_chip_on_board_run_has_the_pad_step() -> None:
    """A chip-on-board run goes through the pad check: one phase more."""
    history = [past(cob=True, KLayout_CheckPadMask=5), past()]
    out = estimate(history, [], [QueuedRun("q", "1x1", True, "a")], 1, NOW)
    assert out["q"].end_at == NOW + (17 + 5) * MIN


def test_a_step_no_past_run_finished_counts_nothing() -> None:
    """A past run that failed at step 3 tells only of the phases before it."""
    early = PastRun("1x1", False, {p: 120.0 for p in PHASES[:3]})
    m = Medians([early, past()])
    assert m.phase("1x1", PHASES[1]) == 90.0  # the median of 120 and 60
    assert m.phase("1x1", PHASES[5]) == 60.0  # only the run that finished it
    assert Medians([early]).whole("1x1", False) == 360.0


# The history as the read model keeps it, from the log ---------------------------------------

T = datetime(2026, 3, 4, 8, 0, tzinfo=UTC)


def a_run(run_id: str, steps: int, **queued: Any) -> list[Event]:
    """A run queued and started at `T`, beginning step `n` at `T + 2n` minutes, `steps` steps."""
    events: list[Event] = [run_queued(run_id, at=T, **queued), run_started(run_id, at=T)]
    names = flow_phases(bool(queued.get("cob")))[1:]
    events += [
        RunProgressed(run_id, n, 16, names[n - 1], T + 2 * n * MIN) for n in range(1, steps + 1)
    ]
    return events


def end_at(steps: int, after: float) -> datetime:
    """`after` minutes after step `steps` of `a_run` began."""
    return T + (2 * steps + after) * MIN


def test_a_passed_run_gives_every_phase() -> None:
    """From the container's start to step 1, each step to the next, the last to the exit."""
    state = given(*a_run("r1", 16), run_exited("r1", finished_at=end_at(16, 3)))
    (kept,) = state.step_times.history()
    assert kept.seconds == {START: 120.0, **{p: 120.0 for p in PHASES[1:-1]}, PHASES[-1]: 180.0}


def test_a_design_failure_counts_the_steps_it_finished() -> None:
    """Failed on its design in step 14: steps 1 to 13 and the start count, 14 does not."""
    failed = run_exited("r1", "failed", classification="design", finished_at=end_at(14, 1))
    (kept,) = given(*a_run("r1", 14), failed).step_times.history()
    assert set(kept.seconds) == set(PHASES[:14])


def test_system_failures_cancels_and_retries_count_nothing() -> None:
    """A system failure, a cancelled run and a retried attempt leave no history."""
    system = run_exited("r1", "failed", classification="system", finished_at=end_at(5, 1))
    cancelled = RunCancelled("r2", T + 20 * MIN, 137)
    retried = RunRetried("r3", 2, "local", "engine gone", 1, T, T + 10 * MIN, 0, T + 10 * MIN)
    state = given(*a_run("r1", 5), system, *a_run("r2", 5), cancelled, *a_run("r3", 5), retried)
    assert state.step_times.history() == []
    assert state.step_times.phase_of("r3") is None


def test_a_missed_step_gives_no_figure_for_the_phase_before_it() -> None:
    """Steps 1, 2, then 4: step 2's figure would hold step 3's time too; it is left out."""
    events = a_run("r1", 4)
    del events[4]  # step 3's event
    (kept,) = given(
        *events, run_exited("r1", "failed", classification="design")
    ).step_times.history()
    assert set(kept.seconds) == {START, PHASES[1]}


def test_a_running_run_s_phase_and_its_start() -> None:
    """The read model says which phase a running run is in and since when."""
    state = given(*a_run("r1", 3))
    assert state.step_times.phase_of("r1") == (PHASES[3], T + 6 * MIN)
    assert given(*a_run("r2", 0)).step_times.phase_of("r2") == (START, T)


def test_the_history_keeps_the_last_runs_of_each_size() -> None:
    """Only the last `KEEP` runs of a slot size are kept; another size keeps its own."""
    events: list[Event] = []
    for i in range(KEEP + 5):
        events += [*a_run(f"r{i}", 16), run_exited(f"r{i}", finished_at=end_at(16, i))]
    events += [*a_run("s", 16, slot="0p5x0p5"), run_exited("s", finished_at=end_at(16, 1))]
    history = given(*events).step_times.history()
    assert len(history) == KEEP + 1
    last = [r.seconds[PHASES[-1]] for r in history if r.slot == "1x1"]
    assert last == [60.0 * i for i in range(5, KEEP + 5)]


def test_a_short_simulated_day_is_estimated_within_half_the_run_s_time() -> None:
    """The bench's day, shortened: every run queued after the first end has an estimate, and
    the median error of its end stays well within the time it was waiting and running."""
    rng = random.Random(7)
    runs = arrivals(rng, hours=3, per_hour=8)
    Day(rng, slots=3).run(runs)
    first_end = min(r.ended for r in runs if r.ended is not None)
    assert all(r.estimated_end is not None for r in runs if r.queued > first_end)
    minutes, share, n = errors([r for r in runs if r.estimated_end is not None])
    assert n >= 15
    assert share < 50, (minutes, share, n)
