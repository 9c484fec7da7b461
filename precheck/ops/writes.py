"""What the CLI does to a storage folder: reads the log directly, changes it through the server.

Reading needs no server: SQLite's WAL lets a reader beside the writer. A change goes through the
running server's API when one holds the folder (so it stays the only writer), or is appended
here under the folder's lock when none does. Either way it is the same command and events.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp

from precheck.clock import utcnow
from precheck.config import Config
from precheck.domain.commands import Command, DeleteRun, PruneRuns, decide
from precheck.events.store import EventStore, RecordedEvent
from precheck.events.types import Event, Metadata, RunDeleted
from precheck.ops.errors import OpsError
from precheck.ops.lock import ServerInfo, StorageLock, running_server
from precheck.projections import Projections
from precheck.service.command_handler import CommandHandler
from precheck.service.retention import Retention
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore

__all__ = [
    "OpsError",
    "ServerClient",
    "delete_run",
    "open_log",
    "prune_retention",
    "prune_runs",
    "read_state",
]

ADMIN_HEADER = "X-Precheck-Admin-Token"
# Connecting and each read are bounded; a long answer (a big prune) may take its time.
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)


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


def local_metadata() -> Metadata:
    """Who caused what the CLI appends itself, with no server."""
    return Metadata(actor="cli", client="local", request_id=uuid.uuid4().hex)


class ServerClient:
    """The running server's API, spoken with the admin token it left in the storage folder.

    Use it as `async with ServerClient(info) as client`. Its connections never go through a
    proxy named in the environment: the server is on this machine, at the address it wrote.
    """

    def __init__(self, info: ServerInfo) -> None:
        self.info = info
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ServerClient:
        self._session = aiohttp.ClientSession(
            trust_env=False, timeout=TIMEOUT, headers={ADMIN_HEADER: self.info.token}
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ServerClient used outside `async with`")
        return self._session

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send a request and return its JSON; a 4xx/5xx becomes `OpsError` with its message."""
        try:
            async with self.session.request(method, self.info.url + path, json=body) as r:
                text = await r.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise OpsError(f"the server at {self.info.url} does not answer: {e}") from None
        if r.status >= 400:
            try:
                message = str(json.loads(text)["message"])
            except (ValueError, KeyError, TypeError):
                message = f"{r.status} {r.reason}"
            raise OpsError(message)
        return json.loads(text or "null")

    async def stream(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """The JSON data of each message of a Server-Sent Events stream, until it ends."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
        headers = {"Accept": "text/event-stream"}
        try:
            async with self.session.get(
                self.info.url + path, headers=headers, timeout=timeout
            ) as r:
                if r.status >= 400:
                    raise OpsError(f"the server refused the event stream: {r.status} {r.reason}")
                data: list[str] = []
                async for raw in r.content:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif not line and data:
                        yield json.loads("\n".join(data))
                        data = []
        except (aiohttp.ClientError, OSError) as e:
            raise OpsError(f"lost the server's event stream: {e}") from None


async def issue_key(info: ServerInfo, name: str, role: str) -> dict[str, Any]:
    """Issue an API key through the running server; its answer holds the key, shown once."""
    async with ServerClient(info) as client:
        return dict(await client.request("POST", "/api/v1/keys", {"name": name, "role": role}))


@asynccontextmanager
async def writer(config: Config) -> AsyncIterator[ServerClient | StorageLock]:
    """The running server's client, or the folder's lock when no server runs."""
    root = config.server.storage_path
    info = running_server(root)
    if info is not None:
        async with ServerClient(info) as client:
            yield client
        return
    with StorageLock(root) as lock:
        yield lock


async def _handle_locally(config: Config, command: Command) -> list[RecordedEvent]:
    storage = Storage(config.server.storage_path)
    async with open_log(config) as store:
        logs = await OutputLineStore.open(storage.db_path)
        try:
            state = await Projections.replay(store)
            state.attach(store)
            handler = CommandHandler(store, state, storage, logs)
            return list(await handler.handle(command, local_metadata()))
        finally:
            await logs.close()


async def append_locally(config: Config, events: Sequence[Event]) -> None:
    """Append facts the CLI found itself (it must hold the folder's lock)."""
    async with open_log(config) as store:
        await store.append(list(events), local_metadata())


async def delete_run(config: Config, run_id: str, reason: str) -> None:
    """Record the deletion of an ended run, then remove its files and log."""
    async with writer(config) as w:
        if isinstance(w, ServerClient):
            query = f"remove=1&reason={quote(reason, safe='')}"
            await w.request("DELETE", f"/api/v1/prechecks/{quote(run_id, safe='')}?{query}")
            return
        await _handle_locally(config, DeleteRun(run_id, reason, utcnow()))


async def prune_runs(
    config: Config, statuses: list[str], older_than_days: float | None, dry_run: bool, reason: str
) -> list[str]:
    """Delete ended runs matching; return their ids (only list them with `dry_run`)."""
    body = {
        "status": statuses,
        "older_than_days": older_than_days,
        "dry_run": dry_run,
        "reason": reason,
    }
    async with writer(config) as w:
        if isinstance(w, ServerClient):
            return list((await w.request("POST", "/api/v1/prechecks/prune", body))["RunsDeleted"])
        now = utcnow()
        before = None
        if older_than_days is not None:
            try:
                before = now - timedelta(days=older_than_days)
            except OverflowError:  # before any date there can be: no run ended that long ago
                before = datetime.min.replace(tzinfo=now.tzinfo)
        command = PruneRuns(frozenset(statuses), before, reason, now)
        if dry_run:
            state, _ = await read_state(config)
            events: Sequence[Event] = decide(command, state).events
        else:
            events = [r.event for r in await _handle_locally(config, command)]
        return [e.run_id for e in events if isinstance(e, RunDeleted)]


async def prune_retention(config: Config, dry_run: bool) -> list[dict[str, Any]]:
    """The retention pass now: remove what `[retention]` says is due (only list it with
    `dry_run`); each removal as `{"Id", "What", "Reason", "Bytes"}`."""
    async with writer(config) as w:
        if isinstance(w, ServerClient):
            body = {"dry_run": dry_run}
            return list((await w.request("POST", "/api/v1/retention/prune", body))["Removals"])
        storage = Storage(config.server.storage_path)
        async with open_log(config) as store:
            logs = await OutputLineStore.open(storage.db_path)
            try:
                state = await Projections.replay(store)
                state.attach(store)
                retention = Retention(
                    store, state, storage, logs, utcnow, config.retention, local_metadata()
                )
                removals = await retention.prune(dry_run=dry_run)
            finally:
                await logs.close()
        return [
            {"Id": r.run_id, "What": list(r.kinds), "Reason": r.reason, "Bytes": r.bytes}
            for r in removals
        ]


async def handle_locally(config: Config, command: Command) -> list[RecordedEvent]:
    """Decide and append `command` here, with no server (the CLI must hold the folder's lock)."""
    return await _handle_locally(config, command)
