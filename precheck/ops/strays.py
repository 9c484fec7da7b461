"""Labelled containers that no live run owns, found from the log and Docker (for the CLI)."""

from __future__ import annotations

import sqlite3

from precheck.config import Config
from precheck.events.store import EventStore
from precheck.projections import Projections
from precheck.runner.engine import ContainerState, Engine, EngineError
from precheck.runner.supervisor import LABEL_INSTANCE
from precheck.storage.files import Storage


class StrayError(Exception):
    """Docker or the log could not be read."""


async def _live_containers(config: Config) -> tuple[str | None, set[str]]:
    """This storage's instance id and the container ids its running runs own."""
    path = Storage(config.server.storage_path).db_path
    if not path.exists():
        return None, set()
    try:
        store = await EventStore.open(path)
    except sqlite3.Error as e:
        raise StrayError(f"{path}: {e}") from None
    try:
        state = await Projections.replay(store)
    finally:
        await store.close()
    live = {r.container_id for r in state.runs.by_id.values() if r.container_id and not r.settled}
    return state.instance_id, live


async def find_strays(config: Config) -> list[ContainerState]:
    """Containers labelled with this storage's instance whose run is not running them."""
    instance, live = await _live_containers(config)
    if instance is None:
        return []
    engine = Engine(config.docker.url)
    try:
        found = []
        for cid in await engine.list_labelled(f"{LABEL_INSTANCE}={instance}"):
            c = await engine.inspect(cid)
            if c is not None and c.id not in live:
                found.append(c)
        return found
    except EngineError as e:
        raise StrayError(f"Docker: {e.message}") from None
    finally:
        await engine.close()


async def remove_strays(config: Config, strays: list[ContainerState]) -> int:
    """Remove the given containers; return how many went."""
    engine = Engine(config.docker.url)
    try:
        for c in strays:
            await engine.remove(c.id)
        return len(strays)
    except EngineError as e:
        raise StrayError(f"Docker: {e.message}") from None
    finally:
        await engine.close()


async def docker_summary(config: Config, instance: str | None) -> dict[str, object]:
    """Is Docker reachable, and how many containers carry this storage's label."""
    engine = Engine(config.docker.url)
    try:
        if not await engine.ping():
            return {"reachable": False, "error": "Docker does not answer", "containers": 0}
        count = len(await engine.list_labelled(f"{LABEL_INSTANCE}={instance}")) if instance else 0
        return {"reachable": True, "error": None, "containers": count}
    except EngineError as e:
        raise StrayError(f"Docker: {e.message}") from None
    finally:
        await engine.close()
