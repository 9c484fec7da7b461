"""Estimate benchmark: how far off is a run's estimated end, said when it is queued?

A simulated day on N slots: runs arrive at random (a Poisson process) from a few owners, with
a slot size and chip-on-board at random; each phase of a run takes a time drawn from that
phase's own distribution (log-normal around a mean, scaled by the slot size and by the layout's
own heaviness, shared by its phases); a fifth of the runs fail on their design in a checker
step and stop there. The queue starts runs in the fair order (`fair_order`, as the server's).

When each run is queued, `precheck.domain.estimate.estimate` is asked, as the server asks it:
the history of the last runs of each slot size that passed or failed on their design (whole
phases only, as the read model keeps them), the runs running with the phase each is in, the
queue ahead in fair order, the slots. Its `EndAt` is compared with the run's simulated end.

Printed: the number of runs estimated (those queued before any run ended have no basis), and
the median absolute error of `EndAt` in minutes and in % of the run's time from queuing to its
end; the same for the runs that passed alone (a design failure ends early: unforeseeable).

Run: `python -m bench.estimate_bench` (`--slots`, `--hours`, `--per-hour`, `--seed`).
"""

from __future__ import annotations

import argparse
import heapq
import random
from bisect import bisect_right
from collections import deque
from datetime import UTC, datetime, timedelta
from statistics import median

import attrs

from precheck.domain.estimate import PastRun, QueuedRun, RunningRun, estimate, flow_phases
from precheck.projections.queue import fair_order
from precheck.projections.step_times import KEEP

DAY = datetime(2026, 3, 4, 0, 0, tzinfo=UTC)
# Mean minutes of each phase for a 1x1 die: the DRC steps dominate.
MEAN_MINUTES = {
    "(start)": 0.3,
    "KLayout.ReadLayout": 1.0,
    "KLayout.CheckTopLevel": 0.2,
    "KLayout.CheckSize": 0.2,
    "KLayout.CheckPadMask": 0.6,
    "KLayout.GenerateID": 0.3,
    "KLayout.Render": 2.0,
    "KLayout.Density": 3.0,
    "Checker.KLayoutDensity": 0.1,
    "KLayout.ZeroAreaPolygons": 1.0,
    "Checker.KLayoutZeroAreaPolygons": 0.1,
    "KLayout.Antenna": 4.0,
    "Checker.KLayoutAntenna": 0.1,
    "Magic.DRC": 8.0,
    "Checker.MagicDRC": 0.1,
    "KLayout.DRC": 6.0,
    "Checker.KLayoutDRC": 0.1,
    "KLayout.WriteLayout": 1.0,
}
SLOT_SCALE = {"1x1": 1.0, "0p5x1": 0.6, "1x0p5": 0.6, "0p5x0p5": 0.35}
SLOT_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
OWNERS = ("ann", "ben", "cy", "dee")
COB_SHARE = 0.15
DESIGN_FAILURES = 0.2
HEAVINESS_SIGMA = 0.3  # how much one layout differs from another (all its phases)
STEP_SIGMA = 0.2  # how much one phase differs from run to run besides


@attrs.define
class SimRun:
    """One simulated run: what it is, when it was queued, and once started its phases."""

    id: str
    owner: str
    slot: str
    cob: bool
    queued: float  # minutes since the day began
    phases: list[tuple[str, float]] = attrs.field(factory=list)  # (name, minutes)
    passed: bool = True
    started: float | None = None
    began: list[float] = attrs.field(factory=list)  # each phase's start, in minutes
    ended: float | None = None
    estimated_end: float | None = None

    def at(self, minutes: float) -> datetime:
        return DAY + timedelta(minutes=minutes)


def draw_phases(rng: random.Random, run: SimRun) -> None:
    """The run's phases and their times; a design failure stops after a checker step."""
    heavy = rng.lognormvariate(0, HEAVINESS_SIGMA)
    names = flow_phases(run.cob)
    if rng.random() < DESIGN_FAILURES:
        checkers = [i for i, n in enumerate(names) if n.startswith("Checker.")]
        names = names[: rng.choice(checkers) + 1]
        run.passed = False
    scale = SLOT_SCALE[run.slot] * heavy
    run.phases = [(n, MEAN_MINUTES[n] * scale * rng.lognormvariate(0, STEP_SIGMA)) for n in names]


def past_run(run: SimRun) -> PastRun:
    """What the read model keeps of an ended run: whole phases (not a failed run's last)."""
    kept = run.phases if run.passed else run.phases[:-1]
    return PastRun(run.slot, run.cob, {n: m * 60 for n, m in kept})


