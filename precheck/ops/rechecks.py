"""`recheck --scan`: resolve the configured image on each engine and plan the re-checks owed.

The same steps serve the running server (`web/rechecks.py`, with its engines) and the CLI
when no server runs (with clients of the configured engines and a replay of the log, under the
folder's lock). An engine whose pull policy is `always` pulls first: that is how a new digest
of the same name reaches it; any other looks at what it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from precheck.clock import utcnow
from precheck.config import Config
from precheck.domain.commands import PlanRechecks
from precheck.domain.recheck import newest_ref
from precheck.events.store import RecordedEvent
from precheck.events.types import RecheckPlanned, RunQueued
from precheck.ops.errors import OpsError
from precheck.ops.writes import ServerClient, handle_locally, read_state, writer
from precheck.runner.engine import Engine, EngineError, engine_for


@attrs.frozen
class EngineImage:
    """What one engine has under the configured name: its ref, or why none was found."""

    engine: str
    ref: str = ""
    error: str = ""


async def resolve(image: str, engines: Sequence[tuple[str, str, Engine]]) -> list[EngineImage]:
    """The configured image's ref (repo digest, else id) on each `(name, pull, client)`."""
    found = []
    for name, pull, engine in engines:
        try:
            if pull == "always":
                await engine.pull(image)
            ref = await engine.image_ref(image)
        except EngineError as e:
            found.append(EngineImage(name, error=f"Docker: {e.message}"))
            continue
        if ref is None:
            found.append(EngineImage(name, error=f"the engine has no image {image}"))
        else:
            found.append(EngineImage(name, ref=ref.pinned))
    return found


def scan_document(
    image: str, ref: str, engines: Sequence[EngineImage], recorded: Sequence[RecordedEvent]
) -> dict[str, Any]:
    """The answer of a scan: each engine's image, the ref planned for, what was queued."""
    queued = {
        r.event.recheck_of: r.event.run_id for r in recorded if isinstance(r.event, RunQueued)
    }
    return {
        "Image": image,
        "Ref": ref or None,
        "Engines": [
            {"Name": e.engine, "Ref": e.ref or None, "Error": e.error or None} for e in engines
        ],
        "Planned": [
            {"Upload": e.upload_id, "Of": e.run_id, "Run": queued.get(e.run_id)}
            for r in recorded
            if isinstance(e := r.event, RecheckPlanned)
        ],
    }


async def scan(config: Config) -> dict[str, Any]:
    """Plan the re-checks owed for the image the engines have now: through the running
    server, or here when none runs."""
    if not config.recheck.enabled:
        raise OpsError("re-checks are off: set [recheck] enabled = true")
    async with writer(config) as w:
        if isinstance(w, ServerClient):
            return dict(await w.request("POST", "/api/v1/rechecks/scan", {}))
        image = config.docker.image
        clients = [(e.name, e.pull, engine_for(e)) for e in config.engines]
        try:
            found = await resolve(image, clients)
        finally:
            for _, _, client in clients:
                await client.close()
        state, _ = await read_state(config)
        rechecks = state.rechecks
        ref = newest_ref(
            lambda r: rechecks.seen(image, r), rechecks.current(image), [e.ref for e in found]
        )
        recorded: list[RecordedEvent] = []
        if ref:
            recorded = await handle_locally(config, PlanRechecks(image, ref, utcnow()))
        return scan_document(image, ref, found, recorded)
