"""A user key's storage quota: what its uploads and its runs' outputs hold on disk, against
`server.max_storage_mb_per_user`. Admin keys (and everyone with auth off) have none."""

from __future__ import annotations

from aiohttp import web

from precheck.domain.retention import kinds_held
from precheck.errors import TooMany
from precheck.projections import Projections
from precheck.web import keys
from precheck.web.access import identity


def stored_bytes(state: Projections, owner: str) -> int:
    """The bytes `owner`'s uploads and runs' kept files hold. A run answered from the result
    cache holds links to its source's files: nothing more while the source is there (once it
    is deleted, the links hold the bytes, and count)."""
    runs = state.runs.by_id
    total = sum(u.size for u in state.uploads.by_id.values() if u.owner == owner)
    for run in runs.values():
        if run.owner != owner or (run.reused_from and run.reused_from in runs):
            continue
        total += sum(kinds_held(run).values())  # what retention removed is not held
    return total


def room(request: web.Request) -> int | None:
    """Bytes the caller may still store; None without a quota."""
    quota = request.app[keys.CONFIG].server.max_storage_mb_per_user
    who = identity(request)
    if not quota or who.admin:
        return None
    return (quota << 20) - stored_bytes(request.app[keys.PROJECTIONS], who.name)


def full(request: web.Request) -> str:
    """What a caller at its quota is told."""
    quota = request.app[keys.CONFIG].server.max_storage_mb_per_user
    return (
        f"this key's uploads and run outputs hold as much as server.max_storage_mb_per_user"
        f" ({quota} MB) allows: delete uploads or runs (DELETE ...?remove=1) first"
    )


def require_room(request: web.Request) -> None:
    """Refuse (429) a caller at or past its quota: a new run would only add outputs."""
    left = room(request)
    if left is not None and left <= 0:
        raise TooMany(full(request))
