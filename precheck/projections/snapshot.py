"""Snapshots of the read models beside the log, so a restart folds only the events after one.

A snapshot is the whole `Projections` object pickled at a position: generic, so records and
fields added to the projections are kept without code here. It is trusted only when its
projection version (a hash over the source of the projection modules and the event types,
plus `BUMP`) equals this code's, and when the log still holds, at its position, the chain hash
it was taken at (so a snapshot of another log, or of a log cut since, is never used).

The file (`<log>.snapshot`) is one JSON header line, then the pickle:
`{"format", "version", "position", "hash", "sha256", "bytes"}`. It is written to a temporary
file, synced and renamed over the old one, so a reader sees the old snapshot or the new one.
A damaged or mismatching snapshot is ignored with a log line: a full replay is never wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import attrs

from precheck.events.store import EventStore
from precheck.projections import Projections, state_pickle

log = logging.getLogger(__name__)

FORMAT = 1
# Bump when the meaning of a stored state changes without its modules' source changing.
BUMP = 1
# Written every this many events (checked by the server every few seconds) and on clean stop.
EVERY = 100_000

_PACKAGE = Path(__file__).resolve().parents[1]
# Every module whose classes or folding logic a pickled state depends on.
_SOURCES = ("projections", "events/types.py", "events/store.py", "domain")


@cache
def projection_version() -> str:
    """A hash that changes by itself whenever projection code or event types change."""
    digest = hashlib.sha256(f"{FORMAT}:{BUMP}:{sys.version_info[:2]}".encode())
    for path in _source_files():
        digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def _source_files() -> Iterator[Path]:
    for name in _SOURCES:
        path = _PACKAGE / name
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def snapshot_path(db_path: Path) -> Path:
    """Where the snapshot of the log at `db_path` lives: beside it."""
    return db_path.with_name(db_path.name + ".snapshot")


@attrs.frozen
class SnapshotInfo:
    """A snapshot's header."""

    version: str
    position: int
    hash: str  # the log's chain hash at `position`
    sha256: str  # of the pickle
    bytes: int


class SnapshotUnusable(Exception):
    """The snapshot cannot be used: missing, damaged, of other code or of another log."""


class NoSnapshot(SnapshotUnusable):
    """There is no snapshot (yet): nothing to say about it."""


def write(path: Path, projections: Projections) -> SnapshotInfo:
    """Write `projections` at their position to `path` (blocking)."""
    return write_bytes(path, *dump(projections))


def dump(projections: Projections) -> tuple[SnapshotInfo, bytes]:
    """The header and pickle of `projections`: taken at once, as the state is live."""
    data = pickled(projections)
    return header_of(projections.position, projections.last_hash, data), data


def pickled(projections: Projections) -> bytes:
    """The pickle a snapshot of `projections` holds."""
    return state_pickle.dumps(projections)


def header_of(position: int, last_hash: str, data: bytes) -> SnapshotInfo:
    """The header of `data`, a pickle of the projections at `position` (chain hash
    `last_hash`)."""
    digest = hashlib.sha256(data).hexdigest()
    return SnapshotInfo(projection_version(), position, last_hash, digest, len(data))


def write_bytes(path: Path, info: SnapshotInfo, data: bytes) -> SnapshotInfo:
    """Write a dumped snapshot atomically (temporary file, sync, rename): blocking."""
    header = json.dumps({"format": FORMAT, **attrs.asdict(info)}).encode() + b"\n"
    part = path.with_name(path.name + ".part")
    try:
        with part.open("wb") as f:
            f.write(header)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)
    return info


def read_header(path: Path) -> tuple[SnapshotInfo, bytes]:
    """The header and pickle of the snapshot at `path`, checked against its own sha256."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NoSnapshot("no snapshot") from None
    except OSError as e:
        raise SnapshotUnusable(f"unreadable: {e}") from None
    head, newline, data = raw.partition(b"\n")
    try:
        fields = json.loads(head)
        if fields.pop("format") != FORMAT:
            raise SnapshotUnusable("of another snapshot format")
        info = SnapshotInfo(**fields)
    except SnapshotUnusable:
        raise
    except (ValueError, TypeError, KeyError, AttributeError):
        raise SnapshotUnusable("its header is damaged") from None
    if not newline or len(data) != info.bytes or hashlib.sha256(data).hexdigest() != info.sha256:
        raise SnapshotUnusable("damaged (its size or sha256 does not match its header)")
    return info, data


async def load(path: Path, store: EventStore) -> Projections:
    """The projections of the snapshot at `path`, if it fits this code and `store`'s log."""
    info, data = await asyncio.to_thread(read_header, path)
    if info.version != projection_version():
        raise SnapshotUnusable(
            f"of projection version {info.version}, this code has {projection_version()}"
        )
    if info.position > store.head:
        raise SnapshotUnusable(f"at position {info.position}, past the log's end ({store.head})")
    at = await store.read(info.position - 1, 1) if info.position > 0 else []
    if info.position > 0 and (not at or at[0].hash != info.hash):
        raise SnapshotUnusable(f"the log's hash at position {info.position} is not its own")
    try:
        projections = state_pickle.loads(data)
    except Exception as e:  # a class renamed without a version change, a bad pickle
        raise SnapshotUnusable(f"it does not load: {type(e).__name__}: {e}") from None
    if not isinstance(projections, Projections) or projections.position != info.position:
        raise SnapshotUnusable("it holds no projections at its position")
    return projections


async def restore(store: EventStore, path: Path) -> tuple[Projections, int]:
    """Ready projections: the snapshot at `path` (when usable) and the events after it folded
    in, else a full replay. Also returns the snapshot's position (0: none used)."""
    try:
        projections = await load(path, store)
    except NoSnapshot:
        return await Projections.replay(store), 0
    except SnapshotUnusable as e:
        log.warning("snapshot %s ignored (%s): replaying the whole log", path.name, e)
        return await Projections.replay(store), 0
    start = projections.position
    await projections.fold(store)
    log.info(
        "snapshot %s at position %d loaded; %d later events folded",
        path.name,
        start,
        projections.position - start,
    )
    return projections, start


def differences(a: Any, b: Any, where: str = "projections") -> str:
    """Where two read-model states first differ (empty: they are equal).

    Generic like the snapshot: plain objects are compared field by field (through
    `__getstate__`, so what a snapshot leaves out is left out here too), anything else with ==.
    """
    if type(a) is not type(b):
        return f"{where}: {type(a).__name__} against {type(b).__name__}"
    if hasattr(a, "__dict__") and not attrs.has(type(a)):
        sa, sb = _state(a), _state(b)
        # In the order the object sets them (a read model another holds, like the runs a
        # re-check model reads, is then named at its own place first), then any extra.
        for key in [*sa, *(k for k in sorted(sb) if k not in sa)]:
            if key not in sa or key not in sb:
                return f"{where}.{key}: in one only"
            found = differences(sa[key], sb[key], f"{where}.{key}")
            if found:
                return found
        return ""
    if isinstance(a, dict) and a != b:
        for key in sorted(a.keys() ^ b.keys(), key=repr)[:1]:
            return f"{where}[{key!r}]: in one only"
        for key in a:
            if a[key] != b[key]:
                return f"{where}[{key!r}] differs"
        return f"{where}: the order differs"
    return "" if a == b else f"{where} differs"


def _state(o: Any) -> dict[str, Any]:
    state = o.__getstate__()
    return dict(state) if isinstance(state, dict) else dict(vars(o))
