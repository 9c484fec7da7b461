"""A killed server and a cut Docker connection lose nothing: runs are adopted or recorded."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.web import keys
from tests.layouts import gds
from tests.simulator_config import write_simulator_config

pytestmark = pytest.mark.docker

DOCKER_SOCKET = "/var/run/docker.sock"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`precheck-server serve` as a real process on a storage folder, killable with SIGKILL."""

    def __init__(self, tmp_path: Path, image: str) -> None:
        self.port = _free_port()
        self.config = tmp_path / "config.toml"
        self.storage = tmp_path / "data"
        self.image = image
        self.write_config()
        self.log = tmp_path / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def write_config(self, **docker: object) -> None:
        """Write its config file: the simulator image on its storage folder, `docker` settings
        added to the `[docker]` table."""
        write_simulator_config(
            self.config, self.storage, self.image, server={"port": self.port}, docker=docker
        )

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "precheck", "serve", "--config", str(self.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"server did not start:\n{self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def server(tmp_path: Path, simulator_image: str) -> Iterator[ServerProcess]:
    """A server process on a fresh storage folder; its containers are removed afterwards."""
    s = ServerProcess(tmp_path, simulator_image)
    yield s
    s.stop()
    db = tmp_path / "data" / "precheck.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT data FROM events WHERE type = 'server.instance-created'"
            ).fetchone()
        if row:
            label = f"precheck.instance={json.loads(row[0])['instance_id']}"
            ps = ["docker", "ps", "-aq", "--filter", f"label={label}"]
            ids = subprocess.run(ps, capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


class Http:
    """A tiny client for the server process."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.s = session
        self.base = base

    async def run(self, layout: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("file", layout, filename="chip.gds")
        async with self.s.post(f"{self.base}/api/v1/uploads", data=form) as r:
            assert r.status == 200, await r.text()
            upload = await r.json()
        body = {"upload_id": upload["Id"], "top_cell": "chip_top"}
        async with self.s.post(f"{self.base}/api/v1/prechecks", json=body) as r:
            assert r.status == 200, await r.text()
            return str((await r.json())["Id"])

    async def get(self, path: str) -> Any:
        async with self.s.get(f"{self.base}{path}") as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def wait(self, run_id: str, seconds: float = 60) -> dict[str, Any]:
        url = f"{self.base}/api/v1/prechecks/{run_id}/wait?timeout={seconds}"
        async with self.s.post(url) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())

    async def until(
        self, run_id: str, predicate: Callable[[dict[str, Any]], bool], seconds: float = 30
    ) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            doc = await self.get(f"/api/v1/prechecks/{run_id}")
            if predicate(doc):
                return dict(doc)
            await asyncio.sleep(0.05)  # watching another process from outside: no event to await
        raise AssertionError(f"run {run_id} never reached the state; last: {doc['State']}")

    async def all_log_lines(self, run_id: str) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        after = 0
        while True:
            page = await self.get(f"/api/v1/prechecks/{run_id}/logs?after_line={after}&limit=1000")
            lines = page["lines"]
            out += list(zip(range(after + 1, after + 1 + len(lines)), lines, strict=True))
            if not page["has_more"]:
                return out
            after = page["last_line"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No keep-alive: a pooled connection to the killed server would fail the first request.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


def _texts(lines: list[tuple[int, str]], run_id: str) -> list[str]:
    # The flow's lines carry dates, wall-clock times and elapsed times: two runs differ there.
    return [_CLOCK.sub("#", text.replace(run_id, "<run>")) for _, text in lines]


_CLOCK = re.compile(r"\d{4}-\d\d-\d\d|\d+:\d\d:\d\d(?:\.\d+)?")


def _container_state(container_id: str) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{json .State}}", container_id], capture_output=True, text=True
    )
    return json.loads(out.stdout) if out.returncode == 0 else {}


async def test_kill_9_mid_run_then_restart_adopts_the_run_without_losing_or_doubling_lines(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """A run going on while the server is SIGKILLed is adopted and its log stays exact."""
    api = Http(http, server.url)
    server.start()
    layout = gds("chip_top", "step_sleep=0.25", "lines=300")
    run_id = await api.run(layout)
    await api.until(run_id, lambda d: (d["Progress"] or {}).get("Step", 0) >= 5)
    server.kill()
    server.start()
    result = await api.wait(run_id)
    doc = await api.get(f"/api/v1/prechecks/{run_id}")
    assert result["StatusCode"] == 0 and doc["State"]["Status"] == "completed"
    assert doc["Progress"] == {"Step": 16, "Total": 16, "Name": "KLayout.WriteLayout"}
    lines = await api.all_log_lines(run_id)
    # The same layout run without interruption prints the reference log.
    clean_id = await api.run(layout)
    await api.wait(clean_id)
    clean = await api.all_log_lines(clean_id)
    assert _texts(lines, run_id) == _texts(clean, clean_id)
    assert [n for n, _ in lines] == list(range(1, len(lines) + 1))
    assert _container_state(doc["ContainerId"]) == {}, "the container is removed once recorded"


async def test_a_run_that_ends_while_the_server_is_down_is_recorded_with_its_real_exit(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """Exit code, verdict, outputs and the whole log of a run that ended during downtime."""
    api = Http(http, server.url)
    server.start()
    run_id = await api.run(gds("chip_top", "sleep=1.5", "deferred=2"))
    doc = await api.until(run_id, lambda d: d["State"]["Status"] == "running")
    server.kill()
    deadline = time.monotonic() + 30
    while _container_state(doc["ContainerId"]).get("Status") != "exited":
        assert time.monotonic() < deadline, "the container never exited"
        await asyncio.sleep(0.1)
    server.start()
    result = await api.wait(run_id)
    doc = await api.get(f"/api/v1/prechecks/{run_id}")
    assert result["StatusCode"] == 1
    assert doc["State"]["Status"] == "failed"
    assert doc["Result"]["Classification"] == "design"
    assert doc["Result"]["DeferredErrors"] == {"KLayout DRC": 2}
    assert doc["Output"]["Available"] is True
    texts = [t for _, t in await api.all_log_lines(run_id)]
    assert texts[:2] == ["None", "PDK_ROOT = /workspace/gf180mcu"]  # as the real flow begins
    assert texts[-1].strip() == "2 KLayout DRC errors found."


class DockerProxy:
    """A TCP front for the Docker socket whose connections the test can cut and refuse."""

    def __init__(self) -> None:
        self.refusing = False
        self.server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_unix_connection(DOCKER_SOCKET)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for t in (
            asyncio.ensure_future(pipe(reader, up_writer)),
            asyncio.ensure_future(pipe(up_reader, writer)),
        ):
            self._pipes.add(t)
            t.add_done_callback(self._pipes.discard)

    def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        self.refusing = True
        for t in list(self._pipes):
            t.cancel()

    def resume(self) -> None:
        self.refusing = False

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def docker_proxy(docker_available: None) -> AsyncIterator[DockerProxy]:
    proxy = DockerProxy()
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_cut_docker_stream_is_resumed_and_a_run_that_ended_meanwhile_is_recorded(
    aiohttp_client: AiohttpClient,
    sim_config: Callable[..., Config],
    docker_proxy: DockerProxy,
    docker_instances: set[str],
) -> None:
    """Docker unreachable mid-run: health says so; on reconnect the run's end is recorded."""
    config = sim_config(url=f"tcp://127.0.0.1:{docker_proxy.port}")
    client = await aiohttp_client(create_app(config))
    app = client.app
    instance = app[keys.PROJECTIONS].instance_id
    assert instance, "the app has no instance id"
    docker_instances.add(instance)
    form = aiohttp.FormData()
    form.add_field("file", gds("chip_top", "sleep=1.5", "lines=50"), filename="chip.gds")
    upload = await (await client.post("/api/v1/uploads", data=form)).json()
    body = {"upload_id": upload["Id"], "top_cell": "chip_top"}
    run = await (await client.post("/api/v1/prechecks", json=body)).json()
    store, state = app[keys.STORE], app[keys.PROJECTIONS]
    while state.runs.by_id[run["Id"]].status != "running":
        await store.wait_beyond(state.position)
    container_id = state.runs.by_id[run["Id"]].container_id

    docker_proxy.cut()
    health = await (await client.get("/health")).json()
    for _ in range(100):
        if not health["docker"]["reachable"]:
            break
        await asyncio.sleep(0.05)
        health = await (await client.get("/health")).json()
    assert health["docker"]["reachable"] is False and health["status"] == "degraded"
    while _container_state(container_id).get("Status") != "exited":  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # Docker is cut off from the server: the test watches it itself
    assert state.runs.by_id[run["Id"]].status == "running", "nothing recorded while cut off"

    docker_proxy.resume()
    wait = await client.post(f"/api/v1/prechecks/{run['Id']}/wait?timeout=30")
    assert wait.status == 200 and (await wait.json())["StatusCode"] == 0
    assert state.runs.by_id[run["Id"]].status == "completed"
    logs = await (await client.get(f"/api/v1/prechecks/{run['Id']}/logs")).json()
    assert logs["lines"][-1] == "Precheck successfully completed."
    assert sum(1 for line in logs["lines"] if line.startswith("noise ")) == 50
    assert (await (await client.get("/health")).json())["docker"]["reachable"] is True
