"""A run's findings: its kept reports read at copy-out, stored in `runs/<id>/findings.json`.

Which reports are read: every KLayout report database (`.lyrdb`) in a step folder's
`reports/`, and Magic's `.rpt` only where no `.lyrdb` is beside it (Magic writes both, with the
same markers). A run-level `reports/` (older images) is read only when no step folder holds a
report, since such images wrote each report in both places. Reading is synchronous and may take
long (`findings.SECONDS` per report, `TOTAL_SECONDS` in all): callers run it in a thread.
A report that cannot be read is recorded with why; nothing here fails a run's end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from precheck.domain.flow import report_path
from precheck.events.codec import to_jsonable
from precheck.events.types import FindingsCount, OutputFile
from precheck.runner.copy_out import RUN_FOLDER
from precheck.runner.findings import SECONDS, ReportFindings, read_report

log = logging.getLogger(__name__)

FINDINGS_FILE = "findings.json"  # in runs/<id>/, beside the copied run folder
TOTAL_SECONDS = 300.0  # reading all of a run's reports stops after this
READ = (".lyrdb", ".rpt")


def reports_to_read(files: Iterable[OutputFile]) -> list[tuple[OutputFile, str, str | None]]:
    """The kept files read for findings, each with its served path and step, in path order."""
    prefix = f"{RUN_FOLDER}/"
    found: list[tuple[OutputFile, str, str | None, bool]] = []
    for f in files:
        inner = f.path[len(prefix) :] if f.path.startswith(prefix) else None
        served = report_path(inner) if inner is not None else None
        if served is None or PurePosixPath(f.path).suffix not in READ:
            continue
        found.append((f, served[0], served[1], inner is not None and inner.startswith("reports/")))
    if any(not run_level for *_, run_level in found):
        found = [x for x in found if not x[3]]
    databases = {PurePosixPath(f.path).parent for f, *_ in found if f.path.endswith(".lyrdb")}
    return sorted(
        (
            (f, path, step)
            for f, path, step, _ in found
            if not (f.path.endswith(".rpt") and PurePosixPath(f.path).parent in databases)
        ),
        key=lambda x: x[1],
    )


def read_findings(run_dir: Path, files: Iterable[OutputFile]) -> list[ReportFindings]:
    """The findings of each report to read; blocking (run it in a thread)."""
    deadline = time.monotonic() + TOTAL_SECONDS
    found = []
    for f, path, step in reports_to_read(files):
        left = deadline - time.monotonic()
        if left <= 0:
            found.append(
                ReportFindings(path, step, (), cut_short=True, error="not read: no time left")
            )
            continue
        try:
            read = read_report(run_dir / f.path, path, step, min(SECONDS, left))
        except Exception as e:  # a report is the container's: any failure is its, not the run's
            found.append(ReportFindings(path, step, (), error=f"{type(e).__name__}: {e}"[:500]))
            continue
        if read is not None:
            found.append(read)
    return found


def counts(found: Iterable[ReportFindings]) -> tuple[FindingsCount, ...]:
    """What the event records of each report read."""
    return tuple(
        FindingsCount(r.path, r.step, r.total, len(r.rules), r.cut_short, r.error) for r in found
    )


def store_findings(run_dir: Path, files: Iterable[OutputFile]) -> tuple[FindingsCount, ...]:
    """Read the run's reports and write `findings.json` whole, synced; the counts for the
    event. Nothing to read: no file. Blocking."""
    found, written = write_findings(run_dir, files)
    try:
        for path in written:
            for p in (path, path.parent):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    except OSError as e:
        log.warning("findings of %s not stored: %s", run_dir.name, e)
        return ()
    return found


def write_findings(
    run_dir: Path, files: Iterable[OutputFile]
) -> tuple[tuple[FindingsCount, ...], list[Path]]:
    """Read the run's reports and write `findings.json` whole (a temporary file renamed), not
    yet synced: the counts for the event, and the file written (none when there was nothing to
    read). Blocking. A file that cannot be written (a full disk) is logged and the run ends
    without findings."""
    found = read_findings(run_dir, files)
    if not found:
        return (), []
    target = run_dir / FINDINGS_FILE
    temp = run_dir / f".{FINDINGS_FILE}.part"
    try:
        with temp.open("w", encoding="utf-8") as out:
            json.dump({"reports": to_jsonable(found)}, out, ensure_ascii=False)
        temp.replace(target)
    except OSError as e:
        log.warning("findings of %s not stored: %s", run_dir.name, e)
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        return (), []
    return counts(found), [target]


def load_findings(run_dir: Path) -> list[dict[str, Any]]:
    """The stored findings, per report, as `store_findings` wrote them; none without a file.
    Blocking."""
    try:
        with (run_dir / FINDINGS_FILE).open(encoding="utf-8") as f:
            reports: list[dict[str, Any]] = json.load(f)["reports"]
    except FileNotFoundError:
        return []
    return reports
