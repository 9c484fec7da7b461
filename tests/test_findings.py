"""Reading check reports into findings: on the real runs' reports (`tests/fixtures/real_runs/
reports/`), held against the counts the flow itself wrote beside them (`*.json`), and on
hostile input: a huge database, a cut one, over-long lines, entities."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from precheck.events.types import FindingsCount, OutputFile
from precheck.runner.findings import (
    MAX_KEPT_POINTS,
    MAX_MARKERS,
    Marker,
    parse_marker,
    read_lyrdb,
    read_magic_rpt,
    read_report,
)
from precheck.runner.findings_file import load_findings, reports_to_read, store_findings

REPORTS = Path(__file__).parent / "fixtures" / "real_runs" / "reports"


@pytest.mark.parametrize(
    ("case", "report"),
    [
        ("drc", "14-klayout-drc/drc.klayout.lyrdb"),
        ("density", "06-klayout-density/density.klayout.lyrdb"),
        ("zeroarea", "08-klayout-zeroareapolygons/density.klayout.lyrdb"),
    ],
)
def test_klayout_reports_count_what_the_flow_counted(case: str, report: str) -> None:
    """Per rule the same counts as the flow's own `.json` beside the database (rules that
    did not fire left out)."""
    folder, name = report.split("/")
    file = REPORTS / case / folder / name
    found = read_report(file, report, "KLayout.X")
    assert found is not None and not found.cut_short
    counted = json.loads(file.with_suffix(".json").read_text(encoding="utf-8"))
    total = counted.pop("total")
    assert {r.rule: r.count for r in found.rules} == {k: n for k, n in counted.items() if n}
    assert found.total == total


def test_a_drc_rule_has_its_description_and_markers_in_microns() -> None:
    """DE.2 fired twice: its description from the database and its two edge pairs."""
    file = REPORTS / "drc" / "14-klayout-drc" / "drc.klayout.lyrdb"
    found = read_report(file, "14-klayout-drc/drc.klayout.lyrdb", "KLayout.DRC")
    assert found is not None
    de2 = next(r for r in found.rules if r.rule == "DE.2")
    assert de2.description.startswith("DE.2 :")
    assert de2.markers[0] == Marker(
        "edge-pair", ((30.0, 100.0), (30.0, 100.5), (30.5, 100.5), (30.5, 100.0))
    )


def test_magics_report_gives_its_rules_and_boxes() -> None:
    """The `.rpt`: rules by their name in parentheses, each box in µm; the same counts as the
    database Magic wrote beside it."""
    folder = REPORTS / "magic" / "12-magic-drc"
    rpt = read_report(folder / "drc.magic.rpt", "12-magic-drc/drc.magic.rpt", "Magic.DRC")
    db = read_report(folder / "drc.magic.lyrdb", "12-magic-drc/drc.magic.lyrdb", "Magic.DRC")
    assert rpt is not None and db is not None
    assert [(r.rule, r.count) for r in rpt.rules] == [("M1.1", 2), ("M1.2a", 1)]
    assert [(r.rule, r.count) for r in db.rules] == [("M1.1", 2), ("M1.2a", 1)]
    assert rpt.rules[0].description == "Metal1 width < 46 (M1.1)"
    assert rpt.rules[0].markers[0] == Marker("box", ((30.1, 103.0), (30.23, 105.0)))
    clean = read_report(REPORTS / "drc" / "12-magic-drc" / "drc.magic.rpt", "x.rpt", None)
    assert clean is not None and clean.rules == ()


def _database(items: int) -> bytes:
    head = (
        b"<?xml version='1.0'?><report-database><categories><category><name>R.1</name>"
        b"<description>rule one</description></category></categories><items>"
    )
    item = (
        b"<item><category>'R.1'</category><cell>top</cell><values>"
        b"<value>box: (0,0;1,1)</value></values></item>"
    )
    return head + item * items + b"</items></report-database>"


def test_a_big_database_is_counted_whole_and_keeps_only_the_first_markers() -> None:
    """50,000 items: every one counted, MAX_MARKERS kept."""
    found = read_lyrdb(io.BytesIO(_database(50_000)), "big.lyrdb", None)
    [rule] = found.rules
    assert (rule.rule, rule.count, len(rule.markers)) == ("R.1", 50_000, MAX_MARKERS)
    assert not found.cut_short


def test_the_time_cap_cuts_a_reading_short_and_says_so() -> None:
    """A reading past its time cap stops, keeps what it counted and is marked cut short."""
    started = time.monotonic()
    found = read_lyrdb(io.BytesIO(_database(300_000)), "big.lyrdb", None, seconds=0.0)
    assert found.cut_short and time.monotonic() - started < 5
    assert found.rules[0].count < 300_000


def test_a_truncated_database_keeps_what_was_read() -> None:
    """A database cut mid-item is no error: the items before the cut count, marked short."""
    data = _database(10)
    found = read_lyrdb(io.BytesIO(data[: len(data) - 60]), "cut.lyrdb", None)
    assert found.cut_short and found.rules[0].count == 9


def test_entities_are_not_a_way_to_grow_a_report() -> None:
    """A database declaring nested entities (the 'billion laughs') is refused by the parser,
    not expanded: the reading ends cut short, quickly."""
    bomb = (
        b"<?xml version='1.0'?><!DOCTYPE r [<!ENTITY a 'aaaaaaaaaa'>"
        + b"".join(
            f"<!ENTITY {chr(98 + i)} '{('&' + chr(97 + i) + ';') * 10}'>".encode() for i in range(8)
        )
        + b"]><report-database><categories><category><name>&i;</name></category>"
        b"</categories></report-database>"
    )
    started = time.monotonic()
    found = read_lyrdb(io.BytesIO(bomb), "bomb.lyrdb", None)
    assert time.monotonic() - started < 5
    assert found.rules == ()


def test_markers_are_bounded_and_text_values_are_no_markers() -> None:
    """A polygon of a million points keeps the first few hundred; `text:` is not a shape."""
    huge = "polygon: (" + ";".join(f"{i},{i}" for i in range(100_000)) + ")"
    marker = parse_marker(huge)
    assert marker is not None and len(marker.points) == 256
    assert parse_marker("text: 'None'") is None
    assert parse_marker("edge: (1.5,-2;3e1,4)") == Marker("edge", ((1.5, -2.0), (30.0, 4.0)))


def test_an_over_long_line_in_a_magic_report_is_skipped_not_held() -> None:
    """A line of megabytes between rules costs no memory and breaks nothing after it."""
    data = (
        b"top\n" + b"-" * 40 + b"\nMetal1 width < 46 (M1.1)\n" + b"-" * 40 + b"\n"
        + b"x" * (4 << 20) + b"\n 1.000um 2.000um 3.000um 4.000um\n"
    )  # fmt: skip
    found = read_magic_rpt(io.BytesIO(data), "m.rpt", "Magic.DRC")
    assert [(r.rule, r.count) for r in found.rules] == [("M1.1", 1)]


def _kept(run_dir: Path, case: str) -> list[OutputFile]:
    """The case's real reports, copied into `run_dir` as the copy-out keeps them."""
    files = []
    for src in sorted((REPORTS / case).rglob("*")):
        if src.is_file():
            folder = src.parent.name
            rel = f"run/{folder}/reports/{src.name}"
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / rel).write_bytes(src.read_bytes())
            files.append(OutputFile(rel, src.stat().st_size, "0" * 64))
    return files


