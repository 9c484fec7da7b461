"""Tar archives written and read as streams, never whole in memory.

Docker's archive API speaks tar both ways; layouts can be GBs, so files go through in blocks and
disk reads and writes run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import os
import secrets
import tarfile
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import attrs

BLOCK = 512
CHUNK = 1 << 20


@attrs.frozen
class Entry:
    """One member to write: a file from disk, a symbolic link to `link`, or else a directory
    (when `source` and `link` are None)."""

    name: str
    source: Path | None = None
    mode: int = 0o644
    link: str | None = None


def _header(name: str, size: int, kind: bytes, mode: int, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.mtime = size, kind, mode, int(time.time())
    info.linkname = link
    return info.tobuf(format=tarfile.PAX_FORMAT)


async def write_tar(entries: list[Entry]) -> AsyncIterator[bytes]:
    """The tar stream of `entries`, read from disk block by block."""
    loop = asyncio.get_running_loop()
    for e in entries:
        if e.link is not None:
            yield _header(e.name, 0, tarfile.SYMTYPE, 0o777, e.link)
            continue
        if e.source is None:
            yield _header(e.name.rstrip("/") + "/", 0, tarfile.DIRTYPE, 0o755)
            continue
        f = await loop.run_in_executor(None, e.source.open, "rb")
        try:
            size = os.fstat(f.fileno()).st_size
            yield _header(e.name, size, tarfile.REGTYPE, e.mode)
            sent = 0
            while sent < size:
                chunk = await loop.run_in_executor(None, f.read, min(CHUNK, size - sent))
                if not chunk:
                    raise OSError(f"{e.source} shrank while being archived")
                sent += len(chunk)
                yield chunk
        finally:
            f.close()
        if size % BLOCK:
            yield b"\0" * (BLOCK - size % BLOCK)
    yield b"\0" * (BLOCK * 2)


async def gzip_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks` gzip-compressed, as a stream."""
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    async for chunk in chunks:
        out = z.compress(chunk)
        if out:
            yield out
    yield z.flush()


def tree_entries(root: Path, prefix: str) -> list[Entry]:
    """Every folder and file under `root`, named under `prefix/`, in a stable order."""
    entries = [Entry(prefix)]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        base = f"{prefix}/{rel}" if str(rel) != "." else prefix
        entries += [Entry(f"{base}/{d}") for d in dirnames]
        entries += [Entry(f"{base}/{n}", Path(dirpath) / n) for n in sorted(filenames)]
    return entries


@attrs.frozen
class Extracted:
    """A regular file found in a tar stream: its member name and, if kept, where and its hash."""

    name: str
    size: int
    path: Path | None
    sha256: str | None
    error: str | None = None  # why a kept file could not be stored (then `path` is None)
    cut_here: bool = False  # `stop` ended the reading at this member


