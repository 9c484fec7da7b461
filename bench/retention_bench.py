"""Retention planning benchmark: what one pass costs before it removes anything.

With a storage budget the pass runs at every run's end: it reads every run's output-line bytes
from SQLite (one grouped query), takes a snapshot of the runs projection on the event loop and
plans through `domain/retention.py` in a thread. Here N final runs with 20 kept files each and
their lines in a real output-line store (a temp folder) are planned with an age rule and a budget
that takes half of them.

Prints, per size: what the pass costs the event loop (the snapshot of the records; target
under 50 ms), the grouped query (read only with a budget, in SQLite's own thread), and the
plan's time in its thread for a steady pass (nothing due) and a first pass over a backlog
(every run due, half of them past the budget), with how many removals it chose.

Run: `python -m bench.retention_bench` (10,000 and 100,000 runs); `--quick` for 10,000 only.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta

import attrs

from bench.harness import temp_folder, verdict
from precheck.config import RetentionConfig
from precheck.domain.retention import GB, kind_of, plan
from precheck.domain.status import RunStatus
from precheck.events.types import OutputFile
from precheck.projections.runs import InputFile, RunRecord
from precheck.storage.output_lines import LineBlock, OutputLineStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REPORTS = [OutputFile(f"run/{n:02d}-step/reports/r{n}.lyrdb", 100_000, "a" * 64) for n in range(19)]
FILES = (*REPORTS, OutputFile("run/final/render/chip_top.png", 50_000, "b" * 64))


def runs(n: int) -> list[RunRecord]:
    """`n` final runs ending a minute apart, each with 20 kept files and an output layout."""
    base = RunRecord(
        "r",
        "u",
        "chip_top",
        "FFFFFFFF",
        "1x1",
        False,
        InputFile("a.gds", "a.gds", "gds", 1, "c" * 64),
        T0,
        status=RunStatus.COMPLETED,
        settled=True,
        started_at=T0,
        files=FILES,
        output=OutputFile("output/chip_top.gds", 5_000_000, "d" * 64),
    )
    return [
        attrs.evolve(base, id=f"run{i:06d}", finished_at=T0 + timedelta(minutes=i))
        for i in range(n)
    ]


async def lines_query(n: int) -> tuple[float, dict[str, int]]:
    """Seconds of the grouped query over `n` runs' lines (a budget's pass reads it), and it."""
    with temp_folder("retention-bench") as folder:
        store = await OutputLineStore.open(folder / "precheck.db")
        try:
            line = "2026-01-01T00:00:00.000000000Z " + "x" * 80
            block = LineBlock(1, "stdout", "\n".join([line] * 10), 10)
            for first in range(0, n, 1000):  # a thousand runs a commit (the group commit)
                await asyncio.gather(
                    *(
                        store.append(f"run{i:06d}", [block], published=True)
                        for i in range(first, min(n, first + 1000))
                    )
                )
            started = time.perf_counter()
            sizes = await store.bytes_by_run()
            return time.perf_counter() - started, sizes
        finally:
            await store.close()


def timed_plan(
    everyone: list[RunRecord], days: float, policy: RetentionConfig, sizes: dict[str, int]
) -> tuple[float, int]:
    kind_of.cache_clear()
    started = time.perf_counter()
    removals = plan(everyone, T0 + timedelta(days=days), policy, sizes)
    return time.perf_counter() - started, len(removals)


async def main(sizes: list[int]) -> None:
    per_run = sum(f.size for f in FILES) + 5_000_000
    for n in sizes:
        queried, lines = await lines_query(n)
        by_id = {r.id: r for r in runs(n)}  # as the runs projection holds them
        copies = []
        for _ in range(5):  # the best of five: a collection of the garbage collector aside
            started = time.perf_counter()
            snapshot = list(by_id.values())  # what `Retention.due` takes on the loop
            copies.append(time.perf_counter() - started)
        copied = min(copies)
        # A steady pass: under the budget, nothing old enough. A first pass: every run past
        # its run folder's days, and half of them past the budget.
        steady, _ = timed_plan(
            snapshot, 1, RetentionConfig(run_folder_days=30, max_storage_gb=n * per_run / GB), lines
        )
        backlog, chosen = timed_plan(
            snapshot,
            60,
            RetentionConfig(run_folder_days=30, max_storage_gb=n * per_run / 2 / GB),
            lines,
        )
        loop_ms = copied * 1000
        print(
            f"{n:>7} runs: on the loop, the snapshot {loop_ms:.1f} ms (target < 50 ms)"
            f" {verdict(loop_ms < 50)}; in SQLite's thread, the lines query"
            f" {queried * 1000:.1f} ms; in a thread, a steady plan {steady * 1000:.1f} ms and"
            f" a first plan over the backlog {backlog * 1000:.1f} ms ({chosen} removals)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 runs only")
    args = parser.parse_args()
    asyncio.run(main([10_000] if args.quick else [10_000, 100_000]))
