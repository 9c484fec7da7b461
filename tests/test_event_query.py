"""The audit feed's filters: the SQL the log answers equals the predicate, and a filter that
matches nothing pages through the whole log in one bounded query."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from precheck.errors import Invalid
from precheck.events.filters import event_query
from precheck.events.store import EventStore
from precheck.events.types import Metadata, RunCancelled, RunProgressed, UploadDeleted

AT = datetime(2026, 11, 26, tzinfo=UTC)


@pytest.mark.parametrize(
    ("stream", "types", "run"),
    [
        (None, (), None),
        ("run-r1", (), None),
        (None, ("run.",), None),
        (None, ("upload.deleted",), None),
        (None, ("run.cancelled", "upload."), None),
        (None, ("run.progressed",), "r2"),
        ("run-r1", (), "r2"),
        ("server", ("server.",), None),
    ],
)
async def test_the_sql_finds_what_the_predicate_keeps(
    tmp_path: Path, stream: str | None, types: tuple[str, ...], run: str | None
) -> None:
    """For every filter shape, reading with its SQL gives exactly the events it matches."""
    store = await EventStore.open(tmp_path / "precheck.db")
    try:
        meta = Metadata("t")
        for i in range(30):
            run_id = f"r{i % 3}"
            await store.append([RunProgressed(run_id, i, 16, f"Step{i}", AT)], meta)
            if i % 5 == 0:
                await store.append([RunCancelled(run_id, AT), UploadDeleted(f"u{i}", AT)], meta)
        query = event_query(stream, types, run)
        everything = await store.read(0, 1000)
        found = await store.read(0, 1000, where=query.sql())
        assert [r.position for r in found] == [r.position for r in everything if query.matches(r)]
        paged = await store.read(3, 4, where=query.sql())
        assert paged == [r for r in found if r.position > 3][:4]
    finally:
        await store.close()


def test_an_unknown_type_is_refused() -> None:
    """A type that no event has, or a prefix no tag starts with, is a 400."""
    for bad in ("run.nope", "nope.", "run"):
        with pytest.raises(Invalid):
            event_query(types=[bad])
