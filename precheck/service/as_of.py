"""A run or an upload as it stood at a position of the log, for auditors: its own events up to
there, folded by the same projection code the live state uses."""

from __future__ import annotations

from datetime import datetime

from precheck.events.store import EventStore, RecordedEvent
from precheck.events.streams import run_stream, upload_stream
from precheck.projections.runs import RunRecord, Runs
from precheck.projections.uploads import UploadRecord, Uploads

PAGE = 1000


async def position_of(store: EventStore, text: str) -> int:
    """`as_of` as a position: a number is one; an ISO time is the last event recorded by then.
    Raises ValueError for anything else, or a position past the log's end."""
    if text.isdigit():
        position = int(text)
    else:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if t.tzinfo is None:
            raise ValueError("a time needs its zone (e.g. 2026-12-01T10:00:00Z)")
        position = await store.position_at(t)
    if position > store.head:
        raise ValueError(f"position {position} is past the end of the log ({store.head})")
    return position


async def _events(
    store: EventStore, position: int, stream: str | None, where: tuple[str, tuple[object, ...]]
) -> list[RecordedEvent]:
    found: list[RecordedEvent] = []
    after = 0
    while after < position:
        page = await store.read(after, PAGE, stream=stream, where=where)
        found += [r for r in page if r.position <= position]
        if len(page) < PAGE or page[-1].position >= position:
            break
        after = page[-1].position
    return found


async def run_as_of(store: EventStore, run_id: str, position: int) -> RunRecord | None:
    """The run after event `position` (None: it did not exist then, or was deleted by then)."""
    runs = Runs()
    for r in await _events(store, position, run_stream(run_id), ("", ())):
        runs.apply(r)
    return runs.get(run_id)


async def upload_as_of(store: EventStore, upload_id: str, position: int) -> UploadRecord | None:
    """The upload after event `position`: its own events and those of the runs made of it."""
    uploads = Uploads()
    where = (
        " AND (stream = ? OR (type IN ('run.queued', 'run.deleted')"
        " AND json_extract(data, '$.upload_id') = ?))",
        (upload_stream(upload_id), upload_id),
    )
    for r in await _events(store, position, None, where):
        uploads.apply(r)
    return uploads.by_id.get(upload_id)
