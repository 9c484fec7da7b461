"""The Docker boundary: every call this service makes to the Engine API, in one place.

Returns plain values (ids, dicts of what we asked for, byte streams); Docker's failures become
`EngineError`. Streams (archives, logs, events) are read as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import aiodocker
import aiohttp
import attrs
from aiodocker.exceptions import DockerError

from precheck.config import EngineConfig
from precheck.runner.image_ref import ImageRef, repo_digest
from precheck.storage.docker_time import docker_datetime, docker_since
from precheck.storage.output_lines import LineBlock

LONG = aiohttp.ClientTimeout(total=None, sock_read=None)


class EngineError(Exception):
    """Docker refused what was asked (`status`: Docker's HTTP status), or could not be reached:
    the one error the engine's callers see. The kinds they branch on are subclasses."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class EngineUnreachable(EngineError):
    """No answer: the engine is down, the connection broke, or TLS refused it. Whatever was
    under way is tried again once the engine answers (its reconcile)."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class EngineNotFound(EngineError):
    """Docker answered 404: no such container, image or path."""


class EngineConflict(EngineError):
    """Docker answered 409: the container is not in a state for that (e.g. not running)."""


# The status aiodocker gives its `DockerError` when it could not connect at all (no HTTP
# status came back): read here, once, and never seen past this module.
AIODOCKER_NO_CONNECTION = 900


def _refusal(status: int, message: str) -> EngineError:
    kind = {404: EngineNotFound, 409: EngineConflict}.get(status, EngineError)
    return kind(status, message)


MAX_LINE = 64 << 10  # bytes of one output line kept (the rest is counted, with a marker)
FRAME_READ = 1 << 20  # a frame's payload is read in pieces of at most this
_DELETED = 2  # the Kind of a path the container deleted, in its list of changes


@attrs.frozen
class ContainerState:
    """What inspecting a container tells us."""

    id: str
    name: str
    labels: dict[str, str]
    status: str  # created, running, exited, dead, ...
    running: bool
    exit_code: int
    oom_killed: bool
    error: str
    started_at: str
    finished_at: str


def _wrap(e: Exception) -> EngineError:
    cause = e.__cause__ or e.__context__
    if isinstance(e, DockerError) and isinstance(cause, aiohttp.ClientSSLError):
        e = cause  # a refused TLS connection, as aiodocker reports a failed connect
    if isinstance(e, DockerError) and e.status == AIODOCKER_NO_CONNECTION:
        return EngineUnreachable(str(e.message))
    if isinstance(e, DockerError):
        return _refusal(e.status, str(e.message))
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return EngineUnreachable(
            "TLS: the engine's certificate is not trusted (not signed by tls_ca, or not for"
            f" this host): {e.certificate_error}",
        )
    if isinstance(e, aiohttp.ClientSSLError):
        return EngineUnreachable(f"TLS: the engine refused the connection: {e}")
    return EngineUnreachable(f"Docker is unreachable: {e}")


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """A client TLS context that verifies the engine against `ca` and shows `cert`/`key`."""
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    return context


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Docker's refusals and lost connections, as `EngineError`: the one error callers see."""
    try:
        yield
    except (DockerError, aiohttp.ClientError) as e:
        raise _wrap(e) from e


def engine_for(config: EngineConfig, make: Callable[[str], Engine] | None = None) -> Engine:
    """A client of the configured engine (`make` builds it from the URL; tests wrap it)."""
    engine = (make or Engine)(config.url)
    if config.tls:
        engine.tls = tls_context(config.tls_ca, config.tls_cert, config.tls_key)
    return engine


class Engine:
    """A connection to one Docker engine (local socket, `unix://` or `tcp://`, with TLS when
    given a context)."""

    def __init__(self, url: str = "", *, tls: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.tls = tls
        self.max_line = MAX_LINE  # longer output lines are cut (`docker.max_line_kib`)
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            url = self.url or None
            if self.tls is not None and url is not None and url.startswith("tcp://"):
                url = "https://" + url.removeprefix("tcp://")
            self._docker = aiodocker.Docker(url=url, ssl_context=self.tls)
        return self._docker

    async def close(self) -> None:
        """Close the connection pool."""
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def ping(self) -> bool:
        """Does the engine answer?"""
        try:
            async with self._api("_ping", versioned_api=False) as r:
                return bool(r.status == 200)
        except Exception:
            return False

    async def system_time(self) -> str:
        """The engine's clock now, as unix `seconds.nanoseconds` (a `since` for events)."""
        with _translated():
            info = await self._api_json("info")
        t = docker_datetime(str(info.get("SystemTime", "")))
        return f"{t.timestamp():.6f}"

    # Images -----------------------------------------------------------------------------------

    async def image_id(self, image: str) -> str | None:
        """The local image's id (`sha256:...`), None when the engine does not have it."""
        ref = await self.image_ref(image)
        return ref.id if ref else None

    async def image_ref(self, image: str) -> ImageRef | None:
        """The local image's id and repo digest, None when the engine does not have it."""
        try:
            with _translated():
                info = await self.docker.images.inspect(image)
        except EngineNotFound:
            return None
        return ImageRef(str(info["Id"]), repo_digest(image, info.get("RepoDigests") or []))

    async def pull(self, image: str) -> None:
        """Pull `image`; raise `EngineError` with Docker's message when it fails."""
        try:
            with _translated():
                result = await self.docker.images.pull(image)
        except EngineUnreachable:
            raise
        except EngineError as e:
            # Docker's own message often names only the registry: say which image it was.
            raise _refusal(e.status or 500, f"pulling image {image} failed: {e.message}") from e
        for item in result if isinstance(result, list) else [result]:
            if isinstance(item, dict) and item.get("error"):
                raise EngineError(500, f"pulling image {image} failed: {item['error']}")

    # Containers -------------------------------------------------------------------------------

    async def create(self, name: str, spec: Mapping[str, Any]) -> str:
        """Create a container from an Engine API create body; return its id."""
        with _translated():
            c = await self.docker.containers.create(dict(spec), name=name)
        return c.id

    async def put_archive(self, container_id: str, path: str, tar: AsyncIterator[bytes]) -> None:
        """Extract a tar stream into the container at `path`, sent in chunks."""
        with _translated():
            async with self._api(
                f"containers/{container_id}/archive",
                method="PUT",
                params={"path": path},
                data=tar,
                headers={"Content-Type": "application/x-tar"},
                timeout=LONG,
                chunked=True,
            ):
                pass

    async def get_archive(self, container_id: str, path: str) -> AsyncIterator[bytes] | None:
        """A tar stream of `path` in the container, None when the path does not exist."""
        cm = self._api(f"containers/{container_id}/archive", params={"path": path}, timeout=LONG)
        try:
            with _translated():
                response = await cm.__aenter__()
        except EngineNotFound:
            return None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                with _translated():
                    async for chunk in response.content.iter_chunked(1 << 20):
                        yield chunk
            finally:
                # A read stopped early closes the connection: left open, the engine would
                # wait to send the rest, holding the container (other requests on it wait).
                if not response.content.at_eof():
                    response.close()
                response.release()
                await cm.__aexit__(None, None, None)

        return chunks()

    async def changed_paths(self, container_id: str) -> list[str] | None:
        """The paths added or changed in the container's own layer (not those it deleted);
        None when the container no longer exists."""
        try:
            with _translated():
                changes = await self._api_json(f"containers/{container_id}/changes")
        except EngineNotFound:
            return None
        return [str(c["Path"]) for c in changes or () if c.get("Kind") != _DELETED]

    async def start(self, container_id: str) -> None:
        """Start a created container."""
        await self._post(f"containers/{container_id}/start")

    async def kill(self, container_id: str) -> None:
        """SIGKILL the container; a container that is not running is left as it is."""
        with contextlib.suppress(EngineNotFound, EngineConflict):
            await self._post(f"containers/{container_id}/kill")

    async def remove(self, container_id: str) -> None:
        """Remove the container (killing it if needed); an absent one is fine."""
        try:
            with _translated():
                async with self._api(
                    f"containers/{container_id}",
                    method="DELETE",
                    params={"force": "true", "v": "true"},
                ):
                    pass
        except EngineNotFound:
            pass

    async def inspect(self, container_id: str) -> ContainerState | None:
        """The container's state, None when it no longer exists."""
        try:
            with _translated():
                info = await self._api_json(f"containers/{container_id}/json")
        except EngineNotFound:
            return None
        s = info["State"]
        return ContainerState(
            id=info["Id"],
            name=info["Name"].lstrip("/"),
            labels=info["Config"].get("Labels") or {},
            status=s["Status"],
            running=bool(s["Running"]),
            exit_code=int(s["ExitCode"]),
            oom_killed=bool(s.get("OOMKilled")),
            error=s.get("Error") or "",
            started_at=s.get("StartedAt") or "",
            finished_at=s.get("FinishedAt") or "",
        )

    async def list_labelled(self, label: str) -> list[str]:
        """Ids of all containers (running or not) carrying `label` (`key=value`)."""
        with _translated():
            items = await self._api_json(
                "containers/json",
                params={"all": "true", "filters": json.dumps({"label": [label]})},
            )
        return [str(c["Id"]) for c in items]

    async def stats(self, container_id: str) -> dict[str, Any]:
        """One sample of the container's resource use, as Docker reports it."""
        with _translated():
            data: dict[str, Any] = await self._api_json(
                f"containers/{container_id}/stats", params={"stream": "false"}
            )
        return data

    async def stats_stream(self, container_id: str) -> AsyncIterator[dict[str, Any]]:
        """Docker's stream of the container's resource use, one sample a second, until it stops
        (or the connection breaks)."""
        with _translated():
            container = self.docker.containers.container(container_id)
            async for sample in container.stats(stream=True):
                yield sample

    async def logs(
        self, container_id: str, *, follow: bool, since: str | None = None
    ) -> AsyncIterator[LineBlock]:
        """The container's output lines with timestamps, in batches; with `follow`, until it
        stops.

        `since` is Docker's timestamp text of the last line already kept; lines at that same
        instant come again and the caller drops the ones it has.
        """
        params = {"stdout": "true", "stderr": "true", "timestamps": "true"}
        if follow:
            params["follow"] = "true"
        if since:
            params["since"] = docker_since(since)
        with _translated():
            async with self._api(
                f"containers/{container_id}/logs", params=params, timeout=LONG
            ) as response:
                async for lines in _demux_lines(response.content, self.max_line):
                    yield lines

    async def events(self, label: str, since: str | None) -> AsyncIterator[dict[str, Any]]:
        """Docker's event stream for containers carrying `label`, from `since` (unix.nanos)."""
        filters = {"type": ["container"], "label": [label]}
        params = {"filters": json.dumps(filters)}
        if since:
            params["since"] = since
        with _translated():
            async with self._api("events", params=params, timeout=LONG) as response:
                async for raw in response.content:
                    if raw.strip():
                        yield json.loads(raw)

    # The one adapter over aiodocker's private request methods. Its public API reads archives
    # and logs whole and has no `since` for events; this service streams all three (a layout
    # of GBs, a log of millions of lines) and needs the raw response. Every call goes here.

    def _api(self, path: str, **kw: Any) -> Any:
        """A raw Engine API request, as an async context manager of the response."""
        return self.docker._query(path, **kw)

    async def _api_json(self, path: str, **kw: Any) -> Any:
        """A raw Engine API request whose answer is JSON."""
        return await self.docker._query_json(path, **kw)

    async def _post(self, path: str) -> None:
        with _translated():
            async with self._api(path, method="POST"):
                pass


async def _demux_lines(
    content: aiohttp.StreamReader, max_line: int = MAX_LINE
) -> AsyncIterator[LineBlock]:
    """Split Docker's multiplexed log stream (8-byte frame headers) into timestamped lines.

    Linear in the bytes read: each piece of the body is scanned once, frames of one stream that
    arrived together are split into lines together. A line longer than `max_line` bytes keeps
    its first `max_line` bytes and ends with a marker saying how much was cut; what lies
    beyond is counted, never held. A body that ends inside a frame's payload raises
    `asyncio.IncompleteReadError`; one that ends between frames, or inside a header, ends the
    lines (a last line without a newline included).
    """
    splitters = {1: _LineSplitter("stdout", max_line), 2: _LineSplitter("stderr", max_line)}
    header = b""  # the part of a frame header read so far
    splitter, left = splitters[1], 0  # the frame being read and its payload bytes to come
    while data := await content.readany():
        pos, pieces = 0, list[bytes]()  # pieces: consecutive payload of `splitter`, split together
        while pos < len(data):
            if not left:
                need = 8 - len(header)
                header += data[pos : pos + need]
                pos += need
                if len(header) < 8:
                    break  # the rest of the header comes with the next piece
                kind, left = struct.unpack(">BxxxL", header)
                header = b""
                # stdin (0) never comes; anything else counts as stdout
                following = splitters.get(kind, splitters[1])
                if following is not splitter and pieces:
                    if got := splitter.feed(b"".join(pieces)):
                        yield got
                    pieces = []
                splitter = following
                continue
            piece = data[pos : pos + left]
            pos += len(piece)
            left -= len(piece)
            pieces.append(piece)
        if pieces and (got := splitter.feed(b"".join(pieces))):
            yield got
    if left:
        raise asyncio.IncompleteReadError(b"", left)
    for each in splitters.values():
        if last := each.finish():
            yield last


class _LineSplitter:
    """One stream's bytes into lines, with the line cap."""

    def __init__(self, stream: str, max_line: int) -> None:
        self.stream = stream
        self.max_line = max_line
        self.buf = bytearray()  # the start of a line not yet ended, at most `max_line` bytes
        self.cut = 0  # bytes of that line dropped past `max_line`

    def feed(self, data: bytes) -> LineBlock | None:
        """The lines `data` ends (None if it ends none); what follows the last is kept."""
        end = data.rfind(b"\n")
        if end < 0:
            self._keep(data, 0, len(data))
            return None
        start, raw = 0, []
        if self.buf or self.cut:  # the line begun before ends at the first newline
            start = data.find(b"\n") + 1
            self._keep(data, 0, start - 1)
            raw.append(self._take())
        if start <= end:
            body = data[start:end]
            parts = body.split(b"\n") if len(body) > self.max_line else [body]
            if max(map(len, parts)) <= self.max_line:
                raw.append(body)  # the common case: every line short, all decoded at once
            else:
                for part in parts:  # some line is too long: each is cut to the cap
                    self._keep(part, 0, len(part))
                    raw.append(self._take())
        self._keep(data, end + 1, len(data))
        return self._lines(raw)

    def finish(self) -> LineBlock | None:
        """The last line, if the stream ended without a newline."""
        return self._lines([self._take()]) if self.buf or self.cut else None

    def _keep(self, data: bytes, start: int, end: int) -> None:
        room = self.max_line - len(self.buf)
        take = min(room, end - start)
        if take > 0:
            self.buf += data[start : start + take]
        self.cut += end - start - max(take, 0)

    def _take(self) -> bytes:
        """The line held (cut lines marked), ending it."""
        line = bytes(self.buf)
        if self.cut:
            kib = self.max_line >> 10
            note = f" [line cut at {kib} KiB: {self.cut} more bytes not kept]"
            line = line.decode("utf-8", "replace").encode() + note.encode()
        self.buf.clear()
        self.cut = 0
        return line

    def _lines(self, raw: list[bytes]) -> LineBlock:
        text = b"\n".join(raw).decode("utf-8", "replace")
        if "\r\n" in text:  # a line's trailing carriage returns are not part of it
            # One pass, however many there are (replacing one per pass was quadratic).
            text = "\n".join(line.rstrip("\r") for line in text.split("\n"))
        return LineBlock(0, self.stream, text.rstrip("\r"), text.count("\n") + 1)
