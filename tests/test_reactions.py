"""The reaction table: each committed event reaches the reactions that take it, in the
table's order, and one failing reaction keeps it from no other."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from precheck.events.store import RecordedEvent
from precheck.events.types import (
    TAGS,
    Event,
    KeyRevoked,
    Metadata,
    RunCancelRequested,
    UploadDeleted,
)
from precheck.reactions import REACTIONS, Reaction, Reactions

NOW = datetime(2026, 1, 2, tzinfo=UTC)


def recorded(event: Event, position: int = 1) -> RecordedEvent:
    """`event` as the store hands it on."""
    return RecordedEvent(position, "s", 1, event, Metadata("test"), NOW, TAGS[type(event)], "")


def test_each_event_reaches_the_reactions_that_take_it_in_table_order() -> None:
    """Exact tags, prefixes and `*` select the reactions, called in the table's order."""
    table = (
        Reaction("all", ("*",), "every event"),
        Reaction("runs", ("run.",), "run events"),
        Reaction("revokes", ("key.revoked",), "one tag"),
    )
    seen: list[tuple[str, str]] = []
    reactions = Reactions(table)

    def note(name: str) -> Callable[[RecordedEvent], None]:
        return lambda r: seen.append((name, type(r.event).__name__))

    for r in table:
        reactions.attach(r.name, note(r.name))
    reactions(recorded(RunCancelRequested("r1", NOW)))
    reactions(recorded(KeyRevoked("k", NOW)))
    reactions(recorded(UploadDeleted("u1", NOW)))
    assert seen == [
        ("all", "RunCancelRequested"),
        ("runs", "RunCancelRequested"),
        ("all", "KeyRevoked"),
        ("revokes", "KeyRevoked"),
        ("all", "UploadDeleted"),
    ]


def test_a_failing_reaction_keeps_the_event_from_no_other() -> None:
    """A reaction that raises is logged; the ones after it still get the event."""
    table = (Reaction("first", ("*",), "fails"), Reaction("second", ("*",), "counts"))
    reactions, got = Reactions(table), list[RecordedEvent]()

    def fail(_: RecordedEvent) -> None:
        raise RuntimeError("broken")

    reactions.attach("first", fail)
    reactions.attach("second", got.append)
    reactions(recorded(KeyRevoked("k", NOW)))
    assert len(got) == 1


def test_only_reactions_of_the_table_can_be_attached() -> None:
    """A name the table does not list is refused, so the table stays the whole story."""
    with pytest.raises(KeyError, match="no reaction named"):
        Reactions().attach("re-checker", lambda e: None)


def test_the_projections_come_first() -> None:
    """Every other reaction reads the state after the event."""
    assert REACTIONS[0].name == "projections" and REACTIONS[0].on == ("*",)
