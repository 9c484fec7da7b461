"""Following a run's stream to its end, resuming by itself after a dropped connection.

The server's Server-Sent Events carry an id on every message; reconnecting with the last one in
`Last-Event-ID` continues right after it, so nothing is lost or repeated. The follower reconnects
with a backoff for as long as the server stays away less than `give_up_after` seconds, and skips
any log line it already has, should a server ever send one twice.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from precheck.client.api import Api, ApiError, Unreachable, backoff, run_path, with_retries
from precheck.client.outcome import status_of

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class Message:
    """One dispatched SSE message."""

    event: str
    data: str
    id: str | None


class SSEParser:
    """Bytes in, messages out, as a browser's EventSource reads them."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[Message]:
        """The messages `chunk` completes; a partial one waits for the next chunk."""
        self._buffer += chunk
        hold = self._buffer.endswith(b"\r")  # maybe the first half of a CRLF
        text = self._buffer[:-1] if hold else self._buffer
        *lines, rest = _LINE_END.split(text)
        self._buffer = rest + (b"\r" if hold else b"")
        out: list[Message] = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if line == "":
                if self._data:
                    out.append(Message(self._event or "message", "\n".join(self._data), self._id))
                self._data, self._event, self._id = [], "", None
            elif not line.startswith(":"):
                field, sep, value = line.partition(":")
                value = value.removeprefix(" ") if sep else ""
                if field == "data":
                    self._data.append(value)
                elif field == "event":
                    self._event = value
                elif field == "id" and "\0" not in value:
                    self._id = value
        return out


@dataclass(frozen=True)
class Update:
    """A `status` or `progress` message: the whole run document."""

    kind: str
    doc: dict[str, Any]


@dataclass(frozen=True)
class LogLine:
    """One output line of the run, with its number (from 1)."""

    number: int
    text: str


@dataclass(frozen=True)
class End:
    """The stream ended: the final run document (events), or `{"StatusCode", "Status"}`."""

    data: dict[str, Any]


@dataclass(frozen=True)
class EstimateNews:
    """An `estimate` message: the run's `Status` and `Estimate` now (no id: not of the log)."""

    data: dict[str, Any]


Item = Update | LogLine | End | EstimateNews


class Follower:
    """One run's stream: its changes (`events`), its log lines (`logs`), or both."""

    def __init__(
        self,
        api: Api,
        run_id: str,
        *,
        events: bool = True,
        logs: bool = True,
        tail: int | None = None,
        give_up_after: float = 300.0,
        on_retry: Callable[[ApiError, float], None] | None = None,
    ) -> None:
        assert events or logs
        self.api, self.run_id = api, run_id
        self.events, self.logs, self.tail = events, logs, tail
        self.give_up_after = give_up_after
        self.on_retry = on_retry
        self.last_id: str | None = None  # what a reconnect sends as Last-Event-ID
        self.last_line = 0  # the highest log line passed on
        self.reconnects = 0

    def _request(self) -> tuple[str, dict[str, str]]:
        if self.events:
            params = {"follow": "1", "estimates": "1"} | ({"logs": "1"} if self.logs else {})
            return run_path(self.run_id, "events"), params
        params = {"follow": "1"}
        if self.tail is not None and self.last_id is None:
            params["tail"] = str(self.tail)
        return run_path(self.run_id, "logs"), params

    def _line_number(self, message_id: str | None) -> int | None:
        if message_id is None:
            return None
        try:
            return int(message_id.rpartition(":")[2])
        except ValueError:
            return None

    def _item(self, m: Message) -> Item | None:
        """What a message means, or None for one already passed on (or unknown)."""
        if m.event in ("status", "progress"):
            return Update(m.event, json.loads(m.data))
        if m.event == "end":
            return End(json.loads(m.data))
        if m.event == "estimate":
            return EstimateNews(json.loads(m.data))
        if m.event == "log" or (not self.events and m.event == "message"):
            number = self._line_number(m.id)
            if number is not None:
                if number <= self.last_line:
                    return None
                self.last_line = number
            return LogLine(number or self.last_line, m.data)
        return None

    async def _ended_before(self) -> End:
        """The server says the stream had ended (204): what its `end` said, from the run."""
        doc = await with_retries(
            lambda: self.api.run(self.run_id),
            give_up_after=self.give_up_after,
            on_retry=self.on_retry,
        )
        if self.events:
            return End(doc)
        code = (doc.get("State") or {}).get("ExitCode", -1)
        return End({"StatusCode": code, "Status": status_of(doc)})

    async def items(self) -> AsyncIterator[Item]:
        """Every update and log line, in order, once each, then the `End`."""
        contact = time.monotonic()
        delays = backoff()
        while True:
            path, params = self._request()
            headers = {"Accept": "text/event-stream"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            try:
                async with self.api.request(
                    "GET", path, params=params, headers=headers, ok=(200, 204)
                ) as response:
                    contact = time.monotonic()
                    if response.status == 204:
                        yield await self._ended_before()
                        return
                    parser = SSEParser()
                    async for chunk in response.content.iter_any():
                        contact = time.monotonic()
                        for m in parser.feed(chunk):
                            item = self._item(m)
                            if m.id is not None:
                                self.last_id = m.id
                            if item is not None:
                                delays = backoff()
                                yield item
                                if isinstance(item, End):
                                    return
                raise Unreachable(f"{self.api.server} closed the stream before its end")
            except ApiError as e:
                if not e.retryable:
                    raise
                away = time.monotonic() - contact
                if away >= self.give_up_after:
                    raise Unreachable(
                        f"gave up after {away:.0f} s without the server: {e.message}"
                    ) from None
                delay = min(next(delays), self.give_up_after - away)
                if self.on_retry is not None:
                    self.on_retry(e, delay)
                self.reconnects += 1
                await asyncio.sleep(delay)
