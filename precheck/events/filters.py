"""Choosing events by stream, type and run: shared by the audit feed and the CLI, as a
predicate over events and as the SQL that finds them in the log without reading the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from precheck.errors import Invalid
from precheck.events.store import RecordedEvent
from precheck.events.streams import run_stream
from precheck.events.types import TAGS

KNOWN_TYPES = frozenset(TAGS.values())


@attrs.frozen
class EventQuery:
    """Events of one stream (if given) whose type is one of `exact` or starts with one of
    `prefixes` (if any is given)."""

    stream: str | None = None
    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def matches(self, r: RecordedEvent) -> bool:
        """Does `r` match?"""
        if self.stream is not None and r.stream != self.stream:
            return False
        if not self.exact and not self.prefixes:
            return True
        return r.type in self.exact or (bool(self.prefixes) and r.type.startswith(self.prefixes))

    def sql(self) -> tuple[str, tuple[object, ...]]:
        """The same as a WHERE clause (starting with AND, or empty) and its arguments."""
        clause, args = "", list[object]()
        if self.stream is not None:
            clause += " AND stream = ?"
            args.append(self.stream)
        kinds = [("type = ?", t) for t in sorted(self.exact)]
        # Tags hold no LIKE wildcards (`%`, `_`): a prefix is matched by its own characters.
        kinds += [("substr(type, 1, ?) = ?", p) for p in self.prefixes]
        if kinds:
            clause += " AND (" + " OR ".join(k for k, _ in kinds) + ")"
            for k, value in kinds:
                args.extend([len(value), value] if k.startswith("substr") else [value])
        return clause, tuple(args)


def event_query(
    stream: str | None = None, types: Sequence[str] = (), run: str | None = None
) -> EventQuery:
    """The query for `stream=`, `type=` (exact, or a prefix ending in `.`) and `run=`."""
    for t in types:
        if t not in KNOWN_TYPES and not (
            t.endswith(".") and any(k.startswith(t) for k in KNOWN_TYPES)
        ):
            raise Invalid(f"unknown event type {t!r}")
    if run is not None:
        if stream is not None and stream != run_stream(run):
            return EventQuery(stream="\0nothing")  # two streams at once: none matches
        stream = run_stream(run)
    return EventQuery(
        stream,
        frozenset(t for t in types if not t.endswith(".")),
        tuple(t for t in types if t.endswith(".")),
    )


def event_filter(
    stream: str | None = None, types: Sequence[str] = (), run: str | None = None
) -> Callable[[RecordedEvent], bool]:
    """A predicate for `stream=`, `type=` and `run=` (see `event_query`)."""
    return event_query(stream, types, run).matches