class _Reader:
    """The archive's bytes as they arrive; file data is handed on as views of the chunks it
    came in, never copied."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._chunk = memoryview(b"")  # the unread rest of the current chunk
        self._eof = False

    async def _next(self) -> bool:
        while not self._eof:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._eof = True
                break
            if chunk:
                self._chunk = memoryview(chunk)
                return True
        return False

    async def exactly(self, n: int) -> bytes:
        if len(self._chunk) >= n:
            out = self._chunk[:n].tobytes()
            self._chunk = self._chunk[n:]
            return out
        parts: list[memoryview] = []
        async for piece in self.pieces(n):
            parts.append(piece)
        return b"".join(parts)

    async def pieces(self, n: int) -> AsyncIterator[memoryview]:
        while n > 0:
            if not self._chunk and not await self._next():
                raise tarfile.ReadError("tar stream ended early")
            piece = self._chunk[:n]
            self._chunk = self._chunk[len(piece) :]
            n -= len(piece)
            yield piece


async def extract_tar(
    chunks: AsyncIterator[bytes],
    keep: Callable[[str, int], Path | None],
    staged: Staged | None = None,
    stop: Callable[[str, int], bool] | None = None,
) -> list[Extracted]:
    """Read a tar stream; write each regular file that `keep(name, size)` gives a path for.

    Every regular file is listed, kept or not; kept files are hashed as they are written,
    appear at their path only once complete, and are on disk when this returns. With
    `staged`, they are only written (hidden) and the caller places them all at once with
    `staged.place()`, one flush for many files. A member not kept for which
    `stop(name, size)` is true ends the reading there (its entry marked `cut_here`): reading
    past a big file costs more than asking again for what follows it. Links and devices are
    ignored: a member can never write outside the paths `keep` returns.
    """
    own = staged is None
    staged = Staged() if staged is None else staged
    try:
        found = await _extract(chunks, keep, staged, stop)
    except BaseException:
        if own:
            await asyncio.get_running_loop().run_in_executor(None, staged.discard)
        raise
    finally:
        # The archive ends at its zero blocks, before the stream does: close the stream now so
        # its connection goes back at once, not when the generator is collected.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    if own:
        placed = await staged.place()
        found = [
            attrs.evolve(x, path=None, sha256=None, error=placed[x.path])
            if x.path is not None and x.path in placed
            else x
            for x in found
        ]
    return found


class Staged:
    """Kept files written in full under hidden temporary names beside their targets, not yet
    synced nor named: `place` gives them their names and makes them all durable at once."""

    def __init__(self) -> None:
        self.parts: list[tuple[Path, Path]] = []  # (temporary file, target)

    def add(self, part: Path, target: Path) -> None:
        self.parts.append((part, target))

    async def place(self, then: Callable[[], list[Path]] | None = None) -> dict[Path, str]:
        """Give each file its target's name, then make them durable, names and data, in one
        flush; the targets that could not be placed, with why (none of them is left behind).
        `then`, when all were renamed, writes files made from them (it returns their paths):
        synced with them, in the same flush. Blocking work runs in a thread.

        One flush is as safe as a flush before the renames and one after: until the flush
        returns, no event names these files, and a crash before it means the copy-out is done
        again, each file replaced whole by its new copy."""
        return await asyncio.get_running_loop().run_in_executor(None, self._place, then)

    def _place(self, then: Callable[[], list[Path]] | None = None) -> dict[Path, str]:
        parts, self.parts = self.parts, []
        failed: dict[Path, str] = {}
        for part, target in parts:
            try:
                os.replace(part, target)
            except OSError as e:
                part.unlink(missing_ok=True)
                failed[target] = _why(e)
        placed = [target for _, target in parts if target not in failed]
        made = then() if then is not None and not failed else []
        if not placed and not made:
            return failed
        try:
            # Data and names on disk before the event that lists them.
            _sync_folders({p.parent for p in placed + made}, placed + made)
        except OSError as e:
            for target in placed:
                target.unlink(missing_ok=True)
                failed[target] = _why(e)
        return failed

    def discard(self) -> None:
        parts, self.parts = self.parts, []
        for part, _ in parts:
            part.unlink(missing_ok=True)


def _syncfs(path: Path) -> bool:
    """Flush the whole file system `path` is on, in one call (Linux): cheaper than syncing
    many files one by one, each its own journal commit. False where it is not available."""
    if _LIBC is None or not hasattr(_LIBC, "syncfs"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if _LIBC.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
    return True


def _sync(files: list[Path]) -> None:
    if _syncfs(files[0].parent):
        return
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sync_folders(folders: set[Path], files: list[Path] | None = None) -> None:
    if _syncfs(next(iter(folders))):
        return
    if files:
        _sync(files)
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


async def _extract(
    chunks: AsyncIterator[bytes],
    keep: Callable[[str, int], Path | None],
    staged: Staged,
    stop: Callable[[str, int], bool] | None,
) -> list[Extracted]:
    loop = asyncio.get_running_loop()
    found: list[Extracted] = []
    small = _SmallFiles(loop, found, staged)
    try:
        await _members(_Reader(chunks), keep, staged, stop, found, small)
        await small.finish()
    except BaseException:
        await small.abandon()  # what is written under way is staged: the caller discards it
        raise
    return found


async def _members(
    reader: _Reader,
    keep: Callable[[str, int], Path | None],
    staged: Staged,
    stop: Callable[[str, int], bool] | None,
    found: list[Extracted],
    small: _SmallFiles,
) -> None:
    """Read the archive's members to its end, listing each regular file in `found` and
    writing those kept (the small ones through `small`)."""
    loop = asyncio.get_running_loop()
    long_name: str | None = None
    pax_size: int | None = None  # a pax header's `size`, which overrides the next header's
    while True:
        block = await reader.exactly(BLOCK)
        if block == b"\0" * BLOCK:
            break
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
            if info.size > MAX_NAME_HEADER:  # read whole into memory: refuse absurd sizes
                raise tarfile.ReadError(f"tar header of {info.size} bytes is too large")
            data = await reader.exactly(_padded(info.size))
            name_found, size_found = _extended(info.type, data[: info.size])
            long_name = name_found or long_name
            pax_size = size_found if size_found is not None else pax_size
            continue
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise tarfile.ReadError(f"sparse member {info.name!r}: not supported")
        name, long_name = (long_name or info.name), None
        # Files of 8 GiB or more have a size of 0 in their header and the real one in pax.
        size, pax_size = (info.size if pax_size is None else pax_size), None
        padded = _padded(size)
        if not info.isreg():
            await _skip(reader, padded)
            continue
        target = keep(name, size)
        if target is None:
            if stop is not None and stop(name, size):
                found.append(Extracted(name, size, None, None, cut_here=True))
                break
            await _skip(reader, padded)
            found.append(Extracted(name, size, None, None))
            continue
        if size <= SMALL:  # whole in memory; written with others in one thread hop
            data = await reader.exactly(padded)
            found.append(Extracted(name, size, target, None))
            await small.add(len(found) - 1, target, data[:size])
            continue
        found.append(await _write_member(loop, reader, name, size, target, staged))
        await _skip(reader, padded - size)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


SMALL = 256 << 10
MAX_NAME_HEADER = 1 << 20  # a pax or long-name header's size; real ones hold a few paths
SMALL_BATCH = 8 << 20  # bytes of small files written in one thread hop, at most
SMALL_FILES = 16  # ... and files: a run folder's hundred are written in a few hops at once
SMALL_HOPS = 2  # hops under way at once, while the archive is read on
WRITE_BATCH = 8 << 20  # a big member's data handed to the writer thread in pieces this big


_Written = list[tuple[Path, str] | OSError]  # per file: its hidden file and sha256, or why not


class _SmallFiles:
    """Small kept members, written in batches in threads while the archive is read on: a run
    folder is a hundred small files or more, and creating them is most of what a small
    copy-out does after the engine. Each batch's files are staged once it is written."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, found: list[Extracted], staged: Staged
    ) -> None:
        self.loop = loop
        self.found = found
        self.staged = staged
        self.batch: list[tuple[int, Path, bytes]] = []  # (index in `found`, target, data)
        self.bytes = 0
        self.hops: deque[tuple[list[tuple[int, Path, bytes]], asyncio.Future[_Written]]] = deque()

    async def add(self, index: int, target: Path, data: bytes) -> None:
        """Write `data` to a hidden file beside `target`, for the file `found[index]`."""
        self.batch.append((index, target, data))
        self.bytes += len(data)
        if len(self.batch) >= SMALL_FILES or self.bytes > SMALL_BATCH:
            self._send()
            while len(self.hops) > SMALL_HOPS:
                await self._settle_oldest()

    async def finish(self) -> None:
        """Write what is left and wait for every batch."""
        self._send()
        while self.hops:
            await self._settle_oldest()

    async def abandon(self) -> None:
        """Wait for the batches under way and stage what they wrote (for the caller to
        discard): a thread's files are never left behind unknown."""
        while self.hops:
            batch, hop = self.hops.popleft()
            try:
                written = await asyncio.shield(hop)
            except Exception:
                continue  # it wrote nothing it kept (`_write_small` removes what failed)
            self._stage(batch, written)

    def _send(self) -> None:
        if self.batch:
            batch, self.batch, self.bytes = self.batch, [], 0
            self.hops.append((batch, self.loop.run_in_executor(None, _write_small, batch)))

    async def _settle_oldest(self) -> None:
        batch, hop = self.hops[0]
        try:
            written = await asyncio.shield(hop)  # cancelled, the batch stays for `abandon`
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.hops.popleft()
            raise
        self.hops.popleft()
        self._stage(batch, written)

    def _stage(self, batch: list[tuple[int, Path, bytes]], written: _Written) -> None:
        found = self.found
        for (i, target, _), w in zip(batch, written, strict=True):
            if isinstance(w, OSError):
                found[i] = attrs.evolve(found[i], path=None, error=_why(w))
            else:
                part, digest = w
                self.staged.add(part, target)
                found[i] = attrs.evolve(found[i], sha256=digest)


