"""What the retention pass removes (`domain/retention.py`), on run records built by folding
events: each kind after its days, only of final runs, the oldest first past the budget, and a
run whose files another run reuses kept until that run is itself pruned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest

from precheck.config import ConfigError, RetentionConfig, parse_config
from precheck.domain.retention import kind_of, kinds_held, plan, referred
from precheck.events.store import RecordedEvent
from precheck.events.types import (
    Event,
    Metadata,
    OutputFile,
    RunExited,
    RunFilesPruned,
    RunOutputsStored,
    RunQueued,
    RunStarted,
)
from precheck.projections.runs import RunRecord, Runs

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
FILES = (
    OutputFile("run/14-klayout-drc/reports/drc.klayout.lyrdb", 1000, "a" * 64),
    OutputFile("run/final/render/chip_top.png", 200, "b" * 64),
    OutputFile("run/final/metrics.json", 30, "c" * 64),
    OutputFile("run/14-klayout-drc/state_out.json", 40, "d" * 64),
)
OUTPUT = OutputFile("output/chip_top.gds", 5000, "e" * 64)


class Log:
    """Events folded into a runs projection, as the server does, positions counted here."""

    def __init__(self) -> None:
        self.runs = Runs()
        self.position = 0
        self.versions: dict[str, int] = {}

    def add(self, event: Event) -> None:
        self.position += 1
        run_id = str(event.run_id)  # type: ignore[union-attr]
        self.versions[run_id] = self.versions.get(run_id, 0) + 1
        self.runs.apply(
            RecordedEvent(
                self.position,
                f"run-{run_id}",
                self.versions[run_id],
                event,
                Metadata("test"),
                T0,
                "",
                "",
            )
        )

    def final_run(self, run_id: str, ended: datetime) -> RunRecord:
        """A run queued, started, exited and stored at `ended`."""
        self.queued(run_id, ended)
        self.add(RunStarted(run_id, "c-" + run_id, "img", "", ended))
        self.add(RunExited(run_id, "completed", 0, "", None, {}, False, ended, ended))
        self.add(RunOutputsStored(run_id, OUTPUT, FILES, {}, None, ended))
        return self.get(run_id)

    def queued(self, run_id: str, at: datetime) -> RunRecord:
        fields = ("u1", "chip_top", "", "1x1", False, "a.gds", "a.gds", "gds", 9, "f" * 64, at)
        self.add(RunQueued(run_id, *fields))
        return self.get(run_id)

    def get(self, run_id: str) -> RunRecord:
        run = self.runs.get(run_id)
        assert run is not None
        return run


def test_each_file_has_its_kind() -> None:
    kinds = [kind_of(f.path) for f in (*FILES, OUTPUT)]
    assert kinds == ["reports", "render", "reports", "run_folder", "outputs"]
    assert kind_of("findings.json") == "reports"


def test_each_kind_goes_after_its_days_and_only_from_final_runs() -> None:
    """Reports after 10 days, the run folder after 3, lines after 5; the output kept (0 days);
    a run still queued or one that only exited (not final) keeps everything."""
    log = Log()
    log.final_run("old", T0)
    log.queued("waiting", T0 - timedelta(days=30))
    log.queued("finishing", T0 - timedelta(days=30))
    log.add(RunStarted("finishing", "c", "img", "", T0 - timedelta(days=30)))
    log.add(RunExited("finishing", "completed", 0, "", None, {}, False, T0, T0))
    policy = RetentionConfig(reports_days=10, run_folder_days=3, log_days=5)
    lines = {"old": 700, "finishing": 900}

    assert plan(log.runs.by_id.values(), T0 + timedelta(days=2), policy, lines) == []
    [r] = plan(log.runs.by_id.values(), T0 + timedelta(days=6), policy, lines)
    assert (r.run_id, r.kinds, r.reason, r.bytes) == ("old", ("run_folder", "logs"), "age", 740)
    [r] = plan(log.runs.by_id.values(), T0 + timedelta(days=11), policy, lines)
    assert r.kinds == ("reports", "run_folder", "logs")

    # Once recorded, a kind is not due again; what is left goes when its days pass.
    log.add(RunFilesPruned("old", ("run_folder", "logs"), 1, 740, "age", T0 + timedelta(days=6)))
    [r] = plan(log.runs.by_id.values(), T0 + timedelta(days=11), policy, lines)
    assert r.kinds == ("reports",) and r.bytes == 1030
    assert set(kinds_held(log.get("old"))) == {"outputs", "reports", "render"}


def test_past_the_budget_the_oldest_final_runs_go_first_whole() -> None:
    """Three final runs of 6270 bytes each with their lines: a budget of 13000 bytes keeps
    the two newest; a run's files already gone by age count no more."""
    log = Log()
    for n, run_id in enumerate(("a", "b", "c")):
        log.final_run(run_id, T0 + timedelta(days=n))
    lines = {"a": 0, "b": 0, "c": 0}
    policy = RetentionConfig(max_storage_gb=13000 / (1 << 30))
    [r] = plan(log.runs.by_id.values(), T0 + timedelta(days=3), policy, lines)
    assert (r.run_id, r.reason, r.bytes) == ("a", "budget", 6270)
    assert set(r.kinds) == {"outputs", "reports", "render", "run_folder", "logs"}

    tight = RetentionConfig(max_storage_gb=6300 / (1 << 30), outputs_days=2.5)
    removals = plan(log.runs.by_id.values(), T0 + timedelta(days=3), tight, lines)
    # By age the oldest output goes (5000); then what is left of that run, then the next run.
    assert [(r.run_id, r.reason) for r in removals] == [
        ("a", "age"),
        ("a", "budget"),
        ("b", "budget"),
    ]
    assert removals[1].bytes == 1270


def test_a_run_whose_files_another_reuses_is_kept_until_that_run_is_pruned() -> None:
    """`b` reuses `a`'s files (the result cache sets `reused_from`): `a` is kept though due;
    once `b`'s own files are pruned, `a` goes at the next pass."""
    log = Log()
    log.final_run("a", T0)
    b = log.final_run("b", T0 + timedelta(hours=1))
    log.runs.by_id["b"] = attrs.evolve(b, reused_from="a")  # what `run.reused` will fold in
    policy = RetentionConfig(outputs_days=1)
    now = T0 + timedelta(days=2)
    assert referred(log.runs.by_id.values()) == {"a"}
    assert [r.run_id for r in plan(log.runs.by_id.values(), now, policy, {})] == ["b"]
    log.add(RunFilesPruned("b", ("outputs",), 1, 5000, "age", now))
    assert log.get("b").reused_from == "a"  # the pruning keeps the rest of the record
    assert referred(log.runs.by_id.values()) == set()
    assert [r.run_id for r in plan(log.runs.by_id.values(), now, policy, {})] == ["a"]


def test_retention_is_off_unless_configured() -> None:
    log = Log()
    log.final_run("a", T0 - timedelta(days=10000))
    assert not RetentionConfig().enabled
    assert plan(log.runs.by_id.values(), T0, RetentionConfig(), {"a": 10**9}) == []


def test_the_retention_table_is_checked_at_load() -> None:
    """Days and the budget are numbers of at least 0; the interval 1 minute to a week."""
    ok = parse_config({"retention": {"log_days": 0.5, "max_storage_gb": 2}}, "t")
    assert ok.retention.days["logs"] == 0.5 and ok.retention.enabled
    for key, value in (("log_days", -1), ("run_folder_days", "x"), ("interval_minutes", 0)):
        with pytest.raises(ConfigError, match=f"retention.{key}"):
            parse_config({"retention": {key: value}}, "t")