def test_the_reports_read_are_the_databases_and_magics_report_where_no_database() -> None:
    """A step folder's `.lyrdb` is read; Magic's `.rpt` only without a `.lyrdb` beside it;
    a run-level `reports/` only when no step folder has a report; nothing else."""

    def f(path: str) -> OutputFile:
        return OutputFile(path, 1, "0" * 64)

    files = [
        f("run/14-klayout-drc/reports/drc.klayout.lyrdb"),
        f("run/14-klayout-drc/reports/drc.klayout.json"),
        f("run/12-magic-drc/reports/drc.magic.rpt"),
        f("run/12-magic-drc/reports/drc.magic.lyrdb"),
        f("run/13-magic-old/reports/drc.magic.rpt"),
        f("run/reports/drc.klayout.lyrdb"),
        f("run/14-klayout-drc/drc.lyrdb"),
        f("output/chip_top.gds"),
    ]
    assert [(p, s) for _, p, s in reports_to_read(files)] == [
        ("12-magic-drc/drc.magic.lyrdb", "Magic.DRC"),
        ("13-magic-old/drc.magic.rpt", None),
        ("14-klayout-drc/drc.klayout.lyrdb", "KLayout.DRC"),
    ]
    older = [f("run/reports/drc.klayout.lyrdb"), f("run/reports/drc.magic.rpt")]
    assert [p for _, p, _ in reports_to_read(older)] == ["drc.klayout.lyrdb"]


