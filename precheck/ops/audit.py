"""Auditing a storage folder: print the log, follow it, and prove it is intact and consistent."""

from __future__ import annotations

import json
import sqlite3
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import attrs

from precheck.clock import utcnow
from precheck.config import Config
from precheck.events.filters import event_filter
from precheck.events.store import EventStore
from precheck.ops.lock import running_server
from precheck.ops.writes import ServerClient, open_log, read_state
from precheck.projections import Projections
from precheck.projections.snapshot import SnapshotUnusable, differences, load, snapshot_path
from precheck.storage.files import Storage
from precheck.web.render import event_document, run_document, upload_document

TRIGGERS = ("events_are_never_updated", "events_are_never_deleted")


def _line(doc: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(doc, separators=(",", ":"))
    data = doc["data"]
    subject = data.get("run_id") or data.get("upload_id") or data.get("container_id") or ""
    meta = doc["metadata"]
    who = meta["actor"] + (f"@{meta['client']}" if meta.get("client") else "")
    return f"{doc['position']:>8}  {doc['time']}  {doc['type']:<30} {subject:<32}  {who}"


async def print_events(
    config: Config,
    after: int,
    stream: str | None,
    types: list[str],
    run: str | None,
    follow: bool,
    as_json: bool,
) -> int:
    """Print matching events after `after`; with `follow`, go on live through the server."""
    keep = event_filter(stream, types, run)  # an unknown type: `Invalid`, shown as it is
    position = after
    async with open_log(config) as store:
        async for r in store.read_all(after=after):
            position = r.position
            if keep(r):
                print(_line(event_document(r), as_json), flush=True)
    if not follow:
        return 0
    server = running_server(config.server.storage_path)
    if server is None:
        print(
            "no server is running on this storage: nothing more will be appended", file=sys.stderr
        )
        return 0
    query = [("follow", "1"), ("lastEventId", str(position))]
    query += [("stream", stream)] if stream else []
    query += [("run", run)] if run else []
    query += [("type", t) for t in types]
    async with ServerClient(server) as client:
        async for doc in client.stream("/api/v1/events?" + urllib.parse.urlencode(query)):
            print(_line(doc, as_json), flush=True)
    return 0


@attrs.define
class VerifyReport:
    """What `verify` checked (`lines`), and the first problem if any."""

    lines: list[str] = attrs.Factory(list)
    problem: str = ""
    first_bad: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problem

    def fail(self, problem: str, position: int | None = None) -> VerifyReport:
        self.problem, self.first_bad = problem, position
        self.lines.append(f"FAILED: {problem}")
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.lines,
            "problem": self.problem or None,
            "first_bad_position": self.first_bad,
        }


async def verify(config: Config, anchor: tuple[int, str] | None = None) -> VerifyReport:
    """Hash chain intact, append-only triggers in place, the `anchor` (position, hash) still in
    the log, the snapshot (if a start would use it) equal to a replay at its position, and a
    replay equal to the live state."""
    report = VerifyReport()
    # Looked at before opening the log: opening it creates missing triggers again.
    db_path = Storage(config.server.storage_path).db_path
    missing = _missing_triggers(db_path) if db_path.exists() else []
    async with open_log(config) as store:
        chain = await store.verify_chain()
        if chain.first_bad is not None:
            return report.fail(
                f"{chain.reason} (first bad position {chain.first_bad})", chain.first_bad
            )
        report.lines.append(
            f"hash chain: {chain.checked} events, positions 1..{chain.checked} with no gap,"
            " every hash matches"
        )
        if missing:
            return report.fail(
                f"append-only triggers missing: {', '.join(missing)} (the log may have been edited)"
            )
        report.lines.append("append-only triggers: present")
        head = store.head
        if anchor is not None:
            position, want = anchor
            found = await store.read(position - 1, 1) if 0 < position <= head else []
            if not found or found[0].hash != want:
                have = found[0].hash if found else "nothing"
                return report.fail(
                    f"anchor {position}:{want} is not in the log (it holds {have} there):"
                    " the log was cut or rewritten after it",
                    position,
                )
            report.lines.append(f"anchor: position {position} holds hash {want}")
        # One replay serves both checks: up to the snapshot's position, then to the head.
        state = Projections()
        try:
            problem = await _check_snapshot(store, db_path, report, state)
            if problem:
                return report.fail(problem)
            await state.catch_up(store)
        except Exception as e:  # an event that no longer decodes or applies
            return report.fail(f"replay failed: {type(e).__name__}: {e}")
    report.lines.append(
        f"replay: {head} events decode and apply: {len(state.uploads.by_id)} uploads,"
        f" {len(state.runs.by_id)} runs"
    )
    server = running_server(config.server.storage_path)
    if server is None:
        report.lines.append("no server running: the replayed state is what a server loads at start")
        return report
    async with ServerClient(server) as client:
        mismatch = await _compare_with_server(client, config)
    if mismatch:
        return report.fail(f"the running server's state differs from a replay: {mismatch}")
    report.lines.append(
        f"running server at {server.url}: its runs and uploads equal a replay of the log"
    )
    return report


