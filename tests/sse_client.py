"""A tiny Server-Sent Events reader over an aiohttp response, for tests.

It parses the stream as a browser's EventSource does (fields `id`, `event`, `data`, `retry`;
lines starting with `:` are comments; a blank line dispatches) and keeps what a test wants to
check: every message with its own `id` and `event`, every `retry:` value, every comment.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp
import attrs
from aiohttp import web
from aiohttp.test_utils import TestClient

_LINE_END = re.compile(rb"\r\n|\r|\n")


@attrs.frozen
class Message:
    """One dispatched message: its own `id:` (None if it had none), `event:` (default `message`)."""

    id: str | None
    event: str
    data: str

    def key(self) -> tuple[str | None, str, str]:
        """What must match exactly between a live and a resumed stream."""
        return (self.id, self.event, self.data)


class SSEReader:
    """Reads messages from an open `text/event-stream` response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.retries: list[int] = []
        self.comments: list[str] = []
        self.last_event_id: str | None = None  # as EventSource keeps it
        self.eof = False
        self._buffer = b""
        self._lines: deque[str] = deque()

    @property
    def status(self) -> int:
        return self.response.status

    async def _line(self) -> str | None:
        """The next line without its end (CRLF, LF or CR), None at the end of the stream."""
        while not self._lines:
            if self.eof:
                return None
            chunk = await self.response.content.readany()
            if not chunk:
                self.eof = True
                if self._buffer.endswith(b"\r"):  # that CR ended a line after all
                    self._lines.extend(
                        p.decode("utf-8") for p in _LINE_END.split(self._buffer[:-1])
                    )
                self._buffer = b""  # an unterminated last line is discarded, as EventSource does
                continue
            self._buffer += chunk
            # A trailing CR may be the first half of a CRLF: keep it for the next chunk.
            hold = self._buffer.endswith(b"\r")
            text = self._buffer[:-1] if hold else self._buffer
            *parts, rest = _LINE_END.split(text)
            self._buffer = rest + (b"\r" if hold else b"")
            self._lines.extend(p.decode("utf-8") for p in parts)
        return self._lines.popleft()

    async def next(self) -> Message | None:
        """The next message, or None when the server closed the stream."""
        data: list[str] = []
        event = ""
        own_id: str | None = None
        while True:
            line = await self._line()
            if line is None:
                return None
            if line == "":
                if not data:
                    event, own_id = "", None  # nothing to dispatch (a retry or a bare id)
                    continue
                return Message(own_id, event or "message", "\n".join(data))
            if line.startswith(":"):
                self.comments.append(line[1:].removeprefix(" "))
                continue
            field, sep, value = line.partition(":")
            value = value.removeprefix(" ") if sep else ""
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
            elif field == "id" and "\0" not in value:
                own_id = value
                self.last_event_id = value
            elif field == "retry" and value.isdigit():
                self.retries.append(int(value))

    async def comment(self, within: float = 20) -> str:
        """The next comment line (a heartbeat); fails if a message or the end comes first."""
        async with asyncio.timeout(within):
            while True:
                line = await self._line()
                assert line is not None, "stream ended before a comment"
                if line.startswith(":"):
                    text = line[1:].removeprefix(" ")
                    self.comments.append(text)
                    return text
                if line.startswith("retry:") and line[6:].strip().isdigit():
                    self.retries.append(int(line[6:].strip()))
                    continue
                assert line == "", f"a message came before the comment: {line!r}"

    async def take(self, n: int, within: float = 20) -> list[Message]:
        """Exactly `n` messages (fails if the stream ends or stalls first)."""
        out: list[Message] = []
        async with asyncio.timeout(within):
            while len(out) < n:
                m = await self.next()
                assert m is not None, f"stream ended after {len(out)} of {n} messages"
                out.append(m)
        return out

    async def until(self, event: str, within: float = 20) -> list[Message]:
        """Every message up to and including the first of kind `event`."""
        out: list[Message] = []
        async with asyncio.timeout(within):
            while True:
                m = await self.next()
                assert m is not None, f"stream ended before `{event}` after {len(out)} messages"
                out.append(m)
                if m.event == event:
                    return out

    async def rest(self, within: float = 20) -> list[Message]:
        """Every message until the server closes the stream."""
        out: list[Message] = []
        async with asyncio.timeout(within):
            while (m := await self.next()) is not None:
                out.append(m)
        return out

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while (m := await self.next()) is not None:
            yield m


@asynccontextmanager
async def sse(
    client: (
        TestClient[web.Request, web.Application]
        | TestClient[web.Request, None]
        | aiohttp.ClientSession
    ),
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    last_id: str | None = None,
    accept: bool = True,
) -> AsyncIterator[SSEReader]:
    """GET `path` as a stream; leaving the block drops the connection (as a lost network does).

    `client` is an aiohttp `TestClient` (paths) or a `ClientSession` (full URLs).
    `last_id` is sent as the `Last-Event-ID` header, like a reconnecting EventSource;
    `accept=False` leaves out `Accept: text/event-stream` (then `follow=1` must ask for a stream).
    """
    hdrs = {"Accept": "text/event-stream"} if accept else {}
    hdrs.update(headers or {})
    if last_id is not None:
        hdrs["Last-Event-ID"] = last_id
    response = await client.get(
        path, params=params, headers=hdrs, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
    )
    try:
        yield SSEReader(response)
    finally:
        response.close()  # closes the connection, not back to the pool
