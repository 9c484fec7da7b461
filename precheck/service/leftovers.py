"""At start, once the log is replayed: the storage folder's files the log has no live entity
for. What the log retired is removed (a crash came between the event and the removal); what it
never knew is kept: folders are moved aside to `orphans/`, output lines stay, both reported."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from precheck.events.store import EventStore
from precheck.projections import Projections
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore

log = logging.getLogger(__name__)


async def settle_leftovers(
    store: EventStore, state: Projections, storage: Storage, output_lines: OutputLineStore
) -> None:
    """Refuse an empty log beside uploads or runs (`StorageRefused`); else remove what the
    log retired and move aside, or keep, what it never knew."""
    storage.refuse_without_log(store.head == 0)

    async def retired(prefix: str, ids: Iterable[str]) -> set[str]:
        # The log has the entity's stream, yet no live entity: a retiring event ended it.
        return {id_ for id_ in ids if await store.version_of(f"{prefix}-{id_}") > 0}

    retired_uploads = await retired("upload", storage.unowned("uploads", state.uploads.by_id))
    retired_runs = await retired("run", storage.unowned("runs", state.runs.by_id))
    uploads = storage.settle("uploads", state.uploads.by_id, retired_uploads.__contains__)
    runs = storage.settle("runs", state.runs.by_id, retired_runs.__contains__)
    removed_runs = set(runs.removed)
    unknown_lines: list[str] = []
    lines_only = sorted(await output_lines.run_ids() - set(state.runs.by_id))
    retired_lines = await retired("run", lines_only)
    for run_id in lines_only:
        if run_id in retired_lines:
            await output_lines.delete_run(run_id)
            removed_runs.add(run_id)
        else:
            unknown_lines.append(run_id)
    if uploads.removed or removed_runs:
        log.info(
            "removed the files of %d deleted uploads and %d deleted runs",
            len(uploads.removed),
            len(removed_runs),
        )
    for moved in uploads.moved + runs.moved:
        log.warning("moved %s aside: the event log does not know it", moved)
    if unknown_lines:
        log.warning(
            "kept the output lines of %d runs the event log does not know (%s)",
            len(unknown_lines),
            ", ".join(unknown_lines[:10]) + (", ..." if len(unknown_lines) > 10 else ""),
        )