def test_stored_findings_are_written_whole_and_counted_for_the_event(tmp_path: Path) -> None:
    """The drc case's reports: `findings.json` per report with rules and markers, and the
    counts the event records (the clean Magic report counts 0)."""
    files = _kept(tmp_path, "drc")
    found = store_findings(tmp_path, files)
    assert found == (
        FindingsCount("12-magic-drc/drc.magic.lyrdb", "Magic.DRC", 0, 0),
        FindingsCount("14-klayout-drc/drc.klayout.lyrdb", "KLayout.DRC", 3, 2),
    )
    stored = load_findings(tmp_path)
    assert [r["path"] for r in stored] == [f.path for f in found]
    de2 = next(r for r in stored[1]["rules"] if r["rule"] == "DE.2")
    assert de2["count"] == 2 and de2["markers"][0]["kind"] == "edge-pair"
    assert de2["markers"][0]["points"][0] == [30.0, 100.0]
    assert not list(tmp_path.glob(".*.part"))


def test_a_report_that_cannot_be_read_is_recorded_not_raised(tmp_path: Path) -> None:
    """A damaged database is cut short, a missing one an error: the others are still read."""
    files = _kept(tmp_path, "density")
    damaged = tmp_path / "run/10-klayout-antenna/reports/antenna.klayout.lyrdb"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"<report-database><items><item><category>'A'")
    files.append(OutputFile("run/10-klayout-antenna/reports/antenna.klayout.lyrdb", 1, "0" * 64))
    files.append(OutputFile("run/14-klayout-drc/reports/drc.klayout.lyrdb", 1, "0" * 64))
    found = {f.path: f for f in store_findings(tmp_path, files)}
    assert found["06-klayout-density/density.klayout.lyrdb"].count == 6
    assert found["10-klayout-antenna/antenna.klayout.lyrdb"].cut_short
    missing = found["14-klayout-drc/drc.klayout.lyrdb"]
    assert missing.error.startswith("FileNotFoundError") and missing.count == 0


def test_a_run_without_reports_has_no_findings_file(tmp_path: Path) -> None:
    """Nothing to read: no file, no counts, and loading gives none."""
    assert store_findings(tmp_path, [OutputFile("run/flow.log", 1, "0" * 64)]) == ()
    assert not (tmp_path / "findings.json").exists() and load_findings(tmp_path) == []


def test_a_huge_database_keeps_a_bounded_number_of_points(tmp_path: Path) -> None:
    """Many rules of big polygons: counts whole, kept points within the report's budget;
    and the reading speed, printed."""
    rules = 300
    head = (
        b"<?xml version='1.0'?><report-database><categories>"
        + b"".join(f"<category><name>R{i}</name></category>".encode() for i in range(rules))
        + b"</categories><items>"
    )
    poly = "polygon: (" + ";".join(f"{i},{i}" for i in range(200)) + ")"
    value = f"<values><value>{poly}</value></values></item>"
    items = b"".join(
        f"<item><category>'R{i % rules}'</category>{value}".encode() for i in range(60_000)
    )
    started = time.monotonic()
    found = read_lyrdb(io.BytesIO(head + items + b"</items></report-database>"), "x", None)
    took = time.monotonic() - started
    print(f"{60_000 / took:.0f} items/s")
    assert found.total == 60_000 and len(found.rules) == rules
    assert sum(len(m.points) for r in found.rules for m in r.markers) <= MAX_KEPT_POINTS
