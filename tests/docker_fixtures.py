"""Fixtures for tests that run prechecks on a real Docker engine with the simulator image.

Loaded from `tests/conftest.py`. Without an engine these tests are skipped with the reason,
except under CI (env var `CI` set), where they fail: a CI machine must have Docker.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.events.store import EventStore, RecordedEvent
from precheck.events.types import RunProgressed, RunStarted
from precheck.runner.container_spec import LABEL_RUN, RUNS_DIR
from precheck.runner.engine import Engine
from precheck.web import keys
from tests.simulator_config import simulator_docker

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "simulator" / "build.sh"
LABEL_INSTANCE = "precheck.instance"


class NoDocker(str):
    """Stands in for the image tag when CI has no Docker engine, so tests fail, not error."""


def _docker(
    *args: str, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def docker_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    try:
        result = _docker("info", timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker CLI not usable: {exc}"
    if result.returncode != 0:
        return f"`docker info` failed: {result.stderr.strip() or result.stdout.strip()}"
    return None


async def docker(*args: str, check: bool = True) -> tuple[int, str, str]:
    """The docker CLI, run without blocking the event loop the server under test shares."""
    proc = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    rc = proc.returncode or 0
    if check and rc != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({rc}): {err.decode()}")
    return rc, out.decode(), err.decode()


async def docker_inspect(container_id: str) -> dict[str, Any] | None:
    """`docker inspect` of a container, None when it does not exist."""
    rc, out, _ = await docker("inspect", "--type", "container", container_id, check=False)
    if rc != 0:
        return None
    info: dict[str, Any] = json.loads(out)[0]
    return info


def remove_labelled(instance_ids: set[str]) -> list[str]:
    """Force-remove every container carrying one of the instance labels; return their ids."""
    removed: list[str] = []
    for instance in instance_ids:
        ps = _docker("ps", "-aq", "--no-trunc", "--filter", f"label={LABEL_INSTANCE}={instance}")
        ids = ps.stdout.split()
        if ids:
            _docker("rm", "-f", *ids)
            removed += ids
    return removed


@pytest.fixture(scope="session")
def docker_available() -> str | None:
    """None when a Docker engine answers; under CI without one, the problem (tests then fail)."""
    problem = docker_problem()
    if problem is None:
        return None
    if os.environ.get("CI"):
        return f"Docker engine required in CI: {problem}"
    pytest.skip(f"needs a running Docker engine: {problem}")


@pytest.fixture(scope="session")
def simulator_image(docker_available: str | None) -> Iterator[str]:
    """A freshly built simulator image under a random tag, removed at the end of the session."""
    if docker_available is not None:
        yield NoDocker(docker_available)
        return
    tag = f"precheck-simulator-test:{uuid.uuid4().hex[:12]}"
    build = subprocess.run(["bash", str(BUILD), tag], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"build.sh failed:\n{build.stderr}"
    assert build.stdout.strip().startswith("sha256:"), build.stdout
    try:
        yield tag
    finally:
        _docker("rmi", "-f", tag)


@pytest.fixture
def image_and_another(simulator_image: str) -> Iterator[tuple[str, str]]:
    """A name standing for the simulator image, and another image (another id, the same
    content) to bring under that name later, as a republished or rebuilt tag would:
    `(name, other)`, both removed after the test."""
    name = f"precheck-named:{uuid.uuid4().hex[:12]}"
    other = f"precheck-other:{uuid.uuid4().hex[:12]}"
    subprocess.run(["docker", "tag", simulator_image, name], check=True, timeout=60)
    subprocess.run(
        ["docker", "build", "-q", "-t", other, "-"],
        input=f"FROM {simulator_image}\nLABEL precheck.test=other\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=120,
    )
    yield name, other
    # -f: a stopped container of the run may still use `other` (its name is gone either way)
    subprocess.run(["docker", "rmi", "-f", name, other], capture_output=True, timeout=60)


@pytest.fixture
def sim_config(make_config: Callable[..., Config], simulator_image: str) -> Callable[..., Config]:
    """Factory: a Config running the simulator image, never pulling, with a small memory limit.

    `sim_config(max_concurrent=2, timeout_minutes=0.05)`: keyword arguments other than
    `max_concurrent` and `server` override the `[docker]` table. A system failure is not
    retried (`max_attempts = 1`) unless a test says otherwise.
    """

    def make(
        *, max_concurrent: int | None = None, server: dict[str, Any] | None = None, **docker: Any
    ) -> Config:
        if isinstance(simulator_image, NoDocker):
            pytest.fail(simulator_image)  # in the test's body: a failure, not an error
        server = dict(server or {})
        if max_concurrent is not None:
            server["max_concurrent"] = max_concurrent
        # No retries unless a test asks for them.
        tables: dict[str, Any] = {
            "docker": simulator_docker(simulator_image, **{"max_attempts": 1, **docker})
        }
        if server:
            tables["server"] = server
        return make_config(**tables)

    return make


@pytest.fixture(autouse=True)
def _remove_test_containers() -> Iterator[set[str]]:
    """After each test, once its apps have stopped, remove any container they labelled.

    Autouse fixtures are set up first and so torn down last: after `aiohttp_client` closed
    the apps, so no supervisor starts a container behind the clean-up's back.
    """
    instances: set[str] = set()
    yield instances
    if instances:
        remove_labelled(instances)


@pytest.fixture
def docker_instances(_remove_test_containers: set[str]) -> set[str]:
    """Instance ids of the apps a test started; their containers are removed after the test."""
    return _remove_test_containers


class AddingToRunFolder(Engine):
    """A real engine that puts the tar archive `extra()` into the run folder of a stopped
    container just before the copy-out reads it (through the archive API, as if the run had
    written those files)."""

    def extra(self) -> bytes:
        raise NotImplementedError

    async def get_archive(self, container_id: str, path: str) -> AsyncIterator[bytes] | None:
        if path == RUNS_DIR:  # the copy-out's read of the runs folder
            state = await self.inspect(container_id)
            assert state is not None
            data = self.extra()

            async def body() -> AsyncIterator[bytes]:
                yield data

            await self.put_archive(container_id, f"{RUNS_DIR}/{state.labels[LABEL_RUN]}", body())
        return await super().get_archive(container_id, path)


class StartApp(Protocol):
    """The `start_app` fixture: `api = await start_app(config)`."""

    def __call__(
        self, config: Config | None = None, /, *, engine: Callable[[str], Engine] = ...
    ) -> Awaitable[Api]: ...


@pytest.fixture
def start_app(
    aiohttp_client: AiohttpClient, sim_config: Callable[..., Config], docker_instances: set[str]
) -> StartApp:
    """Factory: `api = await start_app(config)` serves `create_app(config)` on a real socket.

    Without a config, `sim_config()` is used. Every app's instance id is noted for clean-up.
    """

    async def start(
        config: Config | None = None, *, engine: Callable[[str], Engine] = Engine
    ) -> Api:
        client = await aiohttp_client(create_app(config or sim_config(), engine=engine))
        instance = client.app[keys.PROJECTIONS].instance_id
        assert instance, "the app has no instance id"
        docker_instances.add(instance)
        return Api(client)

    return start


class Api:
    """A thin client of the REST API for tests, asserting the happy statuses."""

    def __init__(self, client: TestClient[web.Request, web.Application]) -> None:
        self.client = client

    @property
    def app(self) -> web.Application:
        return self.client.app

    @property
    def store(self) -> EventStore:
        return self.client.app[keys.STORE]

    @property
    def instance_id(self) -> str:
        return str(self.client.app[keys.PROJECTIONS].instance_id)

    async def upload(self, body: bytes, name: str = "design.gds") -> str:
        """Upload a layout; its id."""
        form = aiohttp.FormData()
        form.add_field("file", body, filename=name, content_type="application/octet-stream")
        r = await self.client.post("/api/v1/uploads", data=form)
        assert r.status == 200, await r.text()
        return str((await r.json())["Id"])

    async def create(self, upload_id: str, **fields: Any) -> dict[str, Any]:
        """Queue a run of an upload (top cell `chip_top` unless given); its document."""
        body = {"upload_id": upload_id, "top_cell": "chip_top", **fields}
        r = await self.client.post("/api/v1/prechecks", json=body)
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc

    async def run(self, body: bytes, name: str = "design.gds", **fields: Any) -> str:
        """Upload a layout and queue a run of it; the run id."""
        return str((await self.create(await self.upload(body, name), **fields))["Id"])

    async def wait(self, run_id: str, timeout: float = 30) -> dict[str, Any]:  # noqa: ASYNC109
        """`POST /wait`: returns once the run ended (asserts it did within `timeout`)."""
        r = await self.client.post(
            f"/api/v1/prechecks/{run_id}/wait",
            params={"timeout": str(timeout)},
            timeout=aiohttp.ClientTimeout(total=timeout + 30),
        )
        assert r.status == 200, await r.text()
        result: dict[str, Any] = await r.json()
        return result

    async def get(self, run_id: str) -> dict[str, Any]:
        """`GET /api/v1/prechecks/{id}`."""
        r = await self.client.get(f"/api/v1/prechecks/{run_id}")
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc

    async def cancel(self, run_id: str) -> tuple[int, dict[str, Any]]:
        """`DELETE /api/v1/prechecks/{id}`: status and body."""
        r = await self.client.delete(f"/api/v1/prechecks/{run_id}")
        return r.status, await r.json()

    async def events(
        self, type_: str | None = None, run_id: str | None = None
    ) -> list[RecordedEvent]:
        """Every committed event, optionally of one type tag and/or one run."""
        found: list[RecordedEvent] = []
        async for r in self.store.read_all():
            if type_ is not None and r.type != type_:
                continue
            if run_id is not None and getattr(r.event, "run_id", None) != run_id:
                continue
            found.append(r)
        return found

    async def wait_event(
        self,
        type_: str,
        run_id: str | None = None,
        within: float = 20,
        after: int = 0,
    ) -> RecordedEvent:
        """The first event of `type_` (of `run_id`) after `after`, waiting for it to be appended."""
        position = after
        async with asyncio.timeout(within):
            while True:
                async for r in self.store.read_all(after=position):
                    position = r.position
                    if r.type == type_ and (
                        run_id is None or getattr(r.event, "run_id", None) == run_id
                    ):
                        return r
                await self.store.wait_beyond(position)

    async def wait_running(self, run_id: str, within: float = 20) -> str:
        """Wait until the run's container started; its container id."""
        r = await self.wait_event("run.started", run_id, within)
        assert isinstance(r.event, RunStarted)
        return str(r.event.container_id)

    async def wait_step(self, run_id: str, step: int, within: float = 20) -> None:
        """Wait until the run reached step `step` (a `run.progressed` event)."""
        position = 0
        async with asyncio.timeout(within):
            while True:
                async for r in self.store.read_all(after=position):
                    position = r.position
                    e = r.event
                    if isinstance(e, RunProgressed) and e.run_id == run_id and e.step >= step:
                        return
                await self.store.wait_beyond(position)

    async def logs(self, run_id: str, **params: Any) -> dict[str, Any]:
        """`GET /logs` with query parameters."""
        r = await self.client.get(
            f"/api/v1/prechecks/{run_id}/logs", params={k: str(v) for k, v in params.items()}
        )
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc
