"""Reads a layout in a child process, within a memory and a time limit, never on the event loop.

The child (`inspect.py`) caps its own address space (`RLIMIT_AS`) and CPU time; this side
kills it when the wall-clock limit passes, or when the awaiting task is cancelled.

The reader parses untrusted files. When the server runs as root, the child loads the reader,
then becomes `READER_USER` (no supplementary groups) before it touches the layout, in a fresh
folder of its own outside the storage folder, handed the layout as an open file on stdin: it can
read neither `server.json` (the admin token) nor the databases, nor any other upload. Run as any
other user, the child has that user's rights (only its limits hold it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import attrs

CHILD = Path(__file__).with_name("inspect.py")
READER_USER = "nobody"  # whom the child runs as when the server runs as root
MAX_STDOUT = 32 << 20  # the child's answer is bounded by its caps; more is a fault
STDERR_TAIL = 2048


class ReadFailed(Exception):
    """The layout could not be read: not a readable layout, or past a limit. The message says."""


@attrs.frozen
class Limits:
    """What one reading may take: wall-clock seconds and address space in MB."""

    max_seconds: float = 60
    max_memory_mb: int = 4096


@attrs.frozen
class CellExtent:
    """A top cell and its bounding box in µm (left, bottom, right, top); None when empty."""

    name: str
    bbox: tuple[float, float, float, float] | None


@attrs.frozen
class LayoutFacts:
    """What a layout holds, and what reading it took (`seconds`, the child's peak `max_rss_kib`)."""

    format: str
    dbu: float
    top_cells: tuple[CellExtent, ...]
    top_cell_count: int
    layers: tuple[tuple[int, int], ...]
    cells: int
    seconds: float
    max_rss_kib: int


def child_argv(path: Path, limits: Limits, *, as_user: tuple[int, int] | None = None) -> list[str]:
    """The child's command line (`-P`: its own folder is not put on the import path); with
    `as_user`, the child gives up root for it and takes the layout on stdin."""
    return [
        sys.executable,
        "-P",
        str(CHILD),
        "--max-memory-mb",
        str(limits.max_memory_mb),
        "--max-seconds",
        str(limits.max_seconds),
        *(["--as-user", f"{as_user[0]}:{as_user[1]}", "--from-stdin"] if as_user else []),
        str(path),
    ]


def reader_identity() -> tuple[int, int] | None:
    """The uid and gid the child runs as: `READER_USER`'s when the server runs as root."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(READER_USER)
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid


def _own_folder(uid: int, gid: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="precheck-reading-"))
    os.chown(folder, uid, gid)
    return folder


async def read_layout(path: Path, limits: Limits) -> LayoutFacts:
    """The facts of the layout at `path`, or `ReadFailed`."""
    identity = reader_identity()
    if identity is None:
        return await _read(child_argv(path, limits), path, limits)
    folder = await asyncio.to_thread(_own_folder, *identity)
    try:
        with path.open("rb") as layout:
            argv = child_argv(Path(path.name), limits, as_user=identity)
            return await _read(argv, path, limits, layout, folder)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)  # the copy, even of a killed child


async def _read(
    argv: list[str],
    path: Path,
    limits: Limits,
    stdin: IO[bytes] | None = None,
    folder: Path | None = None,
) -> LayoutFacts:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # a signal to the server's group does not reach it
        cwd=folder,
    )
    try:
        out, err = await asyncio.wait_for(_output(proc), limits.max_seconds)
        await proc.wait()
    except TimeoutError:
        raise ReadFailed(
            f"reading the layout took longer than {limits.max_seconds:g} s"
            " (preflight.max_seconds): it was stopped"
        ) from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
    return _facts(out, _unplaced(err, path), proc.returncode, limits, path)


async def _output(proc: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    assert proc.stdout is not None and proc.stderr is not None

    async def stdout() -> bytes:
        data = bytearray()
        while chunk := await proc.stdout.read(1 << 16):  # type: ignore[union-attr]
            data += chunk
            if len(data) > MAX_STDOUT:
                raise ReadFailed("the layout reader answered more than it may")
        return bytes(data)

    async def stderr_tail() -> bytes:
        tail = bytearray()
        while chunk := await proc.stderr.read(1 << 16):  # type: ignore[union-attr]
            tail += chunk
            del tail[:-STDERR_TAIL]
        return bytes(tail)

    out, err = await asyncio.gather(stdout(), stderr_tail())
    return out, err


def _unplaced(text: bytes, path: Path) -> bytes:
    """`text` naming the layout by its file name only: where the server keeps it is not for
    the users who read the reader's messages."""
    for where in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
        text = text.replace(where.encode(), path.name.encode())
    return text


def _facts(out: bytes, err: bytes, code: int | None, limits: Limits, path: Path) -> LayoutFacts:
    lines = _unplaced(out, path).decode("utf-8", "replace").strip().splitlines()
    try:
        answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if not answer:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        if code is not None and code < 0:
            why = f"the layout reader was stopped by signal {-code}"
            if code in (-9, -24):  # SIGKILL, SIGXCPU: the CPU-time cap
                why += " (past preflight.max_seconds of CPU time)"
        else:
            why = f"the layout reader failed (exit code {code}): {last[0][:500]}"
        if "MemoryError" in last[0] or "bad_alloc" in last[0]:
            why = _memory(limits)
        raise ReadFailed(why)
    if not answer.get("ok"):
        if answer.get("error") == "memory":
            raise ReadFailed(_memory(limits))
        raise ReadFailed(f"not a readable layout: {answer.get('detail') or 'unknown error'}")
    return LayoutFacts(
        format=str(answer["format"]),
        dbu=float(answer["dbu"]),
        top_cells=tuple(
            CellExtent(str(c["name"]), None if c["bbox"] is None else _box(c["bbox"]))
            for c in answer["top_cells"]
        ),
        top_cell_count=int(answer["top_cell_count"]),
        layers=tuple((int(a), int(b)) for a, b in answer["layers"]),
        cells=int(answer["cells"]),
        seconds=float(answer["seconds"]),
        max_rss_kib=int(answer["max_rss_kib"]),
    )


def _box(v: list[float]) -> tuple[float, float, float, float]:
    left, bottom, right, top = (float(x) for x in v)
    return left, bottom, right, top


def _memory(limits: Limits) -> str:
    return (
        f"reading the layout needs more memory than preflight.max_memory_mb"
        f" ({limits.max_memory_mb} MB) allows"
    )
