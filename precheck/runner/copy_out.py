"""Copying a finished run's outputs out of its container into `runs/<id>/`, streamed."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from precheck.domain.run_end import CopiedOut
from precheck.events.types import OutputFile
from precheck.projections.runs import RunRecord
from precheck.runner.container_spec import OUTPUT_DIR, WORKDIR, output_name
from precheck.runner.engine import Engine
from precheck.runner.tar_stream import Extracted, extract_tar
from precheck.storage.files import Storage

log = logging.getLogger(__name__)

MAX_KEPT_FILE = 256 << 20  # intermediate layouts in step folders are not worth keeping
RUN_FOLDER = "run"  # runs/<id>/run/ holds the precheck's own run folder (reports/, final/, ...)
OUTPUT_FOLDER = "output"


def _safe_relative(name: str) -> PurePosixPath | None:
    parts = PurePosixPath(name).parts
    if not parts or any(p in ("..", "") or p.startswith("/") for p in parts):
        return None
    return PurePosixPath(*parts)


async def copy_out(
    engine: Engine, storage: Storage, run: RunRecord, container_id: str
) -> CopiedOut:
    """Copy the output layout and the run folder (minus bulky intermediates) out."""
    run_dir = storage.run_dir(run.id)
    files: list[OutputFile] = []
    completed: set[str] = set()

    def keep_run_file(name: str, size: int) -> Path | None:
        rel = _safe_relative(name)
        if rel is None or len(rel.parts) < 2:
            return None
        inner = PurePosixPath(*rel.parts[1:])  # drop the <tag>/ the archive starts with
        if inner.name == "state_out.json" and len(inner.parts) == 2:
            completed.add(f"runs/{run.id}/{inner.parts[0]}")
        if inner.parts[:2] == ("final", "gds") or size > MAX_KEPT_FILE:
            return None  # the final layout is the output, copied on its own
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
    for x in run_files:
        if x.path is not None and x.sha256 is not None:
            rel = x.path.relative_to(run_dir).as_posix()
            files.append(OutputFile(rel, x.size, x.sha256))
    output = None
    for x in out_files:
        if x.path is not None and x.sha256 is not None:
            output = OutputFile(f"{OUTPUT_FOLDER}/{name}", x.size, x.sha256)

    metrics = _metrics(run_dir / RUN_FOLDER / "final" / "metrics.json")
    return CopiedOut(output, tuple(files), frozenset(completed), metrics)


def _metrics(path: Path) -> dict[str, float | int | str | None]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if v is None or isinstance(v, int | float | str)}
