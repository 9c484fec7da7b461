"""More than one engine, on real engines: the default one and a private `dockerd` of the
session's own, each followed through its own event stream."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bench.soak import Relay
from precheck.config import Config
from precheck.events.types import RunRetried, RunStarted
from precheck.runner.engine import Engine
from tests.docker_fixtures import LABEL_INSTANCE, NoDocker, StartApp
from tests.engines import DEFAULT_ENGINE_URL, PrivateEngine, TlsFiles, make_tls
from tests.layouts import gds
from tests.test_crash_recovery import Http, ServerProcess


@pytest.fixture(scope="session")
def second_engine(simulator_image: str) -> Iterator[PrivateEngine]:
    """A second `dockerd` on its own socket, data root, exec root and pid file, with the
    simulator image loaded; stopped and its folder removed at the end of the session."""
    if isinstance(simulator_image, NoDocker):
        pytest.fail(simulator_image)
    root = Path(tempfile.mkdtemp(prefix="pe-", dir="/tmp"))
    engine = PrivateEngine(root, simulator_image)
    try:
        asyncio.run(engine.start())
        asyncio.run(engine.load_image())
        yield engine
    finally:
        asyncio.run(engine.stop())
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def on_second(second_engine: PrivateEngine, docker_instances: set[str]) -> Iterator[PrivateEngine]:
    """The second engine; the containers a test's apps left there are removed after it."""
    yield second_engine
    for instance in docker_instances:
        env = second_engine.env
        ps = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={LABEL_INSTANCE}={instance}"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if ps.stdout.split():
            subprocess.run(
                ["docker", "rm", "-f", *ps.stdout.split()], env=env, capture_output=True, timeout=60
            )


def two_engines(
    sim_config: Callable[..., Config], second: PrivateEngine, slots: int = 1, **docker: Any
) -> Config:
    """The default engine `main` and the private one `second`, `slots` each."""
    engines = [
        {"name": "main", "url": DEFAULT_ENGINE_URL, "max_concurrent": slots},
        {"name": "second", "url": second.url, "max_concurrent": slots},
    ]
    return sim_config(engines=engines, **docker)


def interval(doc: dict[str, Any]) -> tuple[datetime, datetime]:
    """When the run's container started and finished."""
    state = doc["State"]
    return datetime.fromisoformat(state["StartedAt"]), datetime.fromisoformat(state["FinishedAt"])


async def test_runs_spread_over_engines_at_once(
    start_app: StartApp, sim_config: Callable[..., Config], on_second: PrivateEngine
) -> None:
    """Two runs with one slot on each of two engines run at the same time, one on each."""
    api = await start_app(two_engines(sim_config, on_second))
    runs = [await api.run(gds("chip_top", "step_sleep=0.3")) for _ in range(2)]
    for run_id in runs:
        assert (await api.wait(run_id, timeout=60))["Status"] == "completed"
    docs = [await api.get(run_id) for run_id in runs]
    assert sorted(d["Engine"] for d in docs) == ["main", "second"]
    (a_start, a_end), (b_start, b_end) = interval(docs[0]), interval(docs[1])
    assert a_start < b_end and b_start < a_end, "the two runs did not overlap"
    started = [r.event for r in await api.events("run.started")]
    assert sorted(e.engine for e in started if isinstance(e, RunStarted)) == ["main", "second"]


class CreateGate:
    """Shared by the engines of one app: counts their container creates in flight, and opens
    once `want` are in flight at the same time."""

    def __init__(self, want: int, patience: float = 30) -> None:
        self.want = want
        self.patience = patience  # a create waits no longer than this for the others
        self.in_flight: dict[str, int] = {}  # engine URL -> creates in flight there
        self.most: dict[str, int] = {}  # engine URL -> the most in flight there at once
        self.most_total = 0
        self.opened = asyncio.Event()


class GatedEngine(Engine):
    """A real engine whose `create` waits at the gate until the gate's `want` creates, over
    every engine sharing it, are in flight at once (or its patience runs out)."""

    def __init__(self, url: str, gate: CreateGate) -> None:
        super().__init__(url)
        self.gate = gate

    async def create(self, name: str, spec: Mapping[str, Any]) -> str:
        gate, url = self.gate, self.url
        gate.in_flight[url] = gate.in_flight.get(url, 0) + 1
        gate.most[url] = max(gate.most.get(url, 0), gate.in_flight[url])
        gate.most_total = max(gate.most_total, sum(gate.in_flight.values()))
        if gate.most_total >= gate.want:
            gate.opened.set()
        try:
            try:
                await asyncio.wait_for(gate.opened.wait(), gate.patience)
            except TimeoutError:
                pass  # starts one at a time: go on, and the test says so
            return await super().create(name, spec)
        finally:
            gate.in_flight[url] -= 1


