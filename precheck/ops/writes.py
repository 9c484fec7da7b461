"""What the CLI does to a storage folder: reads the log directly, changes it through the server.

Reading needs no server: SQLite's WAL lets a reader beside the writer. A change goes through the
running server's API when one holds the folder (so it stays the only writer), or is appended
here under the folder's lock when none does. Either way it is the same command and events.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from precheck.clock import utcnow
from precheck.config import Config
from precheck.domain.commands import Command, DeleteRun, PruneRuns, decide
from precheck.errors import PrecheckError
from precheck.events.store import EventStore
from precheck.events.types import Metadata, RunDeleted
from precheck.ops.lock import ServerInfo, StorageBusy, StorageLock, running_server
from precheck.projections import Projections
from precheck.service.command_handler import CommandHandler
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore


class OpsError(Exception):
    """The operation failed; the message is for the operator."""


@asynccontextmanager
async def open_log(config: Config) -> AsyncIterator[EventStore]:
    """The storage folder's event log, for reading (and, under the lock, for appending)."""
    storage = Storage(config.server.storage_path)
    if not storage.db_path.exists():
        raise OpsError(f"{storage.db_path}: no event log here (has a server ever run on it?)")
    store = await EventStore.open(storage.db_path)
    try:
        yield store
    finally:
        await store.close()


async def read_state(config: Config, until: int | None = None) -> tuple[Projections, int]:
    """Projections replayed from the log (up to position `until`), and the log's head."""
    async with open_log(config) as store:
        state = Projections()
        async for r in store.read_all():
            if until is not None and r.position > until:
                break
            state.apply(r)
        return state, store.head


class ServerClient:
    """The running server's API, spoken with the admin token it left in the storage folder."""

    def __init__(self, info: ServerInfo) -> None:
        self.info = info

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send a request and return its JSON; a 4xx/5xx becomes `OpsError` with its message."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.info.url + path,
            data=data,
            method=method,
            headers={"X-Precheck-Admin-Token": self.info.token, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["message"]
            except (ValueError, KeyError, TypeError):
                message = f"{e.code} {e.reason}"
            raise OpsError(message) from None
        except (urllib.error.URLError, OSError) as e:
            raise OpsError(f"the server at {self.info.url} does not answer: {e}") from None


@contextmanager
def writer(config: Config) -> Iterator[ServerClient | StorageLock]:
    """The running server's client, or the folder's lock when no server runs."""
    root = config.server.storage_path
    try:
        info = running_server(root)
        if info is not None:
            yield ServerClient(info)
            return
        with StorageLock(root) as lock:
            yield lock
    except StorageBusy as e:
        raise OpsError(str(e)) from None


async def _handle_locally(config: Config, command: Command) -> list[RunDeleted]:
    storage = Storage(config.server.storage_path)
    async with open_log(config) as store:
        logs = await OutputLineStore.open(storage.db_path)
        try:
            state = await Projections.replay(store)
            state.attach(store)
            handler = CommandHandler(store, state, storage, logs)
            meta = Metadata(actor="cli", client="local", request_id=uuid.uuid4().hex)
            try:
                recorded = await handler.handle(command, meta)
            except PrecheckError as e:
                raise OpsError(str(e)) from None
        finally:
            await logs.close()
    return [r.event for r in recorded if isinstance(r.event, RunDeleted)]


def delete_run(config: Config, run_id: str, reason: str) -> None:
    """Record the deletion of an ended run, then remove its files and log."""
    with writer(config) as w:
        if isinstance(w, ServerClient):
            w.request("DELETE", f"/api/v1/prechecks/{run_id}?remove=1&reason={_q(reason)}")
            return
        asyncio.run(_handle_locally(config, DeleteRun(run_id, reason, utcnow())))


def prune_runs(
    config: Config, statuses: list[str], older_than_days: float | None, dry_run: bool, reason: str
) -> list[str]:
    """Delete ended runs matching; return their ids (only list them with `dry_run`)."""
    body = {
        "status": statuses,
        "older_than_days": older_than_days,
        "dry_run": dry_run,
        "reason": reason,
    }
    with writer(config) as w:
        if isinstance(w, ServerClient):
            return list(w.request("POST", "/api/v1/prechecks/prune", body)["RunsDeleted"])
        now = utcnow()
        from datetime import datetime, timedelta

        before = None
        if older_than_days is not None:
            try:
                before = now - timedelta(days=older_than_days)
            except OverflowError:  # before any date there can be: no run ended that long ago
                before = datetime.min.replace(tzinfo=now.tzinfo)
        command = PruneRuns(frozenset(statuses), before, reason, now)
        if dry_run:
            state, _ = asyncio.run(read_state(config))
            try:
                events = decide(command, state).events
            except PrecheckError as e:
                raise OpsError(str(e)) from None
            return [e.run_id for e in events if isinstance(e, RunDeleted)]
        return [e.run_id for e in asyncio.run(_handle_locally(config, command))]


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