async def _check_snapshot(
    store: EventStore, db_path: Path, report: VerifyReport, replayed: Projections
) -> str:
    """Report the snapshot; a problem (empty: none) when one a start would use differs from a
    replay at its position (`replayed`, empty, is left there). One a start ignores (damaged,
    older code) is only reported."""
    path = snapshot_path(db_path)
    if not path.exists():
        report.lines.append("snapshot: none (a start replays the whole log)")
        return ""
    try:
        loaded = await load(path, store)
    except SnapshotUnusable as e:
        report.lines.append(f"snapshot: ignored at start ({e}); the next start replays the log")
        return ""
    async for r in store.read_all(page=min(5000, max(loaded.position, 1))):
        if r.position > loaded.position:
            break
        replayed.apply(r)
    found = differences(loaded, replayed)
    if found:
        return f"the snapshot at position {loaded.position} differs from a replay: {found}"
    report.lines.append(
        f"snapshot: position {loaded.position} equals a full replay of the log up to there"
        f" ({len(loaded.uploads.by_id)} uploads, {len(loaded.runs.by_id)} runs)"
    )
    return ""


def _missing_triggers(path: Any) -> list[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        present = {
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
    return [t for t in TRIGGERS if t not in present]


async def _compare_with_server(client: ServerClient, config: Config) -> str:
    """Compare the server's documents with ones rendered from a replay at the same position."""
    for _ in range(10):
        before = (await client.request("GET", "/health"))["storage"]["events"]
        runs = await client.request("GET", "/api/v1/prechecks")
        uploads = await client.request("GET", "/api/v1/uploads")
        if (await client.request("GET", "/health"))["storage"]["events"] != before:
            continue  # the log moved while reading: try again
        state, _ = await read_state(config, until=before)
        return _difference(state, config, runs, uploads)
    return "the log kept changing; try again when the server is quieter"


def _difference(state: Projections, config: Config, runs: list[Any], uploads: list[Any]) -> str:
    local_runs = {r.id: run_document(r, state, config) for r in state.runs.by_id.values()}
    served_runs = {d["Id"]: d for d in runs}
    if local_runs.keys() != served_runs.keys():
        extra = sorted(local_runs.keys() ^ served_runs.keys())
        return f"run {extra[0]} is in one and not the other"
    for run_id, doc in local_runs.items():
        # `Estimate` is of the instant the server answered, not of the log.
        served = {k: v for k, v in served_runs[run_id].items() if k != "Estimate"}
        doc = {k: v for k, v in doc.items() if k != "Estimate"}
        if doc != served:
            field = next(k for k in doc if doc[k] != served.get(k))
            return f"run {run_id} differs in {field}"
    now = utcnow()
    image = config.docker.image
    local_uploads = {
        u.id: upload_document(u, now, state, image) for u in state.uploads.by_id.values()
    }
    served_uploads = {d["Id"]: d for d in uploads}
    if local_uploads.keys() != served_uploads.keys():
        return "the uploads differ"
    for upload_id, doc in local_uploads.items():
        # `State` depends on the clock of whoever renders it; the rest is the log's.
        if {k: v for k, v in doc.items() if k != "State"} != {
            k: v for k, v in served_uploads[upload_id].items() if k != "State"
        }:
            return f"upload {upload_id} differs"
    return ""