async def _write_member(
    loop: asyncio.AbstractEventLoop,
    reader: _Reader,
    name: str,
    size: int,
    target: Path,
    staged: Staged,
) -> Extracted:
    """Stream one member's data into a hidden temporary file beside `target`, hashed on the
    way, in a thread that writes one batch while the next is read; staged once complete. A
    member that cannot be stored (a name the file system refuses, a full disk) is read past
    and reported with its error."""
    digest = hashlib.sha256()
    f: BinaryIO | None = None
    error: str | None = None
    part = target.parent / _part_name()
    pending: asyncio.Future[None] | None = None
    batch: list[memoryview] = []
    held = 0
    try:
        f = await loop.run_in_executor(None, _open_part, part)
    except OSError as e:
        error = _why(e)

    async def written() -> None:
        """Wait for the batch being written; on failure stop writing and drop the file."""
        nonlocal pending, f, error
        if pending is None:
            return
        done, pending = pending, None
        try:
            await done
        except OSError as e:
            error = _why(e)
            if f is not None:
                await loop.run_in_executor(None, _discard, f, part)
                f = None

    try:
        async for piece in reader.pieces(size):
            if f is None:
                continue  # read past what cannot be stored
            batch.append(piece)
            held += len(piece)
            if held >= WRITE_BATCH:
                await written()
                if f is not None:
                    pending = loop.run_in_executor(None, _write_parts, f, digest, batch)
                batch, held = [], 0
        await written()
        if f is not None:
            done, f = f, None
            try:
                await loop.run_in_executor(None, _close, done, digest, batch)
            except OSError as e:
                error = _why(e)
                part.unlink(missing_ok=True)
    except BaseException:
        if pending is not None:
            with contextlib.suppress(OSError):
                await asyncio.shield(pending)
        if f is not None:
            await loop.run_in_executor(None, _discard, f, part)
        raise
    if error is not None:
        return Extracted(name, size, None, None, error)
    staged.add(part, target)
    return Extracted(name, size, target, digest.hexdigest())


