"""Reading a run's check reports into findings: per report, the rules that fired with their
description and count, and the first markers of each, in µm.

KLayout's report databases (`.lyrdb`, XML: categories with descriptions, items with their
category, cell and values such as `edge-pair: (30,100;30,100.5)|(30.5,100.5;30.5,100)`) and
Magic's `.rpt` (a rule line, then one `x1um y1um x2um y2um` box per line) are read streaming,
each within a time cap: a real DRC database can hold millions of items, of which only the
counts and the first `MAX_MARKERS` of each rule are kept. A report cut short by the cap says so.
Reports come out of the container: nothing in one is trusted (no entity is resolved, every
count and length is bounded).
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import attrs

MAX_MARKERS = 100  # markers kept per rule
MAX_POINTS = 256  # points kept per marker
MAX_RULES = 1000  # rules kept per report
MAX_TEXT = 2000  # characters of a description kept
MAX_KEPT_POINTS = 100_000  # points of markers kept per report, over all its rules
SECONDS = 30.0  # reading one report stops after this, its counts so far marked cut short

Point = tuple[float, float]


@attrs.frozen
class Marker:
    """Where a rule fired: `kind` (`edge-pair`, `polygon`, `box`, `edge`, `point`) and its
    points in µm (an edge pair: the first edge's two points, then the second's)."""

    kind: str
    points: tuple[Point, ...]


@attrs.frozen
class RuleFindings:
    """One rule that fired in a report: its name, description, how often, first markers."""

    rule: str
    description: str
    count: int
    markers: tuple[Marker, ...]


@attrs.frozen
class ReportFindings:
    """What one report found: rules with a count above 0 (`rules`), in the report's order."""

    path: str  # the report's path as `/reports` serves it
    step: str | None
    rules: tuple[RuleFindings, ...]
    cut_short: bool = False  # a cap or damage ended the reading: counts are at least these
    error: str = ""  # why the report could not be read at all

    @property
    def total(self) -> int:
        """Markers over all rules."""
        return sum(r.count for r in self.rules)


class _Rule:
    """A rule being counted."""

    def __init__(self, name: str, description: str, budget: list[int]) -> None:
        self.name, self.description = name, description
        self.count = 0
        self.markers: list[Marker] = []
        self.budget = budget  # points the report may still keep, shared by its rules

    def add(self, marker: Marker | None) -> None:
        self.count += 1
        if (
            marker is not None
            and len(self.markers) < MAX_MARKERS
            and self.budget[0] >= len(marker.points)
        ):
            self.budget[0] -= len(marker.points)
            self.markers.append(marker)

    def done(self) -> RuleFindings:
        return RuleFindings(self.name, self.description, self.count, tuple(self.markers))


class _Rules:
    """Rules by name, in the order first seen; at most MAX_RULES."""

    def __init__(self) -> None:
        self.by_name: dict[str, _Rule] = {}
        self.budget = [MAX_KEPT_POINTS]

    def get(self, name: str, description: str = "") -> _Rule | None:
        rule = self.by_name.get(name)
        if rule is None and len(self.by_name) < MAX_RULES:
            rule = self.by_name[name] = _Rule(name, description[:MAX_TEXT], self.budget)
        elif rule is not None and description and not rule.description:
            rule.description = description[:MAX_TEXT]
        return rule

    def fired(self) -> tuple[RuleFindings, ...]:
        return tuple(r.done() for r in self.by_name.values() if r.count)


_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_PAIR = re.compile(rf"({_NUMBER}),({_NUMBER})")
_KINDS = ("edge-pair", "polygon", "box", "edge", "point", "path")


def parse_marker(value: str) -> Marker | None:
    """A `.lyrdb` item value as a marker; None for values that are no shape (`text: 'x'`)."""
    kind, colon, rest = value.partition(":")
    kind = kind.strip()
    if not colon or kind not in _KINDS:
        return None
    points: list[Point] = []
    for m in _PAIR.finditer(rest, 0, 64 * MAX_POINTS):
        points.append((float(m[1]), float(m[2])))
        if len(points) >= MAX_POINTS:
            break
    return Marker(kind, tuple(points)) if points else None


