"""Copying a finished run's outputs out of its container into `runs/<id>/`, streamed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import attrs

from precheck.domain.run_end import CopiedOut
from precheck.events.types import OutputFile, SkippedFile
from precheck.projections.runs import RunRecord
from precheck.runner.container_spec import OUTPUT_DIR, WORKDIR, output_name
from precheck.runner.engine import Engine
from precheck.runner.tar_stream import Extracted, extract_tar
from precheck.storage.files import Storage

log = logging.getLogger(__name__)

MAX_KEPT_FILE = 256 << 20  # intermediate layouts in step folders are not worth keeping
MAX_SKIPPED_LISTED = 100  # files not copied out named in the event; the rest are counted
RUN_FOLDER = "run"  # runs/<id>/run/ holds the precheck's own run folder (reports/, final/, ...)
OUTPUT_FOLDER = "output"


def _safe_relative(name: str) -> PurePosixPath | None:
    parts = PurePosixPath(name).parts
    if not parts or any(p in ("..", "") or p.startswith("/") for p in parts):
        return None
    return PurePosixPath(*parts)


def _utf8_name(path: PurePosixPath) -> PurePosixPath:
    """`path` with each byte that is not UTF-8 written as `\\xNN`: the name it is stored and
    listed under, since the event log holds UTF-8 text only. UTF-8 names are unchanged."""
    text = path.as_posix()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # the tar reader kept the raw bytes as surrogates
        raw = text.encode("utf-8", "surrogateescape")
        return PurePosixPath(raw.decode("utf-8", "backslashreplace"))
    return path


class CopyOutFailed(Exception):
    """A file the copy-out keeps could not be stored; the finish fails and is tried again."""


@attrs.frozen
class Caps:
    """How much of a run folder is copied out: files and bytes (`docker.max_output_files`,
    `docker.max_output_mib`); the output layout itself is always copied."""

    files: int = 10000
    bytes: int = 10 << 30


async def copy_out(
    engine: Engine, storage: Storage, run: RunRecord, container_id: str, caps: Caps = Caps()
) -> CopiedOut:
    """Copy the output layout and the run folder (minus bulky intermediates) out; what the
    caps leave out is listed with why. Raises `CopyOutFailed`, leaving nothing in the run's
    folder, when a file it keeps cannot be stored."""
    run_dir = storage.run_dir(run.id)
    files: list[OutputFile] = []
    skipped: list[SkippedFile] = []
    completed: set[str] = set()
    skipped_more = [0]  # files past MAX_SKIPPED_LISTED, counted only
    taken = [0, 0]  # files, bytes

    def keep_run_file(name: str, size: int) -> Path | None:
        rel = _safe_relative(name)
        if rel is None or len(rel.parts) < 2:
            return None
        inner = _utf8_name(PurePosixPath(*rel.parts[1:]))  # drop the <tag>/ it starts with
        if inner.name == "state_out.json" and len(inner.parts) == 2:
            completed.add(f"runs/{run.id}/{inner.parts[0]}")
        if inner.parts[:2] == ("final", "gds"):
            return None  # the final layout is the output, copied on its own
        why = None
        if size > MAX_KEPT_FILE:
            why = f"larger than {MAX_KEPT_FILE >> 20} MiB (an intermediate layout)"
        elif taken[0] >= caps.files:
            why = f"over docker.max_output_files ({caps.files})"
        elif taken[1] + size > caps.bytes:
            why = f"over docker.max_output_mib ({caps.bytes >> 20})"
        if why is not None:
            if len(skipped) < MAX_SKIPPED_LISTED:
                skipped.append(SkippedFile(inner.as_posix(), size, why))
            else:
                skipped_more[0] += 1
            return None
        taken[0] += 1
        taken[1] += size
        return run_dir / RUN_FOLDER / inner

    name = output_name(run)
    target = run_dir / OUTPUT_FOLDER / name

    async def copy(path: str, keep: Callable[[str, int], Path | None]) -> list[Extracted]:
        tar = await engine.get_archive(container_id, path)
        return [] if tar is None else await extract_tar(tar, keep)

    # Both copies at once: most of each is Docker preparing the archive of a stopped container.
    run_files, out_files = await asyncio.gather(
        copy(f"{WORKDIR}/runs/{run.id}", keep_run_file),
        copy(f"{OUTPUT_DIR}/{name}", lambda n, _: target if n == name else None),
    )
    failed = [x for x in run_files + out_files if x.error is not None]
    if failed:
        # A kept file that cannot be stored (a full disk) fails the finish, which is tried
        # again: a run is never final without its files. Nothing of this try is left behind.
        await asyncio.to_thread(_remove_tree, run_dir)
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise CopyOutFailed(f"could not store {first.name!r}: {first.error}{more}")
    output = None
    for x in run_files + out_files:
        if x.path is not None and x.sha256 is not None:
            rel = x.path.relative_to(run_dir).as_posix()
            if x.path == target:
                output = OutputFile(rel, x.size, x.sha256)
            else:
                files.append(OutputFile(rel, x.size, x.sha256))
    # The folders' entries are on disk too before the event that names the files.
    await asyncio.to_thread(_fsync_folders, run_dir)
    metrics = _metrics(run_dir / RUN_FOLDER / "final" / "metrics.json")
    return CopiedOut(
        output, tuple(files), frozenset(completed), metrics, tuple(skipped), skipped_more[0]
    )


def _remove_tree(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def _fsync_folders(root: Path) -> None:
    if not root.is_dir():
        return
    folders = [root.parent, root] + [Path(d) / n for d, names, _ in os.walk(root) for n in names]
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _metrics(path: Path) -> dict[str, float | int | str | None]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if v is None or isinstance(v, int | float | str)}
