"""The simulator held against real runs of the precheck flow: steered to each case, it prints
the same kinds of lines and the same logger lines, leaves the same folder tree, and writes the
same reports in the same formats, with the same rules firing at the coordinates the steering
text asks for. The real runs' shapes are kept in tests/fixtures/simulator_shapes.json, made
from the recorded runs (`../shared/reference/real-runs/`, when beside the checkout) by
`python -m tests.test_simulator_shapes`."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from precheck.runner.findings import read_report
from tests.docker_fixtures import NoDocker
from tests.layouts import gds, oasis
from tests.test_simulator import Run, run_precheck

pytestmark = pytest.mark.docker

REAL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "real-runs"
SNAPSHOT = Path(__file__).parent / "fixtures" / "simulator_shapes.json"  # the real runs' shapes
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
    "oasis": ((), None),  # OASIS in and out (`--output /output/chip_top.oas`), as production
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
ARGV = re.compile(r"\[.*\]\) failed$")  # a failed subprocess's command line: the real one's paths
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


def reports(root: Path) -> dict[str, Path]:
    """The reports under a run folder by `NN-step/reports/name`."""
    return {str(p.relative_to(root)): p for p in sorted(root.glob("[0-9][0-9]-*/reports/*"))}


def findings(path: Path) -> dict[str, tuple[int, tuple[float, float] | None]]:
    """Per rule that fired: its count and its first marker's first point."""
    got = read_report(path, path.name, None)
    assert got is not None and not got.cut_short, path
    return {r.rule: (r.count, r.markers[0].points[0] if r.markers else None) for r in got.rules}


def lyrdb_outline(path: Path, layers: bool) -> list[Any]:
    """A report database's outline: its top elements, its categories (each described; left out
    where they are the layout's layers), the item categories as written (quoted) and the kinds
    of the items' values."""
    root = ET.parse(path).getroot()
    assert root.tag == "report-database"
    names = [c.findtext("name") or "" for c in root.iterfind("categories/category")]
    for c in root.iterfind("categories/category"):
        assert c.findtext("description"), (path, c.findtext("name"))
    quoted = {i.findtext("category") or "" for i in root.iterfind("items/item")}
    kinds = {(v.text or "").split(":")[0] for v in root.iterfind("items/item/values/value")}
    return [[c.tag for c in root], None if layers else names, sorted(quoted), sorted(kinds)]


def report_shape(name: str, path: Path) -> Any:
    """What a report says, in a form to compare (and to keep as JSON)."""
    layers = "zeroareapolygons" in name  # a category per layer of the layout: ours differ
    if path.suffix == ".json":
        counts = json.loads(path.read_text(encoding="utf-8"))
        return {k: v for k, v in counts.items() if v or k == "total" or not layers}
    found = {rule: [n, list(p) if p else None] for rule, (n, p) in findings(path).items()}
    if path.suffix == ".lyrdb":
        return {"findings": found, "outline": lyrdb_outline(path, layers)}
    lines = path.read_text(encoding="utf-8").splitlines()
    return {"findings": found, "first": lines[0], "last": lines[-3:]}


def shapes(lines: list[str], state: str, tree: set[str], root: Path) -> dict[str, Any]:
    """A run's shapes: its ending, the kinds of its lines and their order (tool output taken as
    one), its logger lines, its last line, its folder tree, its reports, metrics and logs.
    `root` holds the run folder's reports, final/ and logs."""
    kinds = [kind(line) for line in lines]
    final = root / "final"
    return {
        "state": state,
        "kinds": sorted(set(kinds)),
        "outline": [k for i, k in enumerate(kinds) if k != "tool" or kinds[i - 1] != "tool"],
        "logger": logger_lines(lines),
        "last": ARGV.sub("[<argv>]) failed", lines[-1]),
        "tree": sorted(tree),
        "reports": {name: report_shape(name, path) for name, path in reports(root).items()},
        "metrics": [
            (final / "metrics.csv").read_text(encoding="utf-8"),
            json.loads((final / "metrics.json").read_text(encoding="utf-8")),
        ]
        if final.is_dir()
        else None,
        "logs": {
            name: TAG.sub("<tag>", (root / name).read_text(encoding="utf-8"))
            for name in ("warning.log", "error.log")
        },
    }