def _category(text: str) -> str:
    """An item's category as written (`'DE.2'`, nested `'a'.'b'`) as the rule's name."""
    parts = [p.strip().strip("'") for p in re.split(r"'\.'", text.strip())]
    return ".".join(p for p in parts if p)


def read_lyrdb(
    f: IO[bytes], path: str, step: str | None, seconds: float = SECONDS
) -> ReportFindings:
    """A KLayout report database's findings, read streaming."""
    rules, deadline, cut = _Rules(), time.monotonic() + seconds, False
    names: list[str] = []  # the categories being read, outermost first
    described: dict[str, str] = {}
    parents: list[ET.Element] = []
    try:
        for event, elem in ET.iterparse(f, events=("start", "end")):
            tag = elem.tag
            if event == "start":
                parents.append(elem)
                if tag == "category" and len(parents) >= 2 and parents[-2].tag == "categories":
                    names.append("")
                continue
            parents.pop()
            parent = parents[-1].tag if parents else ""
            if tag == "name" and parent == "category" and names:
                names[-1] = (elem.text or "").strip()[:MAX_TEXT]
            elif tag == "description" and parent == "category" and names:
                described[".".join(n for n in names if n)] = " ".join((elem.text or "").split())
            elif tag == "category" and parent == "categories" and names:
                full = ".".join(n for n in names if n)
                rules.get(full, described.get(full, ""))
                names.pop()
            elif tag == "item":
                _item(elem, rules)
                if parents:
                    parents[-1].clear()  # the items read so far are not kept
                if time.monotonic() > deadline:
                    cut = True
                    break
    except ET.ParseError:
        cut = True  # what was read so far stands; the report is marked cut short
    return ReportFindings(path, step, rules.fired(), cut)


def _item(elem: ET.Element, rules: _Rules) -> None:
    category = elem.findtext("category") or ""
    rule = rules.get(_category(category))
    if rule is None:
        return
    marker = None
    if len(rule.markers) >= MAX_MARKERS or rule.budget[0] <= 0:
        rule.add(None)  # counted only: its markers are no longer kept
        return
    for value in elem.iterfind("values/value"):
        marker = parse_marker(value.text or "")
        if marker is not None:
            break
    rule.add(marker)


_RULE_LINE = re.compile(r"^(?P<description>.*\((?P<rule>[^()]{1,200})\))\s*$")
_BOX = re.compile(rf"^\s*({_NUMBER})um\s+({_NUMBER})um\s+({_NUMBER})um\s+({_NUMBER})um\s*$")
_SEPARATOR = re.compile(r"^-{10,}\s*$")


def read_magic_rpt(
    f: IO[bytes], path: str, step: str | None, seconds: float = SECONDS
) -> ReportFindings:
    """Magic's DRC report: a rule line between separators, then a box per line, in µm."""
    rules, deadline, cut = _Rules(), time.monotonic() + seconds, False
    rule: _Rule | None = None
    for n, raw in enumerate(_lines(f)):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if _SEPARATOR.match(line) or line.startswith("[INFO]"):
            continue
        if m := _BOX.match(line):
            x1, y1, x2, y2 = (float(g) for g in m.groups())
            if rule is not None:
                rule.add(Marker("box", ((x1, y1), (x2, y2))))
        elif m := _RULE_LINE.match(line):
            rule = rules.get(m["rule"].strip(), m["description"].strip())
        if n % 10000 == 0 and time.monotonic() > deadline:
            cut = True
            break
    return ReportFindings(path, step, rules.fired(), cut)


def _lines(f: IO[bytes], limit: int = 1 << 16) -> Iterator[bytes]:
    """The file's lines, each cut at `limit` bytes (a line of GBs is never held)."""
    while line := f.readline(limit):
        if not line.endswith(b"\n"):
            while (rest := f.readline(limit)) and not rest.endswith(b"\n"):
                pass  # the rest of an over-long line
        yield line


def read_report(
    file: Path, path: str, step: str | None, seconds: float = SECONDS
) -> ReportFindings | None:
    """The findings of one kept report; None for a file that is no report database."""
    readers = {".lyrdb": read_lyrdb, ".rpt": read_magic_rpt}
    reader = readers.get(file.suffix)
    if reader is None:
        return None
    with file.open("rb") as f:
        return reader(f, path, step, seconds)
