"""Server-Sent Events plumbing shared by every stream: when to stream, resume ids, writing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from precheck.events.store import RecordedEvent
from precheck.events.types import KeyRevoked
from precheck.storage.output_lines import OutputLine
from precheck.web import keys
from precheck.web.held import HELD, hold

RETRY_MS = 3000
SEND_TIMEOUT = 30.0  # a client that takes no data for this long is cut; it resumes by id


def wants_stream(request: web.Request) -> bool:
    """A request is a stream when it says `follow=1` or accepts `text/event-stream`."""
    follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
    return follow or "text/event-stream" in request.headers.get("Accept", "")


def last_event_id(request: web.Request) -> str | None:
    """Where a client resumes: `Last-Event-ID`, or `?lastEventId=` on a first connect."""
    value = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    return value.strip() if value and value.strip() else None


def message(data: Any, *, id: str | int | None = None, event: str | None = None) -> str:
    """One SSE message; `data` that is not a string is sent as JSON."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    out = []
    if event:
        out.append(f"event: {event}\n")
    if id is not None:
        out.append(f"id: {id}\n")
    # CR and LF end an SSE line: a text with them is split over several data lines.
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        out.append(f"data: {line}\n")
    out.append("\n")
    return "".join(out)


def line_message(line: OutputLine, timestamps: bool) -> bytes:
    """A captured log line as the SSE message `/logs?follow=1` sends (id = line number)."""
    return message(line.as_text(timestamps), id=line.line).encode("utf-8")


class Stream:
    """An open SSE response: writes pre-formatted messages, bounded in time, closed on shutdown."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        heartbeat = request.app[keys.CONFIG].server.sse_heartbeat_seconds
        self.response = EventSourceResponse(ping_interval=heartbeat, send_timeout=SEND_TIMEOUT)
        self.response.headers["X-Request-Id"] = request[keys.REQUEST_ID]
        self._gone: asyncio.Future[None] | None = None
        self._held = contextlib.ExitStack()

    async def open(self) -> None:
        """Send the headers and the reconnection delay; 429 past the key's open streams."""
        self._held.enter_context(hold(self.request, "stream"))
        try:
            await self.response.prepare(self.request)
        except BaseException:
            self._held.close()
            raise
        request_streams(self.request.app).add(self.response)
        await self.write(f"retry: {RETRY_MS}\n\n")

    async def write(self, text: str | bytes) -> None:
        """Send messages; a client that does not take them in `SEND_TIMEOUT` s is cut off."""
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await self.response.write(text if isinstance(text, bytes) else text.encode("utf-8"))
        except TimeoutError:
            self.response.stop_streaming()
            if self.request.transport is not None:
                self.request.transport.abort()
            raise ConnectionResetError("SSE client too slow") from None

    async def until_gone(self) -> None:
        """Return when the client has gone (a heartbeat failed) or the server stops the stream.

        A handler waiting for news would otherwise not notice a client that left quietly.
        """
        await asyncio.shield(self._gone_task())

    def _gone_task(self) -> asyncio.Future[None]:
        # One watcher for the stream's life: cancelling a task that awaits the heartbeat task
        # would cancel the heartbeat itself, and the next wait would then report a live client
        # as gone. So the watcher is never cancelled by a wait, only by `close`.
        if self._gone is None:
            self._gone = asyncio.ensure_future(self.response.wait())
        return self._gone

    async def wait_for(self, *news: Coroutine[Any, Any, Any]) -> None:
        """Wait until one of `news` happens; raise `ConnectionResetError` if the client left."""
        tasks = [asyncio.ensure_future(n) for n in news]
        gone = self._gone_task()
        try:
            await asyncio.wait([*tasks, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if gone.done():
            raise ConnectionResetError("the client left or the server is stopping")

    async def wait_for_futures(self, *news: asyncio.Future[Any]) -> None:
        """Like `wait_for`, on shared futures: no task per wait, and nothing to cancel."""
        gone = self._gone_task()
        await asyncio.wait([*news, gone], return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            raise ConnectionResetError("the client left or the server is stopping")

    async def close(self) -> None:
        """End the stream cleanly."""
        self._held.close()
        request_streams(self.request.app).discard(self.response)
        self.response.stop_streaming()
        if self._gone is not None:
            self._gone.cancel()
        try:
            await self.response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass


def request_streams(app: web.Application) -> weakref.WeakSet[EventSourceResponse]:
    """The open streams of the app, stopped on shutdown so it does not wait for them."""
    return app[keys.STREAMS]


def close_revoked_streams(app: web.Application, r: RecordedEvent) -> None:
    """On `key.revoked`: end every open stream and wait that key opened, at once."""
    if not isinstance(r.event, KeyRevoked):
        return
    app[HELD].revoke(r.event.name)
    for response in list(request_streams(app)):
        req = response._req
        if req is not None and req.get(keys.ACTOR) == r.event.name:
            response.stop_streaming()
            if req.transport is not None:
                req.transport.close()


async def stop_streams(app: web.Application) -> None:
    """On shutdown: stop every open stream (clients reconnect to the next server by id)."""
    for response in list(request_streams(app)):
        response.stop_streaming()
        req = response._req
        if req is not None and req.transport is not None:
            req.transport.close()