async def test_starts_overlap_on_one_engine_and_across_engines(
    start_app: StartApp, sim_config: Callable[..., Config], on_second: PrivateEngine
) -> None:
    """Four runs queued on two engines with two free slots each are started at the same time:
    the four creates are in flight together, two on each engine (a create waits at a gate
    until the others arrive, so starts made one at a time never get there). `run.started`
    still comes in queue order."""
    gate = CreateGate(4)
    api = await start_app(
        two_engines(sim_config, on_second, slots=2), engine=lambda url: GatedEngine(url, gate)
    )
    await wait_health(api, "main", reachable=True)
    await wait_health(api, "second", reachable=True)
    runs = [await api.run(gds("chip_top", "step_sleep=0.05")) for _ in range(4)]
    for run_id in runs:
        assert (await api.wait(run_id, timeout=120))["Status"] == "completed"
    assert gate.most_total == 4, f"at most {gate.most_total} of 4 creates were in flight at once"
    assert sorted(gate.most.values()) == [2, 2], gate.most
    started = [r.event for r in await api.events("run.started")]
    assert [e.run_id for e in started if isinstance(e, RunStarted)] == runs
    assert sorted(e.engine for e in started if isinstance(e, RunStarted)) == [
        "main", "main", "second", "second",
    ]  # fmt: skip


@pytest.fixture
def main_only_image(simulator_image: str) -> Iterator[str]:
    """The simulator image under a tag only the default engine has."""
    image = f"precheck-main-only:{uuid.uuid4().hex[:12]}"
    subprocess.run(["docker", "tag", simulator_image, image], check=True, timeout=60)
    yield image
    subprocess.run(["docker", "rmi", image], capture_output=True, timeout=60)


async def test_head_waits_with_its_reason_and_image_missing_engine_gets_nothing(
    start_app: StartApp,
    sim_config: Callable[..., Config],
    on_second: PrivateEngine,
    main_only_image: str,
) -> None:
    """With the image only on `main` and `pull = "never"`, every run goes to `main`; the run
    waiting at the head says why neither engine takes it."""
    image = main_only_image
    api = await start_app(two_engines(sim_config, on_second, image=image))
    first = await api.run(gds("chip_top", "step_sleep=0.5"))
    await api.wait_running(first)
    second = await api.run(gds("chip_top", "step_sleep=0.1"))
    waiting = ""
    async with asyncio.timeout(20):
        while not waiting:
            waiting = (await api.get(second))["Queue"]["Waiting"] or ""
            await asyncio.sleep(0.05)
    assert "engine main has all 1 slots busy" in waiting, waiting
    assert f"engine second lacks image {image}" in waiting, waiting
    for run_id in (first, second):
        assert (await api.wait(run_id, timeout=60))["Status"] == "completed"
        doc = await api.get(run_id)
        assert doc["Engine"] == "main" and doc["Queue"]["Waiting"] is None
    health = await (await api.client.get("/health")).json()
    by_name = {e["name"]: e for e in health["docker"]["engines"]}
    assert by_name["main"]["image_present"] is True
    assert by_name["second"]["image_present"] is False
    assert by_name["second"]["reachable"] is True and by_name["second"]["slots"] == 1


async def test_adopted_on_each_engine_after_a_restart(
    start_app: StartApp, sim_config: Callable[..., Config], on_second: PrivateEngine
) -> None:
    """Runs left running on two engines by a stopped server are adopted per engine by the next
    one on the same storage, and complete there."""
    config = two_engines(sim_config, on_second)
    api = await start_app(config)
    runs = [await api.run(gds("chip_top", "step_sleep=1")) for _ in range(2)]
    for run_id in runs:
        await api.wait_running(run_id)
    engines = {(await api.get(r))["Engine"] for r in runs}
    assert engines == {"main", "second"}
    await api.client.close()  # containers keep running
    again = await start_app(config)
    for run_id in runs:
        assert (await again.wait(run_id, timeout=60))["Status"] == "completed"
    assert {(await again.get(r))["Engine"] for r in runs} == engines
    assert len(await again.events("run.started")) == 2
    assert await again.events("server.stray-container-removed") == []