def running_run(run: SimRun, now: float) -> RunningRun:
    """A started run as the estimate sees it: the phase it is in, and since when."""
    assert run.started is not None
    i = max(0, bisect_right(run.began, now) - 1)
    return RunningRun(
        run.id, run.slot, run.cob, run.owner, run.at(run.started), run.phases[i][0],
        run.at(run.began[i]),
    )  # fmt: skip


class Day:
    """The simulation: arrivals and ends in time order, the fair queue, N slots."""

    def __init__(self, rng: random.Random, slots: int) -> None:
        self.rng, self.slots = rng, slots
        self.queue: list[SimRun] = []  # in arrival order
        self.running: dict[str, SimRun] = {}
        self.history: dict[str, deque[PastRun]] = {}
        self.served: dict[str, int] = {}
        self.starts = 0
        self.events: list[tuple[float, int, str, SimRun]] = []
        self.n = 0

    def push(self, t: float, kind: str, run: SimRun) -> None:
        heapq.heappush(self.events, (t, self.n, kind, run))
        self.n += 1

    def fair(self) -> list[SimRun]:
        by_id = {r.id: r for r in self.queue}
        order = fair_order(
            [r.id for r in self.queue], lambda i: by_id[i].owner, lambda o: self.served.get(o, 0)
        )
        return [by_id[i] for i in order]

    def start_what_fits(self, now: float) -> None:
        while self.queue and len(self.running) < self.slots:
            run = self.fair()[0]
            self.queue.remove(run)
            self.starts += 1
            self.served[run.owner] = self.starts
            draw_phases(self.rng, run)
            run.started, t = now, now
            for _, minutes in run.phases:
                run.began.append(t)
                t += minutes
            self.running[run.id] = run
            self.push(t, "end", run)

    def estimate_end(self, run: SimRun, now: float) -> None:
        history = [p for runs in self.history.values() for p in runs]
        running = [running_run(r, now) for r in self.running.values()]
        queued = [QueuedRun(r.id, r.slot, r.cob, r.owner) for r in self.fair()]
        found = estimate(history, running, queued, self.slots, run.at(now)).get(run.id)
        if found is not None:
            run.estimated_end = (found.end_at - DAY).total_seconds() / 60

    def run(self, arrivals: list[SimRun]) -> None:
        for r in arrivals:
            self.push(r.queued, "arrive", r)
        while self.events:
            now, _, kind, run = heapq.heappop(self.events)
            if kind == "arrive":
                self.queue.append(run)
                self.estimate_end(run, now)
            else:
                run.ended = now
                del self.running[run.id]
                kept = self.history.setdefault(run.slot, deque(maxlen=KEEP))
                kept.append(past_run(run))
            self.start_what_fits(now)


def arrivals(rng: random.Random, hours: float, per_hour: float) -> list[SimRun]:
    """Runs arriving as a Poisson process over the day's working `hours`."""
    out: list[SimRun] = []
    t = 0.0
    while True:
        t += rng.expovariate(per_hour / 60)
        if t > hours * 60:
            return out
        slot = rng.choices(list(SLOT_SCALE), SLOT_WEIGHTS)[0]
        run = SimRun(f"r{len(out)}", rng.choice(OWNERS), slot, rng.random() < COB_SHARE, t)
        out.append(run)


def errors(runs: list[SimRun]) -> tuple[float, float, int]:
    """Median absolute error of the estimated end: minutes, % of queuing to end; how many."""
    minutes, shares = [], []
    for r in runs:
        assert r.ended is not None and r.estimated_end is not None
        off = abs(r.estimated_end - r.ended)
        minutes.append(off)
        shares.append(100 * off / max(r.ended - r.queued, 1e-9))
    if not minutes:
        return float("nan"), float("nan"), 0
    return median(minutes), median(shares), len(minutes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--hours", type=float, default=10.0, help="hours runs arrive in")
    parser.add_argument("--per-hour", type=float, default=8.0, help="mean arrivals per hour")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    runs = arrivals(rng, args.hours, args.per_hour)
    Day(rng, args.slots).run(runs)
    estimated = [r for r in runs if r.estimated_end is not None]
    waits = [r.started - r.queued for r in runs if r.started is not None]
    spans = [r.ended - r.queued for r in estimated if r.ended is not None]
    print(
        f"simulated day: {len(runs)} runs over {args.hours:g} h on {args.slots} slots "
        f"(seed {args.seed}); median wait {median(waits):.1f} min, "
        f"median queuing-to-end {median(spans):.1f} min"
    )
    for label, chosen in (
        ("all runs", estimated),
        ("passed runs", [r for r in estimated if r.passed]),
        ("design failures", [r for r in estimated if not r.passed]),
    ):
        mins, share, n = errors(chosen)
        print(
            f"EndAt at queue time, {label}: median absolute error {mins:.1f} min "
            f"({share:.1f} % of the run's time), runs {n}"
        )


if __name__ == "__main__":
    main()
