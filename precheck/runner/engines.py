"""The engines runs start on: one `EngineFollower` per configured Docker engine.

A follower holds what the supervisor knows of one engine: its client, whether it answers (and
why not), where its event stream stands, whether it has the image, and which runs it is
starting. Placement reads these to choose an engine for the head of the queue.
"""

from __future__ import annotations

import asyncio
import time

from precheck.config import EngineConfig
from precheck.runner.engine import Engine


class EngineFollower:
    """One Docker engine as the supervisor follows it."""

    def __init__(self, config: EngineConfig, engine: Engine, image: str) -> None:
        self.config = config
        self.engine = engine
        self.image = image
        self.reachable = False
        self.error = "not connected yet"
        self.image_present: bool | None = None  # None: not looked at yet
        self.since: str | None = None  # Docker time of the last event seen, to resume from
        self.connected = asyncio.Event()
        self.starting: set[str] = set()  # runs whose containers are being started here
        self.lost_at = time.monotonic()  # when it stopped answering (or was first asked)

    @property
    def name(self) -> str:
        """The engine's configured name."""
        return self.config.name

    @property
    def image_missing(self) -> bool:
        """Is the image absent here, with a pull policy that will not fetch it?"""
        return self.image_present is False and self.config.pull == "never"

    def free(self, running: int) -> int:
        """Slots free when `running` of this engine's runs hold one."""
        return self.config.max_concurrent - running - len(self.starting)

    def why_not(self, running: int) -> str | None:
        """Why no run can start here now; None when one can."""
        if not self.reachable:
            return f"engine {self.name} is unreachable ({self.error})"
        if self.image_missing:
            return f"engine {self.name} lacks image {self.image} (pull policy: never)"
        if self.free(running) <= 0:
            return f"engine {self.name} has all {self.config.max_concurrent} slots busy"
        return None

    def lost(self, why: str) -> bool:
        """Mark the engine unreachable; True when it answered until now."""
        was = self.reachable
        self.reachable = False
        self.error = why
        self.connected.clear()
        if was:
            self.lost_at = time.monotonic()
        return was

    async def look_at_image(self) -> bool:
        """Is the image here? (Asked again after an operator may have loaded it.)"""
        self.image_present = await self.engine.image_id(self.image) is not None
        return self.image_present


def choose(
    followers: list[EngineFollower], running: dict[str, int], avoid: frozenset[str] = frozenset()
) -> EngineFollower | None:
    """The engine the head of the queue starts on: an eligible one with a free slot, one not
    in `avoid` (where its earlier attempts failed) first, then most free slots, then by name."""
    eligible = [f for f in followers if f.why_not(running.get(f.name, 0)) is None]
    if not eligible:
        return None
    return min(eligible, key=lambda f: (f.name in avoid, -f.free(running.get(f.name, 0)), f.name))