async def wait_health(api: Any, engine: str, reachable: bool, within: float = 30) -> None:
    """Until `/health` shows `engine` reachable (or not)."""
    async with asyncio.timeout(within):
        while True:
            health = await (await api.client.get("/health")).json()
            by_name = {e["name"]: e for e in health["docker"]["engines"]}
            if by_name[engine]["reachable"] is reachable:
                return
            await asyncio.sleep(0.05)


async def test_engine_stopped_mid_run_is_retried_on_another(
    start_app: StartApp, sim_config: Callable[..., Config], on_second: PrivateEngine
) -> None:
    """A run whose engine stops and stays away past the grace is retried on the other engine,
    keeps its id and completes; both attempts are in its document and `run.retried` says why;
    `/logs?attempt=1` still serves the first attempt's lines."""
    config = two_engines(sim_config, on_second, engine_grace_seconds=1, max_attempts=2)
    api = await start_app(config)
    # Both engines taking runs, so the first goes to `main` (name order) and the next to
    # `second`, whichever engine the server happened to reach first.
    await wait_health(api, "main", reachable=True)
    await wait_health(api, "second", reachable=True)
    first = await api.run(gds("chip_top", "step_sleep=0.3"))
    await api.wait_running(first)
    lost = await api.run(gds("chip_top", "step_sleep=1"))
    await api.wait_step(lost, 2, within=30)
    assert (await api.get(lost))["Engine"] == "second"
    try:
        await on_second.stop()
        retried = await api.wait_event("run.retried", lost, within=30)
        event = retried.event
        assert isinstance(event, RunRetried)
        assert (event.attempt, event.engine) == (2, "second")
        # Past the grace it is "engine lost"; an engine stopped in an orderly way may first
        # kill its containers and say so, which is a system failure of its own.
        assert "engine lost" in event.reason or "killed" in event.reason, event.reason
        assert (await api.wait(lost, timeout=90))["Status"] == "completed"
    finally:
        await on_second.start()
    doc = await api.get(lost)
    assert doc["Engine"] == "main"
    attempts = doc["Attempts"]
    assert [(a["Attempt"], a["Engine"]) for a in attempts] == [(1, "second"), (2, "main")]
    assert attempts[0]["Error"] == event.reason and attempts[1]["Error"] == ""
    assert attempts[1]["ExitCode"] == 0
    assert (await api.wait(first, timeout=60))["Status"] == "completed"
    earlier = await api.logs(lost, attempt=1)
    latest = await api.logs(lost)
    assert earlier["lines"] and latest["lines"]
    assert earlier["last_line"] < latest["first_line"]


class CopyInGate(Engine):
    """A real engine whose copy-in of a run's input waits, on the engine at `url`, until the
    test opens the gate (`reached` is set once one waits there)."""

    def __init__(self, url: str, gated_url: str) -> None:
        super().__init__(url)
        self.gated = url == gated_url
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def put_archive(self, container_id: str, path: str, tar: AsyncIterator[bytes]) -> None:
        if self.gated:
            self.reached.set()
            await asyncio.wait_for(self.opened.wait(), 60)
        await super().put_archive(container_id, path, tar)


async def test_engine_stopped_while_a_start_is_under_way_retries_the_run_elsewhere(
    start_app: StartApp, sim_config: Callable[..., Config], on_second: PrivateEngine
) -> None:
    """The engine a run is being started on stops half-way (its container created, the input
    not yet copied in): the attempt is recorded with Docker's error, the run queues again at
    its place and completes on the other engine, not `failed` after one attempt."""
    engines: list[CopyInGate] = []

    def make(url: str) -> Engine:
        engines.append(CopyInGate(url, on_second.url))
        return engines[-1]

    config = sim_config(
        engines=[
            {"name": "main", "url": DEFAULT_ENGINE_URL, "max_concurrent": 1},
            {"name": "second", "url": on_second.url, "max_concurrent": 1},
        ],
        max_attempts=2,
    )
    api = await start_app(config, engine=make)
    await wait_health(api, "main", reachable=True)
    await wait_health(api, "second", reachable=True)
    busy = await api.run(gds("chip_top", "step_sleep=0.2"))  # holds main's one slot
    await api.wait_running(busy)
    run = await api.run(gds("chip_top"))
    gate = next(e for e in engines if e.gated)
    await asyncio.wait_for(gate.reached.wait(), 30)
    try:
        await on_second.stop()
        gate.opened.set()
        retried = (await api.wait_event("run.retried", run, within=30)).event
        assert isinstance(retried, RunRetried)
        assert (retried.attempt, retried.engine, retried.exit_code) == (2, "second", -1)
        assert retried.reason.startswith("Docker: "), retried.reason
        assert (await api.wait(run, timeout=90))["Status"] == "completed"
    finally:
        await on_second.start()
    doc = await api.get(run)
    attempts = doc["Attempts"]
    assert [(a["Attempt"], a["Engine"]) for a in attempts] == [(1, "second"), (2, "main")]
    assert attempts[0]["Error"] == retried.reason and attempts[1]["ExitCode"] == 0
    assert await api.events("run.failed-to-start", run) == []
    assert (await api.wait(busy, timeout=60))["Status"] == "completed"


