"""Files under `storage_path`: the database, uploads, run outputs, and partial writes.

Layout: `precheck.db`, `uploads/<id>/<file>`, `runs/<id>/...`, `tmp/` (partial files, removed
at start), `orphans/<uploads|runs>/<id>` (folders the log never knew, moved aside at start, never
deleted). A file is written to `tmp/` and renamed into place only when complete, so a reader
never sees half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path

import attrs

from precheck.errors import NoRoom, NotALayout, TooLarge

log = logging.getLogger(__name__)

GDS_MAGIC = b"\x00\x06\x00\x02"  # a HEADER record: length 6, type 0x00, data type 0x02
GZIP_MAGIC = b"\x1f\x8b"
OASIS_MAGIC = b"%SEMI-OASIS\r\n"
SUFFIX = {"gds": ".gds", "gds.gz": ".gds.gz", "oas": ".oas"}
_BLOCK = 1 << 20
_HEAD = 512  # enough to see a gzip stream's first decompressed bytes


class StorageRefused(Exception):
    """The server will not start on the storage folder as it is; the message says why and the
    way out."""


@attrs.frozen
class Settled:
    """What starting found in `uploads/` or `runs/` beyond the log's live entities: folders
    removed (the log retired them) and folders moved aside (the log never knew them)."""

    removed: tuple[str, ...] = ()
    moved: tuple[Path, ...] = ()


@attrs.frozen
class ReceivedFile:
    """A complete file in `tmp/`, not yet moved into place."""

    path: Path
    size: int
    sha256: str
    format: str


def sniff(head: bytes) -> str | None:
    """The layout format of a file starting with `head`, or None if it is none of ours."""
    if head.startswith(GDS_MAGIC):
        return "gds"
    if head.startswith(OASIS_MAGIC):
        return "oas"
    if head.startswith(GZIP_MAGIC):
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 64)
        except zlib.error:
            return None
        return "gds.gz" if inner.startswith(GDS_MAGIC) else None
    return None


class Storage:
    """Paths and file operations under the storage root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db_path = root / "precheck.db"
        self.uploads = root / "uploads"
        self.runs = root / "runs"
        self.tmp = root / "tmp"
        self.orphans = root / "orphans"

    def prepare(self) -> None:
        """Create the folders (the storage folder readable by its owner only) and drop partial
        files a crash left in `tmp/`. Refuses (`StorageRefused`) when the log is missing but
        uploads or runs are there: a new log would know none of them."""
        self.refuse_without_log(not self.db_path.exists())
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        for d in (self.uploads, self.runs, self.tmp):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            _remove(leftover)

    def upload_file(self, upload_id: str, filename: str) -> Path:
        """Where an upload's layout is kept."""
        return self.uploads / upload_id / filename

    def run_dir(self, run_id: str) -> Path:
        """Where a run's outputs are kept."""
        return self.runs / run_id

    def free_bytes(self) -> int:
        """Free space on the storage folder's file system, in bytes."""
        return shutil.disk_usage(self.root).free

    def check_room(self, needed: int, keep_free: int) -> None:
        """Refuse (`NoRoom`) storing `needed` more bytes when it would leave less than
        `keep_free` free."""
        free = self.free_bytes()
        if free - needed < keep_free:
            raise NoRoom(
                f"the server's storage has {free >> 20} MB free and keeps {keep_free >> 20} MB"
                f" free (server.min_free_mb): {needed >> 20} MB more do not fit; try later"
            )

    def temp_path(self, suffix: str = ".part") -> Path:
        """A fresh name in `tmp/`."""
        return self.tmp / f"{uuid.uuid4().hex}{suffix}"

    async def receive(
        self, chunks: AsyncIterator[bytes], max_bytes: int, keep_free: int = 0
    ) -> ReceivedFile:
        """Write a layout stream to `tmp/` with its sha256; nothing is left behind on error.

        Raises `TooLarge` past `max_bytes`, `NotALayout` when the first bytes are not a
        layout and `NoRoom` once the disk would keep less than `keep_free` bytes free (looked
        at before each block is written). Disk writes and hashing run in a thread so the
        event loop keeps serving.
        """
        path = self.temp_path()
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        size, fmt = 0, None
        head = bytearray()
        pending: asyncio.Future[None] | None = None
        # Chunks are gathered by reference and handed to the writer thread as a list: copying
        # them into one buffer cost the event loop more than the hashing and writing did.
        parts: list[bytes] = []
        held = 0
        f = await loop.run_in_executor(None, path.open, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"upload exceeds the limit of {max_bytes // (1 << 20)} MB")
                if fmt is None:
                    head += chunk[: _HEAD - len(head)]
                    if len(head) >= _HEAD:
                        fmt = sniff(bytes(head)) or _not_a_layout()
                parts.append(chunk)
                held += len(chunk)
                if held >= _BLOCK:
                    if pending is not None:
                        await pending
                    if keep_free:
                        self.check_room(held, keep_free)
                    pending = loop.run_in_executor(None, _write_parts, f, digest, parts)
                    parts, held = [], 0
            if pending is not None:
                await pending
            if fmt is None:
                fmt = sniff(bytes(head)) or _not_a_layout()
            await loop.run_in_executor(None, _finish, f, digest, parts)
        except BaseException:
            # The partial file goes whatever happens; failing to write or close what is thrown
            # away (a full disk) must neither keep it nor hide why the upload failed.
            try:
                if pending is not None and not pending.done():
                    with contextlib.suppress(OSError):
                        await asyncio.shield(pending)
                with contextlib.suppress(OSError):
                    await loop.run_in_executor(None, f.close)
            finally:
                path.unlink(missing_ok=True)
            raise
        return ReceivedFile(path, size, digest.hexdigest(), fmt)

    def place_upload(self, received: ReceivedFile, upload_id: str, filename: str) -> Path:
        """Move a received file to its upload folder (same filesystem: an atomic rename)."""
        target = self.upload_file(upload_id, filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(received.path, target)
        return target

    def remove_upload(self, upload_id: str) -> None:
        """Delete an upload's folder (after the event that retired it)."""
        _remove(self.uploads / upload_id)

    def link_run(self, source_id: str, run_id: str, expected: Collection[str] = ()) -> None:
        """Make `runs/<run_id>/` a copy of `runs/<source_id>/` made of hard links: no byte is
        copied, and removing the source later leaves it whole. Built in `tmp/` and renamed
        into place complete, holding every path of `expected` (relative to the folder): a
        failure (`OSError`) leaves no folder behind."""
        staging = self.temp_path(".links")
        try:
            _link_tree(self.run_dir(source_id), staging)
            missing = [p for p in expected if not (staging / p).is_file()]
            if missing:
                raise FileNotFoundError(f"{source_id}/{missing[0]} is not in its run folder")
            os.rename(staging, self.run_dir(run_id))
        except BaseException:
            _remove(staging)
            raise

    def remove_run(self, run_id: str) -> None:
        """Delete a run's folder (after the event that retired it)."""
        _remove(self.runs / run_id)

    def remove_run_files(self, run_id: str, chosen: Callable[[str], bool]) -> tuple[int, int]:
        """Delete the files of a run's folder whose path under it (`output/x.gds`) is `chosen`,
        and the folders left empty; return how many files and bytes went (0 for files already
        gone). The folder itself stays. Blocking."""
        root = self.run_dir(run_id)
        files = freed = 0
        if not root.is_dir():
            return 0, 0
        for path in sorted(root.rglob("*"), reverse=True):  # contents before their folders
            rel = path.relative_to(root).as_posix()
            try:
                if path.is_dir() and not path.is_symlink():
                    if not any(path.iterdir()):
                        path.rmdir()
                elif chosen(rel):
                    size = path.lstat().st_size
                    path.unlink()
                    files, freed = files + 1, freed + size
            except FileNotFoundError:
                pass
        return files, freed

    def refuse_without_log(self, log_empty: bool) -> None:
        """Raise `StorageRefused` when the log is missing or empty (`log_empty`) while
        `uploads/` or `runs/` hold folders: starting would strand or lose them."""
        held = [f"{d.name}/ has {n}" for d in (self.uploads, self.runs) if (n := _count(d))]
        if not log_empty or not held:
            return
        raise StorageRefused(
            f"{self.root}: the event log {self.db_path.name} is missing or empty, but there are"
            f" folders a log recorded ({', '.join(held)}); nothing was changed. Put the log back"
            f" (restore {self.db_path.name} from a backup of this folder), or, to start afresh,"
            f" move {self.uploads.name}/ and {self.runs.name}/ out of the folder."
        )

    def unowned(self, kind: str, live: Collection[str]) -> list[str]:
        """The folders of `uploads/` or `runs/` (`kind`) no `live` entity owns, by name."""
        return sorted(d.name for d in (self.root / kind).iterdir() if d.name not in live)

    def settle(self, kind: str, live: Collection[str], retired: Callable[[str], bool]) -> Settled:
        """Settle the folders of `uploads/` or `runs/` (`kind`) no `live` entity owns: one the
        log retired (`retired(id)`: a crash came between the event and the removal) is
        removed; one the log never knew is moved to `orphans/<kind>/`, not ours to delete."""
        removed: list[str] = []
        moved: list[Path] = []
        for name in self.unowned(kind, live):
            d = self.root / kind / name
            if retired(name):
                _remove(d)
                removed.append(d.name)
            else:
                moved.append(_move_aside(d, self.orphans / kind))
        return Settled(tuple(removed), tuple(moved))


def _count(folder: Path) -> int:
    return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0


def _move_aside(path: Path, into: Path) -> Path:
    """Move `path` into the folder `into` under its own name (numbered if it is taken)."""
    into.mkdir(mode=0o700, parents=True, exist_ok=True)
    target, n = into / path.name, 1
    while target.exists():
        target, n = into / f"{path.name}.{n}", n + 1
    os.replace(path, target)  # same file system: a rename, nothing copied or lost
    return target


def _not_a_layout() -> str:
    raise NotALayout("the file is not a layout: expected GDSII, gzip-compressed GDSII or OASIS")


def _write_parts(f: object, digest: hashlib._Hash, parts: list[bytes]) -> None:
    for data in parts:
        digest.update(data)
    f.writelines(parts)  # type: ignore[attr-defined]


def _finish(f: object, digest: hashlib._Hash, parts: list[bytes]) -> None:
    _write_parts(f, digest, parts)
    f.flush()  # type: ignore[attr-defined]
    os.fsync(f.fileno())  # type: ignore[attr-defined]
    f.close()  # type: ignore[attr-defined]


def _link_tree(source: Path | str, target: Path | str) -> None:
    """`target`, a new folder tree like `source`'s whose files are hard links of its files
    (no byte is read or written). Any entry that cannot be listed or linked (one removed
    meanwhile) raises."""
    os.mkdir(target, 0o700)
    with os.scandir(source) as entries:
        for e in entries:
            inside = os.path.join(target, e.name)
            if e.is_dir(follow_symlinks=False):
                _link_tree(e.path, inside)
            else:
                os.link(e.path, inside, follow_symlinks=False)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
