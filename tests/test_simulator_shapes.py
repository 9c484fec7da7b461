"""The simulator held against real runs of the precheck flow (`../shared/reference/real-runs/`,
when present beside the checkout; tests/fixtures/real_runs/ has excerpts of their logs): steered
to each case, it prints the same kinds of lines and the same logger lines, leaves the same
folder tree, and writes the same reports in the same formats, with the same rules firing at
the coordinates the steering text asks for."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from precheck.runner.findings import read_report
from tests.docker_fixtures import NoDocker
from tests.layouts import gds
from tests.test_simulator import Run, run_precheck

pytestmark = pytest.mark.docker

REAL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "real-runs"
# Each real case and the steering that makes the simulator do what it did; the layouts were
# 0p5x0p5 dies run with `--slot 0p5x0p5 --id ABCD1234` (the cases' argv.txt).
CASES = {
    "pass": ((), None),
    "checksize": (("fail=KLayout.CheckSize",), None),
    "drc": (("drc_at=30,100;30,202", "deferred=3"), None),
    "density": (("density=6",), None),
    "magic": (("magic_at=30.1,103;31.1,200;30.1,100",), None),
    "zeroarea": (("zeroarea_at=30,300;32,400",), None),
    "oom": (("oom=256", "oom_step=KLayout.Render"), "64m"),
}
DIE = (1936_000, 2531_000)  # nm

LOGGER = re.compile(
    r"^\[\d\d:\d\d:\d\d\] (?P<level>INFO|VERBOSE|WARNING|ERROR) +"
    r"(?P<msg>.*?) +(?P<src>\w+\.py:\d+)$"
)
RULE = re.compile(r"^─+ \S.* ─+$")
PROGRESS = re.compile(r"^PrecheckFlow'? - Stage \d+ - .+ [━╸ ]{40} +\d+/\d+ \d+:\d\d:\d\d$")
CHECKER = re.compile(r"^(Check for .+ clear\.|\d+ .+ found\.( - deferred)?)$")
TAG = re.compile(r"RUN_[A-Za-z0-9_-]+")
WIDTH = 200  # the COLUMNS the server sets


def kind(line: str) -> str:
    """What a line of the log is: `None`, a logger line (a checker's apart) with its level, a
    rule line, the progress bar, tool output echoed (padded to the width), a blank line or a
    plain print."""
    if line == "None":
        return "none"
    m = LOGGER.match(line)
    if m and len(line) == WIDTH:
        what = (
            "checker" if m["src"].startswith("checker.py") and CHECKER.match(m["msg"]) else "logger"
        )
        return f"{what} {m['level']}"
    if RULE.match(line) and len(line) == WIDTH:
        return "rule"
    if PROGRESS.match(line):
        return "progress"
    if len(line) == WIDTH:
        return "tool"
    return "blank" if line == "" else "print"


def logger_lines(lines: Iterable[str]) -> list[str]:
    """The logger's lines without their time and padding, the run's tag as `<tag>`."""
    said = []
    for line in lines:
        m = LOGGER.match(line)
        if m:
            msg = TAG.sub("<tag>", m["msg"]).replace("/workspace/", "")
            said.append(f"{m['level']} {msg} {m['src']}")
    return said


def real_tree(case: str) -> set[str]:
    rows = (REAL / case / "tree.txt").read_text(encoding="utf-8").splitlines()
    return {row.split("\t", 1)[1] for row in rows}


def sim_tree(run: Run) -> set[str]:
    found = {
        f"runs/<tag>/{p.relative_to(run.run_dir)}" for p in run.run_dir.rglob("*") if p.is_file()
    }
    return found | {f"output/{p.relative_to(run.output_dir)}" for p in run.output_dir.rglob("*")}


def reports(root: Path) -> dict[str, Path]:
    """The case's reports by `NN-step/reports/name`."""
    return {str(p.relative_to(root)): p for p in sorted(root.glob("[0-9][0-9]-*/reports/*"))}


def findings(path: Path) -> dict[str, tuple[int, tuple[float, float] | None]]:
    """Per rule that fired: its count and its first marker's first point."""
    got = read_report(path, path.name, None)
    assert got is not None and not got.cut_short, path
    return {r.rule: (r.count, r.markers[0].points[0] if r.markers else None) for r in got.rules}


def lyrdb_shape(path: Path) -> tuple[list[str], list[str], set[str], set[str]]:
    """A report database's outline: its top elements, its categories, the item categories as
    written (quoted) and the kinds of the items' values."""
    root = ET.parse(path).getroot()
    assert root.tag == "report-database"
    tops = [child.tag for child in root]
    names = [c.findtext("name") or "" for c in root.iterfind("categories/category")]
    for c in root.iterfind("categories/category"):
        assert c.findtext("description"), (path, c.findtext("name"))
    quoted = {i.findtext("category") or "" for i in root.iterfind("items/item")}
    kinds = {(v.text or "").split(":")[0] for v in root.iterfind("items/item/values/value")}
    return tops, names, quoted, kinds


@pytest.fixture(scope="module")
def runs(simulator_image: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The simulator run once per case."""
    if not REAL.is_dir():
        pytest.skip(f"the real runs are not at {REAL}")
    if isinstance(simulator_image, NoDocker):
        pytest.fail(simulator_image)
    done = {}
    for case, (steering, memory) in CASES.items():
        done[case] = run_precheck(
            simulator_image,
            tmp_path_factory.mktemp(case),
            gds("chip_top", *steering, die=DIE),
            "chip_top.gds",
            extra=("--slot", "0p5x0p5", "--id", "ABCD1234"),
            memory=memory,
        )
    return done


@pytest.mark.parametrize("case", CASES)
def test_the_same_ending(runs: dict[str, Run], case: str) -> None:
    """Exit code and Docker's OOMKilled as the real run's."""
    state = (REAL / case / "state.txt").read_text(encoding="utf-8").split()
    run = runs[case]
    assert [f"ExitCode={run.exit_code}", f"OOMKilled={str(run.oom_killed).lower()}"] == state


@pytest.mark.parametrize("case", CASES)
def test_the_same_kinds_of_lines(runs: dict[str, Run], case: str) -> None:
    """The same set of line kinds, and the lines that are not tool output in the same order of
    kinds (tool output, which the real tools print more of, taken as one)."""
    real = (REAL / case / "log.txt").read_text(encoding="utf-8").splitlines()
    sim = runs[case].lines
    assert {kind(line) for line in sim} == {kind(line) for line in real}

    def outline(lines: list[str]) -> list[str]:
        kinds = [kind(line) for line in lines]
        return [k for i, k in enumerate(kinds) if k != "tool" or kinds[i - 1] != "tool"]

    assert outline(sim) == outline(real)


@pytest.mark.parametrize("case", CASES)
def test_the_same_logger_lines(runs: dict[str, Run], case: str) -> None:
    """Every logger line of the real run, level, words and source, in order."""
    real = (REAL / case / "log.txt").read_text(encoding="utf-8").splitlines()
    assert logger_lines(runs[case].lines) == logger_lines(real)
    assert runs[case].lines[-1] == real[-1] or case == "checksize"  # its reason names real paths


@pytest.mark.parametrize("case", CASES)
def test_the_same_folder_tree(runs: dict[str, Run], case: str) -> None:
    """Every file the real run left under its run folder and /output, and no other."""
    assert sim_tree(runs[case]) == real_tree(case)


@pytest.mark.parametrize("case", CASES)
def test_the_same_reports(runs: dict[str, Run], case: str) -> None:
    """The same reports, outlined alike, the same rules firing as often, at the same first
    points; each .json beside a .lyrdb is the count per rule the real one has, and the
    database reads to those counts."""
    files = REAL / case / "files"
    real, sim = reports(files), reports(runs[case].run_dir)
    assert set(sim) == set(real)
    for name, real_path in real.items():
        sim_path = sim[name]
        if real_path.suffix == ".json":
            sim_counts, real_counts = (
                json.loads(sim_path.read_text()),
                json.loads(real_path.read_text()),
            )
            if "zeroareapolygons" in name:  # a category per layer of the layout: ours differ
                sim_counts = {k: v for k, v in sim_counts.items() if v or k == "total"}
                real_counts = {k: v for k, v in real_counts.items() if v or k == "total"}
            assert sim_counts == real_counts, name
            lyrdb = sim_path.with_suffix(".lyrdb")
            counts = {rule: n for rule, (n, _) in findings(lyrdb).items()}
            declared = json.loads(sim_path.read_text())
            assert counts == {k: v for k, v in declared.items() if k != "total" and v}, name
            assert sum(counts.values()) == declared["total"]
            continue
        assert findings(sim_path) == findings(real_path), name
        if real_path.suffix == ".lyrdb":
            # The zero-area report's categories are the layout's layers: ours differ.
            keep = slice(None, None, 2) if "zeroareapolygons" in name else slice(None)
            assert lyrdb_shape(sim_path)[keep] == lyrdb_shape(real_path)[keep], name
        else:  # Magic's report: the top cell first, its count last
            sim_text, real_text = sim_path.read_text(), real_path.read_text()
            assert sim_text.splitlines()[0] == real_text.splitlines()[0]
            assert sim_text.splitlines()[-3:] == real_text.splitlines()[-3:]


@pytest.mark.parametrize("case", ["pass", "drc", "density", "magic"])
def test_the_same_metrics(runs: dict[str, Run], case: str) -> None:
    """final/metrics.csv and metrics.json hold the real run's metrics, in its order."""
    final = runs[case].run_dir / "final"
    real = REAL / case / "files" / "final"
    if not real.is_dir():
        real = REAL / "pass" / "files" / "final"
    assert (final / "metrics.csv").read_text() == (real / "metrics.csv").read_text()
    assert json.loads((final / "metrics.json").read_text()) == json.loads(
        (real / "metrics.json").read_text()
    )


@pytest.mark.parametrize("case", CASES)
def test_the_same_error_and_warning_logs(runs: dict[str, Run], case: str) -> None:
    """warning.log and error.log say what the real run's say (the run's tag as `<tag>`)."""
    for name in ("warning.log", "error.log"):
        real = (REAL / case / "files" / name).read_text(encoding="utf-8")
        sim = (runs[case].run_dir / name).read_text(encoding="utf-8")
        assert TAG.sub("<tag>", sim) == TAG.sub("<tag>", real), name


def test_counter_of_kinds_is_plausible(runs: dict[str, Run]) -> None:
    """A pass prints one progress bar, one `None`, a rule line per step."""
    got = Counter(kind(line) for line in runs["pass"].lines)
    assert (got["progress"], got["none"], got["rule"]) == (1, 1, 16)


def test_markers_where_the_steering_asks(simulator_image: str, tmp_path: Path) -> None:
    """`<check>_at=x,y;...` puts each check's markers at those points (cycled over the count),
    every database reads to its .json's counts, and the deferred checks fail the run in the
    flow's order."""
    if isinstance(simulator_image, NoDocker):
        pytest.fail(simulator_image)
    steering = (
        "density=2",
        "antenna_at=10,20",
        "magic_at=1,2",
        "deferred=4",
        "drc_at=123.5,456;7,8",
    )
    run = run_precheck(simulator_image, tmp_path, gds("chip_top", *steering), "chip_top.gds")
    assert run.exit_code == 1
    assert run.lines[-4:] == [
        "One or more deferred errors were encountered:",
        "2 KLayout density errors found.",
        "1 KLayout antenna errors found.",
        "4 KLayout DRC errors found.",
    ]
    got = {
        name: findings(path)
        for name, path in reports(run.run_dir).items()
        if path.suffix != ".json"
    }
    assert got["14-klayout-drc/reports/drc.klayout.lyrdb"] == {
        "DE.2": (2, (123.5, 456.0)),
        "DE.4": (2, (7.0, 8.0)),
    }
    assert got["10-klayout-antenna/reports/antenna.klayout.lyrdb"] == {"ANT.1": (1, (10.0, 20.0))}
    assert got["12-magic-drc/reports/drc.magic.lyrdb"] == {"M1.1": (1, (1.0, 2.0))}
    assert got["12-magic-drc/reports/drc.magic.rpt"] == {"M1.1": (1, (1.0, 2.0))}
    assert got["06-klayout-density/reports/density.klayout.lyrdb"] == {
        "M1.4": (1, (0.0, 0.0)),
        "M2.4": (1, (0.0, 0.0)),
    }
    for name, path in reports(run.run_dir).items():
        if path.suffix == ".json":
            declared = json.loads(path.read_text())
            counts = {rule: n for rule, (n, _) in findings(path.with_suffix(".lyrdb")).items()}
            assert counts == {k: v for k, v in declared.items() if k != "total" and v}, name
    metrics = json.loads((run.run_dir / "final" / "metrics.json").read_text())
    assert (metrics["klayout__antenna_error__count"], metrics["magic__drc_error__count"]) == (1, 1)