async def test_engine_back_within_grace_is_adopted(
    start_app: StartApp, sim_config: Callable[..., Config], on_second: PrivateEngine
) -> None:
    """An engine that stops answering and answers again within the grace keeps its run: it is
    adopted as if nothing happened, with no retry."""
    short = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    relay = Relay(short / "r.sock", on_second.socket)
    await relay.start()
    try:
        engines = [
            {"name": "main", "url": DEFAULT_ENGINE_URL, "max_concurrent": 1},
            {"name": "second", "url": f"unix://{relay.listen}", "max_concurrent": 1},
        ]
        api = await start_app(sim_config(engines=engines, engine_grace_seconds=30))
        await wait_health(api, "main", reachable=True)
        await wait_health(api, "second", reachable=True)
        first = await api.run(gds("chip_top", "step_sleep=0.3"))
        await api.wait_running(first)
        kept = await api.run(gds("chip_top", "step_sleep=0.8"))
        await api.wait_step(kept, 2, within=30)
        assert (await api.get(kept))["Engine"] == "second"
        await relay.close()
        await wait_health(api, "second", reachable=False)
        await asyncio.sleep(1)
        await relay.start()
        await wait_health(api, "second", reachable=True)
        assert (await api.wait(kept, timeout=60))["Status"] == "completed"
        doc = await api.get(kept)
        assert doc["Engine"] == "second" and len(doc["Attempts"]) == 1
        assert await api.events("run.retried") == []
        assert len(await api.events("run.started", kept)) == 1
    finally:
        await relay.close()
        shutil.rmtree(short, ignore_errors=True)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def tls_engine(simulator_image: str) -> Iterator[tuple[PrivateEngine, TlsFiles, TlsFiles]]:
    """A third `dockerd`, listening on `tcp://127.0.0.1:<port>` with `--tlsverify` and
    certificates made here; with a client certificate from the same authority and one from
    another authority."""
    if isinstance(simulator_image, NoDocker):
        pytest.fail(simulator_image)
    root = Path(tempfile.mkdtemp(prefix="pt-", dir="/tmp"))
    server = make_tls(root / "tls", "engine")
    client = make_tls(root / "tls", "client", ca=server)
    stranger = make_tls(root / "tls", "other")
    engine = PrivateEngine(root / "e", simulator_image, port=free_port(), tls=server)
    try:
        asyncio.run(engine.start())
        asyncio.run(engine.load_image())
        yield engine, client, stranger
    finally:
        asyncio.run(engine.stop())
        shutil.rmtree(root, ignore_errors=True)


def tls_entry(engine: PrivateEngine, ca: Path, client: TlsFiles) -> dict[str, Any]:
    """The `[[docker.engines]]` entry of the TLS engine, trusting `ca`."""
    return {
        "name": "far",
        "url": engine.url,
        "tls_ca": str(ca),
        "tls_cert": str(client.cert),
        "tls_key": str(client.key),
    }


async def test_tls_engine_runs_a_precheck(
    start_app: StartApp,
    sim_config: Callable[..., Config],
    tls_engine: tuple[PrivateEngine, TlsFiles, TlsFiles],
) -> None:
    """A run on an engine reached over TCP with verified TLS completes there."""
    engine, client, _ = tls_engine
    entry = tls_entry(engine, client.ca, client)
    api = await start_app(sim_config(engines=[entry]))
    run_id = await api.run(gds("chip_top"))
    assert (await api.wait(run_id, timeout=60))["Status"] == "completed"
    assert (await api.get(run_id))["Engine"] == "far"
    await engine.docker("rm", "-f", *(await engine.output("ps", "-aq")).split(), check=False)