def real_shapes(case: str) -> dict[str, Any]:
    """The shapes of a recorded real run."""
    folder = REAL / case
    rows = (folder / "tree.txt").read_text(encoding="utf-8").splitlines()
    lines = (folder / "log.txt").read_text(encoding="utf-8").splitlines()
    state = (folder / "state.txt").read_text(encoding="utf-8").strip()
    return shapes(lines, state, {row.split("\t", 1)[1] for row in rows}, folder / "files")


def sim_shapes(run: Run) -> dict[str, Any]:
    """The shapes of a simulator run."""
    tree = {
        f"runs/<tag>/{p.relative_to(run.run_dir)}" for p in run.run_dir.rglob("*") if p.is_file()
    }
    tree |= {f"output/{p.relative_to(run.output_dir)}" for p in run.output_dir.rglob("*")}
    state = f"ExitCode={run.exit_code} OOMKilled={str(run.oom_killed).lower()}"
    return shapes(run.lines, state, tree, run.run_dir)


@pytest.fixture(scope="module")
def runs(simulator_image: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The simulator run once per case."""
    if isinstance(simulator_image, NoDocker):
        pytest.fail(simulator_image)
    done = {}
    for case, (steering, memory) in CASES.items():
        fmt = "oas" if case == "oasis" else "gds"
        layout = (
            oasis("chip_top", *steering) if fmt == "oas" else gds("chip_top", *steering, die=DIE)
        )
        done[case] = run_precheck(
            simulator_image,
            tmp_path_factory.mktemp(case),
            layout,
            f"chip_top.{fmt}",
            extra=("--slot", "0p5x0p5", "--id", "ABCD1234"),
            memory=memory,
            output_format=fmt,
        )
    return done


@pytest.fixture(scope="module")
def sim(runs: dict[str, Run]) -> dict[str, dict[str, Any]]:
    return {case: sim_shapes(run) for case, run in runs.items()}


def test_the_snapshot_is_the_real_runs() -> None:
    """The shapes kept in the fixture are those of the recorded real runs (where they are at
    hand, as beside the repository on CI: `python -m tests.test_simulator_shapes` writes the
    fixture anew); without them, at least every case and aspect is in the fixture."""
    kept = json.loads(SNAPSHOT.read_text())
    if REAL.is_dir():
        assert {case: real_shapes(case) for case in CASES} == kept
    else:
        assert sorted(kept) == sorted(CASES)
        assert all(set(ASPECTS) <= set(shape) for shape in kept.values()), kept.keys()


ASPECTS = ["state", "kinds", "outline", "logger", "last", "tree", "reports", "metrics", "logs"]


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("case", CASES)
def test_the_simulator_has_the_real_shape(
    sim: dict[str, dict[str, Any]], case: str, aspect: str
) -> None:
    """Steered to a real case, the simulator ends as it did (exit code, OOMKilled), prints the
    same kinds of lines in the same order and the same logger lines (level, words, source),
    leaves the same files, writes the same reports (rules, counts, first markers, database
    outline, .json counts), metrics, warning and error logs."""
    real = json.loads(SNAPSHOT.read_text())[case][aspect]
    assert json.loads(json.dumps(sim[case][aspect])) == real


@pytest.mark.parametrize("case", CASES)
def test_each_json_is_what_its_database_holds(runs: dict[str, Run], case: str) -> None:
    """Beside each .lyrdb, the .json counts its markers per rule (and `total`), as read."""
    for name, path in reports(runs[case].run_dir).items():
        if path.suffix != ".json":
            continue
        declared = json.loads(path.read_text())
        counts = {rule: n for rule, (n, _) in findings(path.with_suffix(".lyrdb")).items()}
        assert counts == {k: v for k, v in declared.items() if k != "total" and v}, name
        assert sum(counts.values()) == declared["total"], name


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


if __name__ == "__main__":
    SNAPSHOT.write_text(
        json.dumps({case: real_shapes(case) for case in CASES}, indent=1, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    print(SNAPSHOT)
