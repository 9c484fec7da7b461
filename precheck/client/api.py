"""The HTTP calls: one aiohttp session per command, errors turned into `ApiError`.

Only what the README documents is used: the client never imports the server's code. Proxies
named in the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) apply only with `use_env_proxy`:
most servers a job talks to are on its own network, where a CI's proxy would be in the way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from precheck import __version__
from precheck.client.output import Progress

CHUNK = 1 << 20
CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 60.0  # no byte for this long: the connection is taken for dead (streams ping)
UPLOAD_READ_TIMEOUT = 900.0  # the server stores and checks a whole layout before it answers
RETRY_STATUSES = frozenset({502, 503, 504})  # a proxy in front of a restarting server

T = TypeVar("T")


class ApiError(Exception):
    """The server refused (`status` 4xx/5xx, `message` from its JSON error), or was unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def retryable(self) -> bool:
        """Worth trying again: no answer at all, or a gateway's."""
        return self.status is None or self.status in RETRY_STATUSES


class Unreachable(ApiError):
    """No HTTP answer: refused, reset, timed out."""


def run_path(run_id: str, *rest: str) -> str:
    """`/api/v1/prechecks/<id>/...`, every segment quoted."""
    return "/".join(["/api/v1/prechecks", *(quote(p, safe="") for p in (run_id, *rest))])


def backoff(first: float = 0.5, factor: float = 2.0, cap: float = 10.0) -> Iterator[float]:
    """Delays between tries: 0.5, 1, 2, 4, 8, 10, 10, ..."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    give_up_after: float,
    on_retry: Callable[[ApiError, float], None] | None = None,
) -> T:
    """`call()`, tried again with backoff while the server cannot be reached, for up to
    `give_up_after` seconds; then its last error. Only for calls that may be repeated."""
    started = time.monotonic()
    delays = backoff()
    while True:
        try:
            return await call()
        except ApiError as e:
            left = give_up_after - (time.monotonic() - started)
            if not e.retryable or left <= 0:
                raise
            delay = min(next(delays), left)
            if on_retry is not None:
                on_retry(e, delay)
            await asyncio.sleep(delay)


class Api:
    """A server's API: `async with Api(url, key) as api: await api.run(run_id)`."""

    def __init__(self, server: str, key: str | None, *, use_env_proxy: bool = False) -> None:
        if "://" not in server:
            server = f"http://{server}"
        self.server = server.rstrip("/")
        self.key = key
        self.use_env_proxy = use_env_proxy
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        headers = {"User-Agent": f"precheck-client/{__version__}"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            trust_env=self.use_env_proxy,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
            ),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Api(...)`"
        return self._session

    def url(self, path: str) -> URL:
        """The URL of an API path on this server (a path prefix in the server URL is kept)."""
        return URL(self.server + path, encoded=False)

    # Raw requests -----------------------------------------------------------------------------

    @asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        **kwargs: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An open response whose status is one of `ok`; `ApiError` otherwise."""
        try:
            async with self.session.request(
                method, self.url(path), params=params, headers=headers, **kwargs
            ) as response:
                if response.status not in ok:
                    raise ApiError(await _error_message(response), response.status)
                yield response
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
            raise Unreachable(f"cannot reach {self.server}: {_reason(e)}") from None

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a request."""
        async with self.request(method, path, **kwargs) as response:
            try:
                return await response.json(content_type=None)
            except ValueError:
                raise ApiError(
                    f"{method} {path}: the answer is not JSON (is {self.server} a precheck "
                    "server?)",
                    response.status,
                ) from None

    # The calls --------------------------------------------------------------------------------

    async def queue(self) -> dict[str, Any]:
        """`GET /api/v1/queue`: cheap, and needs the key: checks both before a long upload."""
        doc: dict[str, Any] = await self.json("GET", "/api/v1/queue")
        return doc

    async def upload(self, path: Path, size: int, progress: Progress) -> dict[str, Any]:
        """Stream a layout (`size` bytes) as the raw body of `POST /api/v1/uploads?name=...`;
        its document."""

        async def chunks() -> AsyncIterator[bytes]:
            f = await asyncio.to_thread(path.open, "rb")
            try:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    progress.update(len(chunk))
                    yield chunk
            finally:
                f.close()

        doc: dict[str, Any] = await self.json(
            "POST",
            "/api/v1/uploads",
            params={"name": path.name},
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            data=chunks(),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=CONNECT_TIMEOUT, sock_read=UPLOAD_READ_TIMEOUT
            ),
        )
        return doc

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /api/v1/prechecks`: queue a run; its document."""
        doc: dict[str, Any] = await self.json("POST", "/api/v1/prechecks", json=body)
        return doc

    async def run(self, run_id: str) -> dict[str, Any]:
        """`GET /api/v1/prechecks/{id}`."""
        doc: dict[str, Any] = await self.json("GET", run_path(run_id))
        return doc

    async def runs(self, statuses: list[str]) -> list[dict[str, Any]]:
        """`GET /api/v1/prechecks?status=...`, newest first."""
        docs: list[dict[str, Any]] = await self.json(
            "GET", "/api/v1/prechecks", params=[("status", s) for s in statuses]
        )
        return docs

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """`DELETE /api/v1/prechecks/{id}` (200 when done, 202 while the kill goes on)."""
        doc: dict[str, Any] = await self.json("DELETE", run_path(run_id), ok=(200, 202))
        return doc

    async def reports(self, run_id: str) -> list[dict[str, Any]]:
        """`GET .../reports`: `[{"Step", "Name", "Path", "Size", "Checksums": {"sha256"}}]`."""
        docs: list[dict[str, Any]] = await self.json("GET", run_path(run_id, "reports"))
        return docs

    async def logs(self, run_id: str, **params: str) -> dict[str, Any]:
        """`GET .../logs` as JSON: `{"lines", "last_line", "has_more", ...}`."""
        doc: dict[str, Any] = await self.json("GET", run_path(run_id, "logs"), params=params)
        return doc


async def _error_message(response: aiohttp.ClientResponse) -> str:
    """The server's `message`, or what the answer says otherwise."""
    try:
        body = await response.read()
    except (aiohttp.ClientError, TimeoutError):
        body = b""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("message"):
            message = str(doc["message"])
        else:
            raise ValueError
    except ValueError:
        text = body.decode("utf-8", "replace").strip().splitlines()
        message = text[0][:200] if text else ""
        message = f"HTTP {response.status} {response.reason or ''}".strip() + (
            f": {message}" if message else ""
        )
    if response.status == 401:
        message += " (give the key with --key or PRECHECK_API_KEY)"
    return message


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        return e.os_error.strerror or str(e.os_error) or "cannot connect"
    return str(e) or type(e).__name__
