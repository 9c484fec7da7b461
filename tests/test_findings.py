"""Reading check reports into findings: on the real runs' reports (`tests/fixtures/real_runs/
reports/`), held against the counts the flow itself wrote beside them (`*.json`), and on
hostile input: a huge database, a cut one, over-long lines, entities."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from precheck.runner.findings import (
    MAX_MARKERS,
    Marker,
    parse_marker,
    read_lyrdb,
    read_magic_rpt,
    read_report,
)

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
