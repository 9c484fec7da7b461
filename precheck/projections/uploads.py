"""Read model of uploads, built only from events."""

from __future__ import annotations

from datetime import datetime

import attrs

from precheck.events.store import RecordedEvent
from precheck.events.types import (
    RunDeleted,
    RunQueued,
    UploadDeleted,
    UploadExpired,
    UploadInspected,
    UploadInspectionFailed,
    UploadReceived,
)
from precheck.projections._records import replacer


@attrs.frozen
class UploadRecord:
    """One stored upload. `status` is `available` or `expired`; `run_ids` in queue order.

    `layout_status` is `pending` until the layout is read, then `done` (`layout` holds what was
    read) or `failed` (`layout_error` says why).
    """

    id: str
    name: str
    filename: str
    format: str
    size: int
    sha256: str
    created: datetime
    expires_at: datetime
    status: str = "available"
    run_ids: tuple[str, ...] = ()
    version: int = 0
    layout_status: str = "pending"
    layout: UploadInspected | None = None
    layout_error: str = ""
    owner: str = ""  # the actor that uploaded it (an API key's name, `anonymous`, `cli`)


_replace = replacer(UploadRecord)


_UPLOAD_EVENTS = frozenset(
    {
        UploadReceived,
        UploadDeleted,
        UploadExpired,
        UploadInspected,
        UploadInspectionFailed,
        RunQueued,
        RunDeleted,
    }
)


class Uploads:
    """Every upload that is not retired, by id."""

    EVENTS = _UPLOAD_EVENTS  # the types `apply` looks at: `Projections` feeds it no others

    def __init__(self) -> None:
        self.by_id: dict[str, UploadRecord] = {}

    def get(self, upload_id: str) -> UploadRecord | None:
        """The upload with this id, or None."""
        return self.by_id.get(upload_id)

    def apply(self, r: RecordedEvent) -> None:
        """Evolve the state by one event."""
        e = r.event
        if type(e) not in _UPLOAD_EVENTS:
            return
        if isinstance(e, UploadReceived):
            self.by_id[e.upload_id] = UploadRecord(
                e.upload_id,
                e.name,
                e.filename,
                e.format,
                e.size,
                e.sha256,
                e.at,
                e.expires_at,
                version=r.version,
                owner=r.metadata.actor,
            )
        elif isinstance(e, UploadDeleted):
            self.by_id.pop(e.upload_id, None)
        elif isinstance(e, UploadExpired):
            u = self.by_id.get(e.upload_id)
            if u is None:
                return
            if u.run_ids:  # runs still refer to it: keep it, marked expired
                self.by_id[u.id] = _replace(u, status="expired", version=r.version)
            else:
                del self.by_id[u.id]
        elif isinstance(e, UploadInspected):
            u = self.by_id.get(e.upload_id)
            if u is not None:
                self.by_id[u.id] = _replace(
                    u, layout_status="done", layout=e, layout_error="", version=r.version
                )
        elif isinstance(e, UploadInspectionFailed):
            u = self.by_id.get(e.upload_id)
            if u is not None:
                self.by_id[u.id] = _replace(
                    u, layout_status="failed", layout=None, layout_error=e.error, version=r.version
                )
        elif isinstance(e, RunQueued):
            u = self.by_id.get(e.upload_id)
            if u is not None:
                self.by_id[u.id] = _replace(u, run_ids=(*u.run_ids, e.run_id))
        elif isinstance(e, RunDeleted):
            u = self.by_id.get(e.upload_id)
            if u is None:
                return
            left = tuple(rid for rid in u.run_ids if rid != e.run_id)
            if not left and u.status == "expired":
                del self.by_id[u.id]  # its last run is gone: retired as an unused upload is
            else:
                self.by_id[u.id] = _replace(u, run_ids=left)
