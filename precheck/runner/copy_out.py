"""Copying a finished run's outputs out of its container into `runs/<id>/`, streamed."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import attrs

from precheck.domain.run_end import CopiedOut
from precheck.events.types import FindingsCount, OutputFile, SkippedFile
from precheck.projections.runs import RunRecord
from precheck.runner.container_spec import OUTPUT_DIR, OUTPUT_STORE, RUNS_DIR, output_name
from precheck.runner.engine import Engine
from precheck.runner.tar_stream import Extracted, Staged, extract_tar
from precheck.storage.files import Storage

log = logging.getLogger(__name__)

MAX_KEPT_FILE = 256 << 20  # intermediate layouts in step folders are not worth keeping
MAX_SKIPPED_LISTED = 100  # files not copied out named in the event; the rest are counted
RUN_FOLDER = "run"  # runs/<id>/run/ holds the precheck's own run folder (reports/, final/, ...)
OUTPUT_FOLDER = "output"
OUTPUT_STORE_NAME = PurePosixPath(OUTPUT_STORE).name
# A file not kept bigger than this is not read past: asking anew for what follows costs less.
SKIP_READ = 8 << 20


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


# Reads a run's kept reports and writes what it found beside them, not yet synced (blocking):
# (run folder, kept files) -> (the counts for the event, the files it wrote).
FindingsWriter = Callable[
    [Path, tuple[OutputFile, ...]], tuple[tuple[FindingsCount, ...], list[Path]]
]


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
    """Copy the output layout and the run folder (minus bulky intermediates) out, at once."""
    return await CopyOut(engine, storage, run, container_id, caps).finish()


class CopyOut:
    """One run's copy-out of its stopped container, begun as soon as it is made (while the
    run's exit is still being recorded) and then finished, or abandoned when there is nothing
    to keep after all (the run is retried, cancelled or deleted).

    The output layout and the run folder are read in one archive of the runs folder (`/output`
    links there; a container of the layout from before that is read in two). Files are written
    hidden and given their names only by `finish`: an abandoned copy leaves nothing."""

    def __init__(
        self, engine: Engine, storage: Storage, run: RunRecord, container_id: str, caps: Caps
    ) -> None:
        self.engine = engine
        self.run = run
        self.container_id = container_id
        self.caps = caps
        self.run_dir = storage.run_dir(run.id)
        self.name = output_name(run)
        self.target = self.run_dir / OUTPUT_FOLDER / self.name
        self.skipped: list[SkippedFile] = []
        self.skipped_more = 0  # files past MAX_SKIPPED_LISTED, counted only
        self.completed: set[str] = set()
        self.taken = [0, 0]  # files, bytes
        self.staged = Staged()
        self._fetch = asyncio.ensure_future(self._read())

    async def _read(self) -> list[Extracted]:
        found = await _copy_folder(
            self.engine, self.container_id, RUNS_DIR, self._keep, self.staged
        )
        if not any(x.path == self.target for x in found):
            # No output in the runs folder: a container made before `/output` linked there
            # (or a run that wrote none, for which this finds none either).
            tar = await self.engine.get_archive(self.container_id, f"{OUTPUT_DIR}/{self.name}")
            if tar is not None:
                keep = lambda n, _: self.target if n == self.name else None  # noqa: E731
                found += await extract_tar(tar, keep, self.staged)
        return found

    def _keep(self, name: str, size: int) -> Path | None:
        """Where a file of the runs folder's archive (`runs/...`) goes, or None: not kept."""
        rel = _safe_relative(name)
        if rel is None or len(rel.parts) < 3:
            return None
        if rel.parts[1] == OUTPUT_STORE_NAME:
            return self.target if rel.parts[2:] == (self.name,) else None
        if rel.parts[1] != self.run.id:
            return None  # not this run's folder
        inner = _utf8_name(PurePosixPath(*rel.parts[2:]))
        if inner.name == "state_out.json" and len(inner.parts) == 2:
            self.completed.add(f"runs/{self.run.id}/{inner.parts[0]}")
        if inner.parts[:2] == ("final", "gds"):
            return None  # the final layout is the output, copied on its own
        why = None
        if size > MAX_KEPT_FILE:
            why = f"larger than {MAX_KEPT_FILE >> 20} MiB (an intermediate layout)"
        elif self.taken[0] >= self.caps.files:
            why = f"over docker.max_output_files ({self.caps.files})"
        elif self.taken[1] + size > self.caps.bytes:
            why = f"over docker.max_output_mib ({self.caps.bytes >> 20})"
        if why is not None:
            if len(self.skipped) < MAX_SKIPPED_LISTED:
                self.skipped.append(SkippedFile(inner.as_posix(), size, why))
            else:
                self.skipped_more += 1
            return None
        self.taken[0] += 1
        self.taken[1] += size
        return self.run_dir / RUN_FOLDER / inner

    async def abandon(self) -> None:
        """Stop reading and drop what was written."""
        self._fetch.cancel()
        await asyncio.gather(self._fetch, return_exceptions=True)
        await asyncio.shield(asyncio.to_thread(self.staged.discard))

    async def finish(self, write_findings: FindingsWriter | None = None) -> CopiedOut:
        """The files, in the run's folder under their names, and what `write_findings` read
        from them (the file it wrote is synced with them, in the same flush). Raises
        `CopyOutFailed`, leaving nothing in the run's folder, when a file it keeps cannot be
        stored."""
        findings: tuple[FindingsCount, ...] = ()

        def write_found() -> list[Path]:
            nonlocal findings
            if write_findings is None:
                return []
            findings, written = write_findings(self.run_dir, files)
            return written

        try:
            found = await self._fetch
            failed = [x for x in found if x.error is not None]
            output, files = self._listed(found)
            placed = {} if failed else await self.staged.place(write_found)
        except BaseException:
            await self.abandon()
            raise
        failed += [
            attrs.evolve(x, path=None, error=placed[x.path])
            for x in found
            if x.path is not None and x.path in placed
        ]
        if failed:
            # A kept file that cannot be stored (a full disk) fails the finish, which is tried
            # again: a run is never final without its files. Nothing of this try is left behind.
            await asyncio.to_thread(self.staged.discard)
            await asyncio.to_thread(_remove_tree, self.run_dir)
            first = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise CopyOutFailed(f"could not store {first.name!r}: {first.error}{more}")
        metrics = _metrics(self.run_dir / RUN_FOLDER / "final" / "metrics.json")
        return CopiedOut(
            output=output,
            files=files,
            completed_folders=frozenset(self.completed),
            metrics=metrics,
            skipped=tuple(self.skipped),
            skipped_more=self.skipped_more,
            findings=findings,
        )

    def _listed(self, found: list[Extracted]) -> tuple[OutputFile | None, tuple[OutputFile, ...]]:
        """The output layout and the other files kept, as the event lists them."""
        output = None
        files: list[OutputFile] = []
        for x in found:
            if x.path is not None and x.sha256 is not None:
                rel = x.path.relative_to(self.run_dir).as_posix()
                if x.path == self.target:
                    output = OutputFile(rel, x.size, x.sha256)
                else:
                    files.append(OutputFile(rel, x.size, x.sha256))
        return output, tuple(files)


