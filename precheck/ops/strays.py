"""Labelled containers that no live run owns: which they are, and removing them as events.

The same rule serves the running server (`web/cleanup.py`, with the supervisor's view of the
runs) and the CLI when no server runs (with a replay of the log, under the folder's lock).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from precheck.clock import Clock, utcnow
from precheck.config import Config, EngineConfig
from precheck.events.types import Event, StrayContainerRemoved
from precheck.ops.errors import OpsError
from precheck.ops.writes import ServerClient, local_metadata, open_log, read_state, writer
from precheck.projections import Projections
from precheck.runner.container_spec import LABEL_RUN, instance_filter
from precheck.runner.engine import ContainerState, Engine, EngineError, engine_for
from precheck.storage.files import Storage

Append = Callable[[Sequence[Event]], Awaitable[object]]


class StrayError(OpsError):
    """Docker or the log could not be read."""


def is_stray(container: ContainerState, state: Projections, *, server_running: bool) -> bool:
    """Does no live run own this labelled container?

    A run owns its recorded container until it is settled (running, or finishing: its outputs
    are still to be copied out). While a server runs, a queued run may also own a container
    not yet recorded: the supervisor is starting it. A settled run needs nothing from its
    container any more, so that one is a stray even if the supervisor is about to remove it.
    """
    run = state.runs.get(container.labels.get(LABEL_RUN, ""))
    if run is None or run.settled:
        return True
    if run.container_id == container.id:
        return False
    return not (server_running and not run.container_id)


async def find_strays(
    engine: Engine, state: Projections, *, server_running: bool
) -> list[ContainerState]:
    """Containers labelled with this storage's instance that no live run owns."""
    if state.instance_id is None:
        return []
    found = []
    try:
        for cid in await engine.list_labelled(instance_filter(state.instance_id)):
            c = await engine.inspect(cid)
            if c is not None and is_stray(c, state, server_running=server_running):
                found.append(c)
    except EngineError as e:
        raise StrayError(f"Docker: {e.message}") from None
    return found


async def remove_strays(
    engine: Engine,
    strays: Sequence[ContainerState],
    append: Append,
    clock: Clock,
    keep: Callable[[ContainerState], bool] = lambda _: False,
) -> list[ContainerState]:
    """Remove each container, then record its removal (`StrayContainerRemoved`); return the
    ones removed. `keep` is asked again just before each: a run may have claimed it since."""
    removed = []
    try:
        for c in strays:
            if keep(c) or await engine.inspect(c.id) is None:
                continue  # owned after all, or already gone (removed by someone else)
            await engine.remove(c.id)
            await append([StrayContainerRemoved(c.id, c.name, clock())])
            removed.append(c)
    except EngineError as e:
        raise StrayError(f"Docker: {e.message}") from None
    return removed


def container_document(c: ContainerState) -> dict[str, str]:
    """A stray as the API and the CLI show it."""
    return {"Id": c.id, "Name": c.name, "Status": c.status, "Run": c.labels.get(LABEL_RUN, "?")}


async def docker_summary(config: Config, instance: str | None) -> dict[str, Any]:
    """Does each engine answer, and how many containers there carry this storage's label."""
    engines = [await _engine_summary(e, instance) for e in config.engines]
    down = [e for e in engines if not e["reachable"]]
    return {
        "reachable": not down,
        "error": "; ".join(f"{e['name']}: {e['error']}" for e in down) or None,
        "containers": sum(int(str(e["containers"])) for e in engines),
        "engines": engines,
    }


async def _engine_summary(config: EngineConfig, instance: str | None) -> dict[str, object]:
    engine = engine_for(config)
    summary: dict[str, object] = {"name": config.name, "slots": config.max_concurrent}
    try:
        if not await engine.ping():
            return summary | {
                "reachable": False,
                "error": "Docker does not answer",
                "containers": 0,
            }
        count = len(await engine.list_labelled(instance_filter(instance))) if instance else 0
        return summary | {"reachable": True, "error": None, "containers": count}
    except EngineError as e:
        return summary | {"reachable": False, "error": f"Docker: {e.message}", "containers": 0}
    finally:
        await engine.close()


async def cleanup(config: Config, dry_run: bool) -> list[dict[str, str]]:
    """The stray containers, removed and recorded unless `dry_run`: through the running server
    (which knows what it is starting), or here under the folder's lock when none runs."""
    if not Storage(config.server.storage_path).db_path.exists():
        return []  # no log, no instance: no container can be labelled as this storage's
    async with writer(config) as w:
        if isinstance(w, ServerClient):
            answer = await w.request("POST", "/api/v1/cleanup", {"dry_run": dry_run})
            return list(answer["Containers"])
        state, _ = await read_state(config)
        found: list[ContainerState] = []
        for engine_config in config.engines:
            engine = engine_for(engine_config)
            try:
                strays = await find_strays(engine, state, server_running=False)
                if strays and not dry_run:
                    async with open_log(config) as store:

                        async def append(events: Sequence[Event]) -> object:
                            return await store.append(list(events), local_metadata())

                        strays = await remove_strays(engine, strays, append, utcnow)
                found += strays
            finally:
                await engine.close()
    return [container_document(c) for c in found]