async def test_tls_engine_with_a_wrong_authority_is_refused(
    start_app: StartApp,
    sim_config: Callable[..., Config],
    tls_engine: tuple[PrivateEngine, TlsFiles, TlsFiles],
) -> None:
    """Trusting another authority than the one that signed the engine's certificate, the
    server refuses the engine: `/health` says why, and runs wait with that reason."""
    engine, client, stranger = tls_engine
    entry = tls_entry(engine, stranger.ca, client)
    api = await start_app(sim_config(engines=[entry]))
    async with asyncio.timeout(20):
        while True:
            health = await (await api.client.get("/health")).json()
            (far,) = health["docker"]["engines"]
            if far["error"] != "not connected yet":
                break
            await asyncio.sleep(0.05)
    assert far["reachable"] is False
    assert "TLS" in far["error"] and "not trusted" in far["error"], far["error"]
    run_id = await api.run(gds("chip_top"))
    async with asyncio.timeout(20):
        while not (waiting := (await api.get(run_id))["Queue"]["Waiting"]):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert "engine far is unreachable (TLS" in waiting, waiting


@pytest.fixture
def process(tmp_path: Path, simulator_image: str) -> Iterator[ServerProcess]:
    """A server process on a fresh storage folder, stopped afterwards."""
    s = ServerProcess(tmp_path, simulator_image)
    yield s
    s.stop()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session without keep-alive, so a killed server costs no request."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


async def test_kill_9_with_runs_on_two_engines_adopts_both(
    process: ServerProcess, session: aiohttp.ClientSession, on_second: PrivateEngine
) -> None:
    """A server killed with SIGKILL while runs go on on two engines adopts both after its
    restart, each on its own engine, with no retry and no stray."""
    server = process
    server.write_config(
        engine_grace_seconds=30,
        engines=[
            {"name": "main", "url": DEFAULT_ENGINE_URL},
            {"name": "second", "url": on_second.url},
        ],
    )
    api = Http(session, server.url)
    server.start()
    runs = [await api.run(gds("chip_top", "step_sleep=0.5")) for _ in range(2)]
    for run_id in runs:
        await api.until(run_id, lambda d: (d["Progress"] or {}).get("Step", 0) >= 2)
    docs = [await api.get(f"/api/v1/prechecks/{r}") for r in runs]
    assert sorted(d["Engine"] for d in docs) == ["main", "second"]
    server.kill()
    server.start()
    for run_id, before in zip(runs, docs, strict=True):
        assert (await api.wait(run_id))["StatusCode"] == 0
        doc = await api.get(f"/api/v1/prechecks/{run_id}")
        assert doc["State"]["Status"] == "completed"
        assert (doc["Engine"], doc["ContainerId"]) == (before["Engine"], before["ContainerId"])
        assert len(doc["Attempts"]) == 1
    assert (await api.get("/api/v1/events?type=run.retried"))["events"] == []
    assert len((await api.get("/api/v1/events?type=run.started"))["events"]) == 2
    assert (await api.get("/api/v1/events?type=server.stray-container-removed"))["events"] == []


async def test_system_failure_is_retried_up_to_max_attempts_and_design_never(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """An OOM is retried (same id, next attempt) until `max_attempts`, then fails with every
    attempt in its document; a design failure is never retried."""
    api = await start_app(sim_config(memory_limit="64m", max_attempts=2))
    oom = await api.run(gds("chip_top", "oom=256"))
    design = await api.run(gds("chip_top", "fail=KLayout.CheckSize"))
    assert (await api.wait(oom, timeout=60))["Status"] == "failed"
    assert (await api.wait(design, timeout=60))["Status"] == "failed"
    doc = await api.get(oom)
    assert doc["Result"]["Classification"] == "system" and doc["State"]["OOMKilled"] is True
    attempts = doc["Attempts"]
    assert [(a["Attempt"], a["Engine"], a["ExitCode"]) for a in attempts] == [
        (1, "local", 1),  # the real flow's exit when the kernel kills a step's process
        (2, "local", 1),
    ]
    retried = [r.event for r in await api.events("run.retried", oom)]
    assert len(retried) == 1 and isinstance(retried[0], RunRetried)
    assert (retried[0].attempt, retried[0].engine) == (2, "local")
    assert len(await api.events("run.started", oom)) == 2
    assert len((await api.get(design))["Attempts"]) == 1
    assert await api.events("run.retried", design) == []
    first = await api.logs(oom, attempt=1)
    assert first["lines"] and first["last_line"] <= retried[0].after_line
    r = await api.client.get(f"/api/v1/prechecks/{oom}/logs", params={"attempt": "3"})
    assert r.status == 400