def _remove_tree(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


async def _copy_folder(
    engine: Engine,
    container_id: str,
    folder: str,
    keep: Callable[[str, int], Path | None],
    staged: Staged,
) -> list[Extracted]:
    """The regular files of `folder`'s tree, named as its archive names them (under its base
    name), kept as `keep` says. One archive read, unless it comes to a big file not kept: then
    that read stops there, and what it has not given yet is asked for by its own paths (the
    container's list of changed paths tells them), so such files are never read."""
    parent = PurePosixPath(folder).parent
    done: set[str] = set()  # names of the regular files read, in any of the archives
    found: list[Extracted] = []
    listing: set[str] | None = None

    def stop(name: str, size: int) -> bool:
        return size > SKIP_READ

    async def read(path: PurePosixPath, cut: bool) -> bool:
        """Read the archive of `path`; True when it stopped at a big file not kept."""
        tar = await engine.get_archive(container_id, str(path))
        if tar is None:
            return False
        base = path.parent.relative_to(parent)
        full = (lambda n: n) if base == PurePosixPath(".") else (lambda n: f"{base}/{n}")

        def keep_new(n: str, size: int) -> Path | None:
            return None if full(n) in done else keep(full(n), size)

        def stop_new(n: str, size: int) -> bool:
            return cut and full(n) not in done and stop(n, size)

        stopped = False
        for x in await extract_tar(tar, keep_new, staged, stop_new):
            name = full(x.name)
            if name not in done:
                done.add(name)
                found.append(attrs.evolve(x, name=name))
            stopped |= x.cut_here
        return stopped

    todo: list[tuple[PurePosixPath, bool]] = [(PurePosixPath(folder), True)]
    while todo:
        path, cut = todo.pop(0)
        if not await read(path, cut):
            continue
        if listing is None:
            paths = await engine.changed_paths(container_id)
            listing = _under(paths or [], parent, PurePosixPath(folder))
        rest = _unread(listing, done, str(path.relative_to(parent)))
        if rest is None:  # names the list cannot tell apart: read past, as one archive
            todo.insert(0, (path, False))
        else:
            todo[:0] = [(parent / r, True) for r in rest]
    return found


def _under(paths: list[str], parent: PurePosixPath, folder: PurePosixPath) -> set[str]:
    """The changed paths in `folder`'s tree, relative to `parent`."""
    top = str(folder)
    return {
        str(PurePosixPath(p).relative_to(parent))
        for p in paths
        if p == top or p.startswith(top + "/")
    }


def _unread(listing: set[str], done: set[str], root: str) -> list[str] | None:
    """The fewest paths under `root` whose archives hold every listed path not read yet and
    nothing read already, in the order an archive gives them; None when a name in the list
    is not one the archives give (not UTF-8), or the list misses a file read."""
    if any("\ufffd" in p for p in listing):
        return None
    if any(p not in listing for p in done if p.startswith(root + "/")):
        return None  # the list misses a file read: it cannot tell what is left
    children: dict[str, set[str]] = {}
    for p in listing | done:
        while p != root and "/" in p:
            up = p.rsplit("/", 1)[0]
            children.setdefault(up, set()).add(p)
            p = up
    touched = {root}
    for p in done:
        while p not in touched and p != root:
            touched.add(p)
            p = p.rsplit("/", 1)[0]

    def cover(node: str) -> list[str]:
        if node not in touched:
            return [node]
        if node in done:
            return []
        return [x for c in sorted(children.get(node, ())) for x in cover(c)]

    return cover(root)


def _metrics(path: Path) -> dict[str, float | int | str | None]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if v is None or isinstance(v, int | float | str)}
