"""Tar archives written and read as streams, never whole in memory.

Docker's archive API speaks tar both ways; layouts can be GBs, so files go through in blocks and
disk reads and writes run in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import tarfile
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import attrs

BLOCK = 512
CHUNK = 1 << 20


@attrs.frozen
class Entry:
    """One member to write: a file from disk, or a directory when `source` is None."""

    name: str
    source: Path | None = None
    mode: int = 0o644


def _header(name: str, size: int, kind: bytes, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.mtime = size, kind, mode, int(time.time())
    return info.tobuf(format=tarfile.PAX_FORMAT)


async def write_tar(entries: list[Entry]) -> AsyncIterator[bytes]:
    """The tar stream of `entries`, read from disk block by block."""
    loop = asyncio.get_running_loop()
    for e in entries:
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


class _Reader:
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self._eof = False

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n and not self._eof:
            try:
                self._buf += await anext(self._chunks)
            except StopAsyncIteration:
                self._eof = True

    async def exactly(self, n: int) -> bytes:
        await self._fill(n)
        if len(self._buf) < n:
            raise tarfile.ReadError("tar stream ended early")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def pieces(self, n: int) -> AsyncIterator[bytes]:
        while n > 0:
            if not self._buf:
                await self._fill(1)
                if not self._buf:
                    raise tarfile.ReadError("tar stream ended early")
            take = min(n, len(self._buf), CHUNK)
            piece = bytes(self._buf[:take])
            del self._buf[:take]
            n -= take
            yield piece


async def extract_tar(
    chunks: AsyncIterator[bytes], keep: Callable[[str, int], Path | None]
) -> list[Extracted]:
    """Read a tar stream; write each regular file that `keep(name, size)` gives a path for.

    Every regular file is listed, kept or not; kept files are hashed as they are written and
    appear at their path only once complete. Links and devices are ignored: a member can never
    write outside the paths `keep` returns.
    """
    try:
        return await _extract(chunks, keep)
    finally:
        # The archive ends at its zero blocks, before the stream does: close the stream now so
        # its connection goes back at once, not when the generator is collected.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _extract(
    chunks: AsyncIterator[bytes], keep: Callable[[str, int], Path | None]
) -> list[Extracted]:
    loop = asyncio.get_running_loop()
    reader = _Reader(chunks)
    found: list[Extracted] = []
    small: list[tuple[int, Path, bytes]] = []
    small_bytes = 0
    long_name: str | None = None
    pax_size: int | None = None  # a pax header's `size`, which overrides the next header's
    while True:
        block = await reader.exactly(BLOCK)
        if block == b"\0" * BLOCK:
            await _flush_small(loop, small, found)
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
            await _skip(reader, padded)
            found.append(Extracted(name, size, None, None))
            continue
        if size <= SMALL:  # whole in memory; written with others in one thread hop
            data = await reader.exactly(padded)
            small.append((len(found), target, data[:size]))
            small_bytes += size
            found.append(Extracted(name, size, target, None))
            if small_bytes > SMALL_BATCH:
                await _flush_small(loop, small, found)
                small_bytes = 0
            continue
        found.append(await _write_member(loop, reader, name, size, target))
        await _skip(reader, padded - size)
    return found


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


SMALL = 256 << 10
MAX_NAME_HEADER = 1 << 20  # a pax or long-name header's size; real ones hold a few paths
SMALL_BATCH = 8 << 20


async def _flush_small(
    loop: asyncio.AbstractEventLoop, small: list[tuple[int, Path, bytes]], found: list[Extracted]
) -> None:
    if not small:
        return
    batch = list(small)
    small.clear()
    hashes = await loop.run_in_executor(None, _write_small, batch)
    for (i, _, _), h in zip(batch, hashes, strict=True):
        if isinstance(h, OSError):
            found[i] = attrs.evolve(found[i], path=None, error=_why(h))
        else:
            found[i] = attrs.evolve(found[i], sha256=h)


async def _write_member(
    loop: asyncio.AbstractEventLoop, reader: _Reader, name: str, size: int, target: Path
) -> Extracted:
    """Stream one member's data into `target` (through a hidden temporary file in its folder,
    fsynced before it takes the name). A member that cannot be stored (a name the file system
    refuses, a full disk) is read past and reported with its error."""
    digest = hashlib.sha256()
    f: BinaryIO | None = None
    error: str | None = None
    part = target.parent / _part_name()
    try:
        await loop.run_in_executor(None, _open_part, part)
        f = await loop.run_in_executor(None, part.open, "wb")
    except OSError as e:
        error = _why(e)
    try:
        async for piece in reader.pieces(size):
            if f is None:
                continue  # read past what cannot be stored
            try:
                await loop.run_in_executor(None, _write, f, digest, piece)
            except OSError as e:
                error = _why(e)
                await loop.run_in_executor(None, _discard, f, part)
                f = None
        if f is not None:
            done, f = f, None
            try:
                await loop.run_in_executor(None, _finish, done, part, target)
            except OSError as e:
                error = _why(e)
                part.unlink(missing_ok=True)
    except BaseException:
        if f is not None:
            await loop.run_in_executor(None, _discard, f, part)
        raise
    if error is not None:
        return Extracted(name, size, None, None, error)
    return Extracted(name, size, target, digest.hexdigest())


def _part_name() -> str:
    # Short, whatever the target's name: a 255-byte name plus a suffix would be refused.
    return f".{secrets.token_hex(8)}.part"


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _open_part(part: Path) -> None:
    part.parent.mkdir(parents=True, exist_ok=True)


def _finish(f: BinaryIO, part: Path, target: Path) -> None:
    with f:
        f.flush()
        os.fsync(f.fileno())  # the data is on disk before the event that names it
    os.replace(part, target)


def _discard(f: BinaryIO, part: Path) -> None:
    f.close()
    part.unlink(missing_ok=True)


def _write_small(batch: list[tuple[int, Path, bytes]]) -> list[str | OSError]:
    out: list[str | OSError] = []
    for _, target, data in batch:
        part = target.parent / _part_name()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with part.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, target)
        except OSError as e:
            part.unlink(missing_ok=True)
            out.append(e)
            continue
        out.append(hashlib.sha256(data).hexdigest())
    return out


def _write(f: BinaryIO, digest: hashlib._Hash, data: bytes) -> None:
    f.write(data)
    digest.update(data)


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
