"""Retention: which files of which final runs are due to go, by age or by a storage budget.

Pure: given the runs, the time, the policy and how big each run's output lines are, it says
what to remove. The files of a run are sorted into kinds, each kept for its own number of days:
`outputs` (the output layout), `reports` (the check reports and the findings read from them),
`render` (the PNG), `run_folder` (the rest of the run folder, what only the debug tarball
holds) and `logs` (the captured output lines). The event log is never pruned.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import attrs

from precheck.config import RetentionConfig
from precheck.domain.flow import report_path
from precheck.domain.status import ENDED
from precheck.events.codec import iso
from precheck.projections.runs import Pruning, RunRecord

KINDS = ("outputs", "reports", "render", "run_folder", "logs")
FILE_KINDS = KINDS[:-1]  # those kept as files under `runs/<id>/`
RUN_FOLDER = "run"  # `runs/<id>/run/`: the precheck's own run folder, copied out
OUTPUT_FOLDER = "output"  # `runs/<id>/output/`: the output layout
FINDINGS_FILE = "findings.json"  # what reading the reports found
GB = 1 << 30


@functools.lru_cache(maxsize=8192)  # every run of the flow has the same few hundred paths
def kind_of(path: str) -> str:
    """The kind of a file of a run by its path under `runs/<id>/`."""
    if path.startswith(f"{OUTPUT_FOLDER}/"):
        return "outputs"
    if path == FINDINGS_FILE:
        return "reports"
    if path.startswith(f"{RUN_FOLDER}/"):
        inner = path[len(RUN_FOLDER) + 1 :]
        if inner.startswith("final/render/"):
            return "render"
        if report_path(inner) is not None:
            return "reports"
    return "run_folder"


@attrs.frozen
class Removal:
    """What one pass removes of one run: its `kinds`, why (`age` or `budget`), and the bytes
    the log says they hold (what is measured on removal goes in the event)."""

    run_id: str
    kinds: tuple[str, ...]
    reason: str
    bytes: int


def is_final(run: RunRecord) -> bool:
    """Ended, with everything about it stored: the only runs whose files may go."""
    return run.settled and run.status in ENDED


def pruned_kinds(run: RunRecord) -> set[str]:
    """The kinds of the run's files retention removed."""
    return {k for p in run.pruned for k in p.kinds}


def pruning_of(run: RunRecord, kind: str) -> Pruning | None:
    """The removal that took the run's files of `kind`, or None while they are kept."""
    return next((p for p in run.pruned if kind in p.kinds), None)


def gone_message(run: RunRecord, kind: str, what: str) -> str | None:
    """Why `what` of the run is no longer served (410), or None while it is kept."""
    p = pruning_of(run, kind)
    if p is None:
        return None
    why = "it was kept past retention" if p.reason == "age" else "storage was past its budget"
    return (
        f"precheck {run.id}: {what} was removed on {iso(p.at)} ({kind}: {why});"
        " the run's record, verdict and events are kept"
    )


def kinds_held(run: RunRecord) -> dict[str, int]:
    """Each kind of file the log says the run holds, not yet pruned, with its bytes (logs: 0,
    measured by the caller). A removal a crash cut short is still held here: the log has no
    event for it, so the next pass removes what is left and records it."""
    held: dict[str, int] = {}
    for f in (*run.files, *([run.output] if run.output is not None else [])):
        kind = kind_of(f.path)
        held[kind] = held.get(kind, 0) + f.size
    if run.started_at is not None or run.attempts:
        held["logs"] = 0
    gone = pruned_kinds(run)
    return {k: n for k, n in held.items() if k not in gone}


def referred(runs: Iterable[RunRecord]) -> set[str]:
    """Runs whose files another run reuses (the result cache): kept while a run that is not
    itself pruned (nor deleted: it would not be here) refers to them."""
    return {r.reused_from for r in runs if r.reused_from and not r.pruned}


def ended_at(run: RunRecord) -> datetime:
    return run.finished_at or run.created


def plan(
    runs: Iterable[RunRecord],
    now: datetime,
    policy: RetentionConfig,
    log_bytes: Mapping[str, int],
) -> list[Removal]:
    """What is due: by age, each kind past its days; then, while the kept runs' files and lines
    are past `max_storage_gb`, everything left of the oldest final runs, one run at a time.

    Runs on the event loop at each run's end (with a budget): a run's files are sorted into
    kinds only when it is due or has been pruned before; the others are summed whole."""
    everyone = list(runs)
    keep = referred(everyone)
    final = sorted(
        (r for r in everyone if is_final(r) and r.id not in keep), key=lambda r: ended_at(r)
    )
    days = {k: _days(policy, k) for k, d in policy.days.items() if d > 0}
    soonest = min(days.values(), default=None)
    left: dict[str, dict[str, int]] = {}  # what is left of the runs a removal took from
    removals: list[Removal] = []
    for r in final:
        age = now - ended_at(r)
        if soonest is None or age < soonest:
            break  # the oldest come first: no later run is due either
        held = _with_logs(kinds_held(r), log_bytes.get(r.id, 0))
        due = tuple(k for k in KINDS if k in held and k in days and age >= days[k])
        if due:
            removals.append(Removal(r.id, due, "age", sum(held[k] for k in due)))
            left[r.id] = {k: n for k, n in held.items() if k not in due}
    if policy.max_storage_gb > 0:
        budget = int(policy.max_storage_gb * GB)
        total = sum(_held_bytes(r, left, log_bytes) for r in everyone)
        for r in final:
            if total <= budget:
                break
            rest = left.get(r.id)
            if rest is None:
                rest = _with_logs(kinds_held(r), log_bytes.get(r.id, 0))
            if rest:
                removals.append(Removal(r.id, tuple(rest), "budget", sum(rest.values())))
                total -= sum(rest.values())
    return removals


def _held_bytes(
    run: RunRecord, left: Mapping[str, dict[str, int]], lines: Mapping[str, int]
) -> int:
    """The bytes the run still holds: its files and lines, less what was (or is being) pruned."""
    if run.id in left:
        return sum(left[run.id].values())
    if run.pruned:
        return sum(_with_logs(kinds_held(run), lines.get(run.id, 0)).values())
    size = sum(f.size for f in run.files) + (run.output.size if run.output is not None else 0)
    return size + lines.get(run.id, 0)


def _with_logs(held: dict[str, int], lines: int) -> dict[str, int]:
    return {k: lines if k == "logs" else n for k, n in held.items()}


def _days(policy: RetentionConfig, kind: str) -> timedelta:
    try:
        return timedelta(days=policy.days[kind])
    except OverflowError:  # longer than any date can be: never due
        return timedelta.max
