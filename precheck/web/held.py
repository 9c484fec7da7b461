"""The long requests each key holds open (waits, streams, uploads): counted against the per-key
caps (`server.max_waits_per_key`, `max_streams_per_key`, `max_uploads_per_key`), and ended when
the key is revoked. Without a key (auth off) each client address counts as its own key."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs
from aiohttp import web

from precheck.errors import TooMany
from precheck.web import keys
from precheck.web.auth import ANONYMOUS

HELD = web.AppKey["Held"]("held")

KINDS = {"wait": "waits", "stream": "open streams", "upload": "uploads under way"}
LIMITS = {
    "wait": "max_waits_per_key",
    "stream": "max_streams_per_key",
    "upload": "max_uploads_per_key",
}


def holder(request: web.Request) -> str:
    """Whose request it is for the caps: the key's name, or `anonymous` and the address."""
    if request.get(keys.IDENTITY) is ANONYMOUS:
        return f"{ANONYMOUS.name} {request[keys.CLIENT]}"
    return str(request[keys.ACTOR])


def hold(request: web.Request, kind: str) -> contextlib.AbstractContextManager[Hold]:
    """Count `request` as one of its key's open requests of `kind` while it runs; 429 past the
    configured cap."""
    limit = getattr(request.app[keys.CONFIG].server, LIMITS[kind])
    return request.app[HELD].hold(holder(request), kind, limit)


@attrs.define(eq=False)
class Hold:
    """One open request: whose it is, what kind, and a future done when its key is revoked."""

    actor: str
    kind: str
    revoked: asyncio.Future[Any]  # Any: it is awaited beside futures of any result


class Held:
    """Every long request open now, by key."""

    def __init__(self) -> None:
        self._holds: set[Hold] = set()
        self._counts: Counter[tuple[str, str]] = Counter()

    def count(self, actor: str, kind: str) -> int:
        """How many requests of `kind` the key `actor` holds open."""
        return self._counts[actor, kind]

    @contextlib.contextmanager
    def hold(self, actor: str, kind: str, limit: int = 0) -> Iterator[Hold]:
        """Count a request of `kind` as `actor`'s while it is open; past `limit` (0: none) 429."""
        if limit and self._counts[actor, kind] >= limit:
            raise TooMany(
                f"this key already has {limit} {KINDS[kind]}, as many as"
                f" server.{LIMITS[kind]} allows at once"
            )
        held = Hold(actor, kind, asyncio.get_running_loop().create_future())
        self._holds.add(held)
        self._counts[actor, kind] += 1
        try:
            yield held
        finally:
            self._holds.discard(held)
            self._counts[actor, kind] -= 1
            if not self._counts[actor, kind]:
                del self._counts[actor, kind]
            held.revoked.cancel()

    def revoke(self, actor: str) -> None:
        """End every request `actor` holds: their `revoked` futures are done."""
        for held in self._holds:
            if held.actor == actor and not held.revoked.done():
                held.revoked.set_result(None)
