"""Test helpers for notifications: webhook receivers on loopback that check signatures with
their own implementation of the Standard Webhooks scheme, and a run ended by hand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import web
from aiohttp.test_utils import TestServer

from precheck.events.types import Metadata, RunExited, RunOutputsStored, RunStarted
from precheck.web import keys

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SUPERVISOR = Metadata("supervisor")


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's side, written from the scheme's description, not the server's code:
    the key is the base64 after `whsec_`; any `v1,` signature of `id.timestamp.body` matches."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode()
    expected = base64.b64encode(hmac.new(key, signed + b"." + body, hashlib.sha256).digest())
    for part in headers["webhook-signature"].split(" "):
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(sig.encode(), expected):
            return True
    return False


@attrs.define
class Received:
    """One request a receiver got."""

    headers: dict[str, str]
    body: bytes
    verified: bool


@attrs.define
class Receiver:
    """A webhook receiver: its URL, what it got, what it answers next (`answers`, then 200)."""

    server: TestServer
    got: list[Received] = attrs.field(factory=list)
    answers: list[int] = attrs.field(factory=list)
    arrived: asyncio.Event = attrs.field(factory=asyncio.Event)
    held: asyncio.Event | None = None  # while unset, requests are taken but not answered

    @property
    def url(self) -> str:
        """Its hook's URL, on 127.0.0.1."""
        return f"http://127.0.0.1:{self.server.port}/hook"

    async def wait(self, count: int, seconds: float = 10) -> None:
        """Until it has got `count` requests."""
        async with asyncio.timeout(seconds):
            while len(self.got) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def start_receiver(
    port: int | None = None, extra: Callable[[web.Application], None] | None = None
) -> Receiver:
    """A receiver on 127.0.0.1 (on `port`, if given), started."""
    app = web.Application()
    receiver = Receiver(TestServer(app, host="127.0.0.1", port=port))

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        lower = {k.lower(): v for k, v in headers.items()}
        receiver.got.append(Received(lower, body, verify(SECRET, lower, body)))
        receiver.arrived.set()
        if receiver.held is not None:
            await receiver.held.wait()
        status = receiver.answers.pop(0) if receiver.answers else 200
        if 300 <= status < 400:
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=status, text="x" * 100_000)  # more than is read

    app.router.add_post("/hook", hook)
    if extra is not None:
        extra(app)
    await receiver.server.start_server()
    return receiver


async def end_run(app: web.Application, run_id: str, status: str = "failed") -> None:
    """Record a run's start and end as the runner does (no container)."""
    store, now = app[keys.STORE], app[keys.CLOCK]()
    code = 0 if status == "completed" else 1
    await store.append(
        [RunStarted(run_id, f"c-{run_id}", "precheck:test", "sha256:" + "ab" * 32, now)],
        SUPERVISOR,
    )
    deferred = {} if status == "completed" else {"KLayout.DRC": 3}
    await store.append(
        [
            RunExited(
                run_id, status, code, "", "design" if code else None, deferred, False, now, now
            ),
            RunOutputsStored(run_id, None, (), {}, "KLayout.DRC" if code else None, now),
        ],
        SUPERVISOR,
    )


async def logged(app: web.Application, prefix: str = "notification.") -> list[Any]:
    """The events in the app's log whose tag starts with `prefix`, in order."""
    return [r.event async for r in app[keys.STORE].read_all(after=0) if r.type.startswith(prefix)]


async def until_logged(
    app: web.Application, done: Callable[[list[Any]], bool], seconds: float = 10
) -> list[Any]:
    """The notification events once `done` holds for them, woken by each commit."""
    store = app[keys.STORE]
    async with asyncio.timeout(seconds):
        while True:
            head = store.head
            events = await logged(app)
            if done(events):
                return events
            await store.wait_beyond(head)
