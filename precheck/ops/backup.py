"""`precheck-server backup DEST`: a consistent copy of a storage folder, taken while the server
serves.

The event log and the output lines live in one SQLite database; SQLite's online backup copies
it page by page as it stood at one moment, whatever the server writes meanwhile (a file copy
of a database in WAL mode could catch it half-written). The copied log then says which files
it refers to (each upload's layout, each run's kept files, with their sha256): exactly those
are copied, each checked against its sha256 on the way. A file already in DEST with the size
and sha256 the log gives is not copied again (`manifest.json` remembers what DEST holds), so a
nightly backup of a big store copies only what is new; what DEST holds that the copied log
no longer refers to (deleted runs) is removed from DEST. Not in a backup: `server.json` (the
running server's address and admin token), `tmp/` and `orphans/`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import attrs

from precheck.config import Config
from precheck.domain.retention import kind_of, pruned_kinds
from precheck.events.store import EventStore
from precheck.ops.errors import OpsError
from precheck.projections import Projections
from precheck.projections.snapshot import SnapshotUnusable, load, snapshot_path
from precheck.storage.files import Storage

MANIFEST = "manifest.json"
CHUNK = 1 << 20


@attrs.frozen
class Wanted:
    """A file the copied log refers to: its path in the storage folder, size and sha256."""

    path: str
    size: int
    sha256: str


@attrs.define
class BackupReport:
    """What a backup did."""

    position: int = 0  # the copied log's last event
    copied: int = 0
    copied_bytes: int = 0
    kept: int = 0  # already in DEST, not copied again
    removed: int = 0  # in DEST, no longer referred to
    missing: list[str] = attrs.Factory(list)  # referred to but absent in the source

    def lines(self) -> list[str]:
        """The report, a line each."""
        lines = [
            f"event log and output lines: copied at position {self.position}",
            f"files: {self.copied} copied ({self.copied_bytes} bytes), {self.kept} already there,"
            f" {self.removed} no longer referred to removed",
        ]
        if self.missing:
            lines.append(f"missing in the source (not copied): {', '.join(self.missing[:10])}")
        return lines


def _copy_database(source: Path, dest: Path) -> None:
    """SQLite's online backup of `source` into a new file at `dest`."""
    dest.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(dest)
        try:
            # In one step: one read transaction, so one moment of the log. In WAL mode it does
            # not hold the server's writer up (a copy in steps would start over on each write).
            src.backup(out)
            out.execute("PRAGMA journal_mode=WAL")
            out.commit()
        finally:
            out.close()
    finally:
        src.close()
    with dest.open("rb") as f:
        os.fsync(f.fileno())


def wanted_files(state: Projections) -> dict[str, Wanted]:
    """Every file the log refers to, by its path in the storage folder."""
    found: dict[str, Wanted] = {}
    for u in state.uploads.by_id.values():
        path = f"uploads/{u.id}/{u.filename}"
        found[path] = Wanted(path, u.size, u.sha256)
    for run in state.runs.by_id.values():
        kept = [*run.files, *([run.output] if run.output is not None else [])]
        gone = pruned_kinds(run)  # retention removed them: the log no longer promises them
        for f in (f for f in kept if kind_of(f.path) not in gone):
            path = f"runs/{run.id}/{f.path}"
            found[path] = Wanted(path, f.size, f.sha256)
    return found


def _copy_checked(source: Path, dest: Path, want: Wanted) -> None:
    """Copy `source` to `dest` through a temporary file, refusing it unless it has the size and
    sha256 the log gives (a damaged file is not passed on as good)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest, size = hashlib.sha256(), 0
    try:
        with source.open("rb") as src, part.open("wb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if (size, digest.hexdigest()) != (want.size, want.sha256):
            raise OpsError(
                f"{want.path}: {size} bytes, sha256 {digest.hexdigest()[:12]}… in the storage"
                f" folder, but the log says {want.size} bytes, {want.sha256[:12]}…: not copied"
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def _remove_unreferred(dest: Path, wanted: dict[str, Wanted]) -> int:
    """Remove the files under DEST's uploads/ and runs/ that the copied log does not name."""
    removed = 0
    for top in ("uploads", "runs"):
        root = dest / top
        if not root.is_dir():
            continue
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            if file.relative_to(dest).as_posix() not in wanted:
                file.unlink()
                removed += 1
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
    return removed


def _prepare(storage: Storage, dest: Path) -> Path:
    """DEST, made and resolved; refused inside the folder it copies."""
    if not storage.db_path.exists():
        raise OpsError(f"{storage.db_path}: no event log here to back up")
    dest = dest.resolve()
    root = storage.root.resolve()
    if dest == root or root in dest.parents:
        raise OpsError(f"{dest}: a backup goes outside the storage folder it copies")
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def _install_database(copy: Path, dest: Path) -> None:
    """The copied database in DEST's place, with no stale WAL of an earlier backup beside it."""
    for suffix in ("-wal", "-shm"):
        (dest / f"precheck.db{suffix}").unlink(missing_ok=True)
    os.replace(copy, dest / "precheck.db")
    for suffix in ("-wal", "-shm"):  # the copy's own, closed and checkpointed
        Path(f"{copy}{suffix}").unlink(missing_ok=True)


def _copy_files(storage: Storage, dest: Path, state: Projections, report: BackupReport) -> None:
    """The files the copied log names, those DEST lacks copied, the rest of DEST removed."""
    wanted = wanted_files(state)
    manifest_path = dest / MANIFEST
    manifest: dict[str, list[object]] = {}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for path, want in sorted(wanted.items()):
        target = dest / path
        same = manifest.get(path) == [want.size, want.sha256]
        if same and target.is_file() and target.stat().st_size == want.size:
            report.kept += 1
            continue
        source = storage.root / path
        if not source.is_file():
            report.missing.append(path)
            continue
        _copy_checked(source, target, want)
        manifest[path] = [want.size, want.sha256]
        report.copied += 1
        report.copied_bytes += want.size
    report.removed = _remove_unreferred(dest, wanted)
    manifest = {p: v for p, v in manifest.items() if p in wanted}
    part = manifest_path.with_name(MANIFEST + ".part")
    part.write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")
    os.replace(part, manifest_path)


async def _read_copy(store: EventStore, snapshot: Path) -> Projections:
    """The copied log's projections. The server's snapshot, when it fits the copy (checked by
    its chain hash), spares a full replay of a big log; the copy's later events are folded onto
    it. One that does not (newer than the copy, older code) is no news here: a replay."""
    try:
        state = await load(snapshot, store)
    except SnapshotUnusable:
        return await Projections.replay(store)
    await state.fold(store)
    return state


async def backup(config: Config, dest: Path) -> BackupReport:
    """Back the configured storage folder up into `dest` (made if needed)."""
    storage = Storage(config.server.storage_path)
    dest = await asyncio.to_thread(_prepare, storage, dest)
    report = BackupReport()
    copy = dest / "precheck.db.part"
    await asyncio.to_thread(_copy_database, storage.db_path, copy)
    store = await EventStore.open(copy)
    try:
        state = await _read_copy(store, snapshot_path(storage.db_path))
        report.position = store.head
    finally:
        await store.close()
    await asyncio.to_thread(_install_database, copy, dest)
    await asyncio.to_thread(_copy_files, storage, dest, state, report)
    return report
