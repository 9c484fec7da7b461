"""The event catalogue and the reaction table in `docs/architecture.md` match the code."""

from __future__ import annotations

import inspect
import re
from functools import cache
from pathlib import Path

import attrs
import pytest

from precheck.events.types import SCHEMAS, TAGS
from precheck.reactions import REACTIONS

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
SECTION = "## Event catalogue"
# "### `run.queued` (schema 2)" opens an event's entry; its fields follow as bullets
# "- `run_id` (`str`): meaning". Overview rows start "| `run.queued` | 2 |".
HEADING = re.compile(r"### `(?P<tag>[^`]+)` \(schema (?P<schema>\d+)\)")
FIELD = re.compile(r"- `(?P<name>\w+)` \(`(?P<type>[^`]+)`\): \S")
ROW = re.compile(r"\| `(?P<tag>[^`]+)` \| (?P<schema>\d+) \|")


@attrs.frozen
class Entry:
    """One documented event: its schema number and its (name, type) fields in order."""

    schema: int
    fields: list[tuple[str, str]]


@attrs.frozen
class Catalogue:
    """The parsed section: the overview table's schemas and the per-event entries."""

    overview: dict[str, int]
    entries: dict[str, Entry]


@cache
def catalogue() -> Catalogue:
    """Parse the catalogue section, from its heading to the next `## ` heading or the end."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    overview: dict[str, int] = {}
    entries: dict[str, Entry] = {}
    entry: Entry | None = None
    for line in lines[start:end]:
        if line.startswith("### "):
            m = HEADING.fullmatch(line)
            assert m is not None, f"not an event heading: {line!r}"
            assert m["tag"] not in entries, f"{m['tag']} documented twice"
            entry = entries[m["tag"]] = Entry(int(m["schema"]), [])
        elif entry is None and (m := ROW.match(line)):
            assert m["tag"] not in overview, f"{m['tag']} twice in the overview"
            overview[m["tag"]] = int(m["schema"])
        elif entry is not None and (m := FIELD.match(line)):
            entry.fields.append((m["name"], m["type"]))
    return Catalogue(overview, entries)


def test_every_event_type_is_documented_and_nothing_else() -> None:
    """The documented tags, in the overview and as entries, are exactly those in `TAGS`."""
    tags = set(TAGS.values())
    assert set(catalogue().entries) == tags
    assert set(catalogue().overview) == tags


def test_schema_numbers_match_the_code() -> None:
    """Each documented schema number is the tag's current one in `SCHEMAS`."""
    # `SCHEMAS` names every tag (1 unless raised), and the codec indexes it without a default.
    expected = {tag: SCHEMAS[tag] for tag in TAGS.values()}
    assert catalogue().overview == expected
    assert {tag: e.schema for tag, e in catalogue().entries.items()} == expected


@pytest.mark.parametrize("cls", list(TAGS), ids=list(TAGS.values()))
def test_fields_match_the_event_class(cls: type) -> None:
    """An entry lists its class's attrs fields, in order, each with its declared type."""
    declared = inspect.get_annotations(cls)  # the source text: the module defers annotations
    expected = [(a.name, declared[a.name]) for a in attrs.fields(cls)]
    assert catalogue().entries[TAGS[cls]].fields == expected


def _doc_reactions() -> list[tuple[str, tuple[str, ...]]]:
    """The reaction table's rows in `docs/architecture.md`: (name, the tags it takes)."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Who reacts to what") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("## "))
    rows = []
    for line in lines[start:end]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("Reaction", "---"):
            continue
        takes = tuple(
            "*" if t == "every event" else t.strip("`").removesuffix("*")
            for t in (part.strip() for part in cells[1].split(","))
        )
        rows.append((cells[0], takes))
    return rows


def test_the_reaction_table_in_the_docs_is_the_codes() -> None:
    """The architecture page lists the reactions of `reactions.py`, in order, each taking the
    same events."""
    assert _doc_reactions() == [(r.name, r.on) for r in REACTIONS]