def _part_name() -> str:
    # Short, whatever the target's name: a 255-byte name plus a suffix would be refused.
    return f".{secrets.token_hex(8)}.part"


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _open_part(part: Path) -> BinaryIO:
    part.parent.mkdir(parents=True, exist_ok=True)
    return part.open("wb")


def _write_parts(f: BinaryIO, digest: hashlib._Hash, batch: list[memoryview]) -> None:
    # hashlib lets go of the GIL for big buffers: the event loop reads on meanwhile.
    for piece in batch:
        digest.update(piece)
    f.writelines(batch)


def _close(f: BinaryIO, digest: hashlib._Hash, batch: list[memoryview]) -> None:
    try:
        _write_parts(f, digest, batch)
        f.flush()
    finally:
        f.close()


def _discard(f: BinaryIO, part: Path) -> None:
    with contextlib.suppress(OSError):
        f.close()  # what is thrown away may fail to flush (a full disk)
    part.unlink(missing_ok=True)


def _write_small(batch: list[tuple[int, Path, bytes]]) -> _Written:
    # A run folder is a hundred small files or more: each takes the fewest system calls
    # (its folder made once per batch, no buffered file object).
    out: _Written = []
    made: set[Path] = set()
    for _, target, data in batch:
        part = target.parent / _part_name()
        try:
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError as e:
            part.unlink(missing_ok=True)
            out.append(e)
            continue
        out.append((part, hashlib.sha256(data).hexdigest()))
    return out


async def _skip(reader: _Reader, n: int) -> None:
    async for _ in reader.pieces(n):
        pass


def _extended(kind: bytes, data: bytes) -> tuple[str | None, int | None]:
    """The name and size an extended header gives the next member (None: it gives none)."""
    if kind == tarfile.GNUTYPE_LONGNAME:
        return data.rstrip(b"\0").decode("utf-8", "surrogateescape"), None
    # A pax header: records "<len> key=value\n".
    name: str | None = None
    size: int | None = None
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        digits = data[pos:space] if space > pos else b""
        length = int(digits) if digits.isdigit() else 0
        # Each record is longer than its length field and ends inside the header: a record
        # that does not would make this loop stand still or run off the end.
        if length <= space - pos + 1 or pos + length > len(data):
            raise tarfile.ReadError("bad record in a pax header")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            name = value.decode("utf-8", "surrogateescape")
        elif key == b"size":
            if not value.isdigit() or len(value) > 20:
                raise tarfile.ReadError(f"bad size {value[:40]!r} in a pax header")
            size = int(value)
        elif key.startswith(b"GNU.sparse."):
            # Its data is a map of holes, not the file: refuse rather than store it as one.
            raise tarfile.ReadError("sparse member in a pax header: not supported")
        pos += length
    return name, size
