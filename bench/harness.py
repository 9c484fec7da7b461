"""What the benchmarks share: figures and their printing, server processes, the app in this
process, a watcher of Docker's events, the simulator image, and clean-up.

The precheck package and aiodocker are imported where they are used, so that a helper process
that only generates load (see `http_bench`) starts without them.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from tests.simulator_config import CACHE_OFF, PREFLIGHT_OFF, simulator_docker, toml_text

if TYPE_CHECKING:
    from aiohttp import web

    from precheck.config import Config

ROOT = Path(__file__).resolve().parents[1]
LONG = aiohttp.ClientTimeout(total=None, sock_read=None)
Results = dict[str, list[str]]  # summary lines per part, printed at the end
Part = Callable[[Path, str, Results], Awaitable[None]]  # (temp folder, image tag, results)


# Figures ---------------------------------------------------------------------------------------


def docker_time(text: str) -> float:
    """Docker's RFC 3339 UTC text with nanoseconds as unix seconds (float, ~0.1 us precision)."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    return seconds + int((frac + "000000000")[:9]) / 1e9


def rank_index(count: int, p: float) -> int:
    """Index of the nearest-rank `p` percentile in `count` sorted values."""
    return max(0, math.ceil(p / 100 * count) - 1)


def pct(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 30 samples is the largest)."""
    s = sorted(values)
    return float(s[rank_index(len(s), p)])


def med(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def ms(x: float) -> str:
    return f"{x * 1000:8.1f} ms"


def verdict(ok: bool, passed: str = "PASS", missed: str = "MISS") -> str:
    return passed if ok else missed


def machine_line(*extra: str, note: bool = False) -> str:
    """Python, CPUs, `extra`, load average: what a reader needs to weigh the figures."""
    parts = [f"python {sys.version.split()[0]}", f"{os.cpu_count()} CPUs", *extra]
    parts.append(f"load average {os.getloadavg()[0]:.1f}")
    return ", ".join(parts) + (" (other work on this machine adds noise)" if note else "")


class Timer:
    """Wall and CPU seconds of a block; CPU time shows when other processes took the cores."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


# Processes and files ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def temp_folder(prefix: str, parent: str | None = None) -> Iterator[Path]:
    """A new folder, removed with all it holds at the end of the block."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_layout(path: Path, first: bytes, block: bytes, size: int, fsync: bool = False) -> str:
    """`first`, then `block` over and over, `size` bytes in all; the file's sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        f.write(first)
        digest.update(first)
        left = size - len(first)
        while left > 0:
            piece = block[: min(left, len(block))]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return digest.hexdigest()


def curl_post(path: Path, url: str) -> list[str]:
    """The command that POSTs `path` as a raw body, streamed from disk; prints the body, then
    the status code on a line of its own."""
    return [
        "curl", "-sS", "-X", "POST", "-T", str(path), "-H", "Expect:",
        "-H", "Content-Type: application/octet-stream", "-w", "\n%{http_code}", url,
    ]  # fmt: skip


def config_text(server: Mapping[str, object], docker: Mapping[str, object] | None = None) -> str:
    """A server config file: `[server]`, then `[docker]` if given, and pre-flight off (the
    benches send the simulator's small layouts, which it would refuse; it has its own bench,
    preflight_bench), the result cache off (they time real runs; it has its own, cache_bench)."""
    docker_table = {} if docker is None else {"docker": docker}
    tables = {"server": server, **docker_table, "preflight": PREFLIGHT_OFF, "cache": CACHE_OFF}
    return toml_text(tables)


def docker_section(image: str, prefix: str, memory_limit: str = "1g") -> dict[str, object]:
    """The `[docker]` settings of a bench server: the simulator image, and container names
    under `prefix` so clean-up finds every container the bench caused."""
    return simulator_docker(image, container_prefix=prefix, memory_limit=memory_limit)


class ServerProcess:
    """`python -m precheck serve` as its own process on a free port; output to a log file."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Any, log: Path, base: str) -> None:
        self.proc, self._out, self.log, self.base = proc, out, log, base

    @classmethod
    async def start(
        cls,
        tmp: Path,
        name: str,
        server: Mapping[str, object],
        docker: Mapping[str, object],
        profile_to: Path | None = None,
    ) -> ServerProcess:
        port = free_port()
        config = tmp / f"{name}.toml"
        config.write_text(
            config_text({"host": "127.0.0.1", "port": port, **server}, docker), encoding="utf-8"
        )
        log = tmp / f"{name}-server.log"
        out = log.open("wb")
        command = [sys.executable]
        if profile_to is not None:
            command += ["-m", "cProfile", "-o", str(profile_to)]
        command += ["-m", "precheck", "serve", "--config", str(config)]
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
        return cls(proc, out, log, f"http://127.0.0.1:{port}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        """Until /health answers and says Docker is reachable; then a moment for the
        supervisor to connect and settle."""
        for _ in range(600):
            if self.proc.returncode is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text(errors='replace')}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.base + "/health") as r:
                    health = await r.json()
                    if r.status == 200 and (health.get("docker") or {}).get("reachable"):
                        break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the server did not become ready")
        await asyncio.sleep(0.5)

    async def stop(self, seconds: float) -> None:
        """SIGINT, as Ctrl-C would; killed if it has not exited after `seconds`."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), seconds)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._out.close()


# Watching Docker from outside ------------------------------------------------------------------


class DockerWatch:
    """Our own subscription to Docker's container events for one label; times per run and
    action. With `inspect_start`, each started container is inspected for its State.StartedAt
    and a wait for `start` returns once that is known."""

    def __init__(self, label: str, inspect_start: bool = False) -> None:
        import aiodocker

        self.label = label
        self.inspect_start = inspect_start
        self.docker = aiodocker.Docker()
        self.at: dict[str, dict[str, float]] = defaultdict(dict)  # run -> action -> timeNano (s)
        self.seen: dict[str, dict[str, float]] = defaultdict(dict)  # run -> action -> received
        self.started_at: dict[str, float] = {}  # run -> inspected State.StartedAt
        self.container: dict[str, str] = {}
        self._waiters: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._inspects: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        info = await self.docker._query_json("info")
        since = f"{docker_time(info['SystemTime']) - 1:.6f}"
        ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._follow(since, ready))
        await ready

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for t in list(self._inspects):
            t.cancel()
        await asyncio.gather(*self._inspects, return_exceptions=True)
        await self.docker.close()

    async def _follow(self, since: str, ready: asyncio.Future[None]) -> None:
        filters = {
            "type": ["container"],
            "label": [self.label],
            "event": ["start", "die", "destroy"],
        }
        params = {"filters": json.dumps(filters), "since": since}
        async with self.docker._query("events", params=params, timeout=LONG) as response:
            ready.set_result(None)
            async for raw in response.content:
                if not raw.strip():
                    continue
                received = time.time()
                event = json.loads(raw)
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                run_id = attributes.get("precheck.run")
                action = event.get("Action") or event.get("status")
                if not run_id or action not in ("start", "die", "destroy"):
                    continue
                self.at[run_id][action] = event["timeNano"] / 1e9
                self.seen[run_id][action] = received
                self.container[run_id] = event["Actor"]["ID"]
                if action == "start" and self.inspect_start:
                    t = asyncio.create_task(self._inspect_start(run_id, event["Actor"]["ID"]))
                    self._inspects.add(t)
                    t.add_done_callback(self._inspects.discard)
                else:
                    self._fire(run_id, action)

    async def _inspect_start(self, run_id: str, container_id: str) -> None:
        import aiodocker

        try:
            info = await self.docker._query_json(f"containers/{container_id}/json")
            self.started_at[run_id] = docker_time(info["State"]["StartedAt"])
        except aiodocker.DockerError:
            pass  # removed already: fall back to the start event's time
        self._fire(run_id, "start")

    def _fire(self, run_id: str, action: str) -> None:
        f = self._waiters.pop((run_id, action), None)
        if f is not None and not f.done():
            f.set_result(None)

    async def wait(self, run_id: str, action: str, seconds: float = 120) -> None:
        if action in self.at.get(run_id, {}) and (
            action != "start" or not self.inspect_start or run_id in self.started_at
        ):
            return
        f = self._waiters.setdefault((run_id, action), asyncio.get_running_loop().create_future())
        await asyncio.wait_for(asyncio.shield(f), seconds)

    def start_time(self, run_id: str) -> float:
        return self.started_at.get(run_id) or self.at[run_id]["start"]


# The app in this process -----------------------------------------------------------------------


def bench_config(
    storage: Path,
    image: str,
    prefix: str,
    source: str,
    cache: Mapping[str, object] = CACHE_OFF,
    **server: Any,
) -> Config:
    from precheck.config import parse_config

    raw = {
        "server": {"storage_path": str(storage), "upload_expiry_minutes": 1440, **server},
        "docker": docker_section(image, prefix),
        "preflight": PREFLIGHT_OFF,
        "cache": cache,
    }
    return parse_config(raw, source)


class LocalServer:
    """The app with its supervisor in this process (`web.AppRunner` + `TCPSite` on 127.0.0.1),
    and a client session to call it."""

    def __init__(self, config: Config) -> None:
        from aiohttp import web

        from precheck.app import create_app

        self.app: web.Application = create_app(config)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.base = ""
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LocalServer:
        from aiohttp import web

        from precheck.web import keys

        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        supervisor = self.app[keys.SUPERVISOR]
        for _ in range(200):
            if supervisor.docker_reachable:
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"supervisor cannot reach Docker: {supervisor.docker_error}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        await self.runner.cleanup()

    @property
    def instance(self) -> str:
        from precheck.web import keys

        return str(self.app[keys.PROJECTIONS].instance_id)

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.session is not None
        async with self.session.request(method, self.base + path, **kwargs) as r:
            body = await r.read()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {body[:300]!r}")
            return json.loads(body)

    async def upload(self, data: bytes, name: str = "chip_top.gds") -> str:
        doc = await self.call(
            "POST", f"/api/v1/uploads?name={name}", data=data,
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        return str(doc["Id"])

    async def queue(self, upload_id: str, top: str = "chip_top") -> str:
        doc = await self.call(
            "POST", "/api/v1/prechecks", json={"upload_id": upload_id, "top_cell": top}
        )
        return str(doc["Id"])

    async def wait(self, run_id: str, seconds: float = 120) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "POST", f"/api/v1/prechecks/{run_id}/wait?timeout={seconds}"
        )
        return result


@contextlib.asynccontextmanager
async def local_app(
    config: Config, inspect_start: bool = False
) -> AsyncIterator[tuple[LocalServer, DockerWatch]]:
    """The app in this process, and a watch of the Docker events of its runs."""
    async with LocalServer(config) as server:
        watch = DockerWatch(f"precheck.instance={server.instance}", inspect_start)
        await watch.start()
        try:
            yield server, watch
        finally:
            await watch.close()


# The simulator image, clean-up and the parts of a Docker bench ---------------------------------


def build_image(tag: str, log: Path) -> None:
    with log.open("wb") as err:
        r = subprocess.run(
            ["bash", str(ROOT / "simulator" / "build.sh"), tag],
            stdout=subprocess.PIPE, stderr=err, timeout=300,
        )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"simulator build failed:\n{log.read_text(errors='replace')[-2000:]}")


def remove_containers(filters: Iterable[str]) -> int:
    """Remove every container that one of Docker's `filters` selects; how many there were."""
    ids: set[str] = set()
    for f in filters:
        r = subprocess.run(["docker", "ps", "-aq", "--filter", f], capture_output=True, text=True)
        ids.update(r.stdout.split())
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    return len(ids)


def run_parts(
    parts: Iterable[int],
    benches: Mapping[int, Part],
    *,
    image: str | None,
    tag: str,
    tmp_prefix: str,
    container_filters: Iterable[str],
    machine: Iterable[str] = (),
) -> None:
    """Run the numbered parts, each in its own event loop, against the simulator `image` (or one
    built under `tag`); then remove the containers, the built tag and the temp folder, print
    the summary lines, and exit 1 if a part failed."""
    results: Results = {}
    failed = False
    t_all = time.monotonic()
    tag = image or tag
    with temp_folder(tmp_prefix) as tmp:
        try:
            print(machine_line(f"aiohttp {aiohttp.__version__}", *machine, note=True))
            if not image:
                t = time.monotonic()
                build_image(tag, tmp / "build.log")
                print(f"simulator image {tag} built in {time.monotonic() - t:.1f} s")
            for n in parts:
                try:
                    asyncio.run(_part(benches[n], tmp, tag, results))
                except Exception:
                    failed = True
                    print(f"{n}. FAILED:\n{traceback.format_exc()}")
                sys.stdout.flush()
        finally:
            n = remove_containers(container_filters)
            if n:
                print(f"removed {n} leftover container(s)")
            if not image:
                subprocess.run(["docker", "rmi", tag], capture_output=True)
    print("summary:")
    for lines in results.values():
        for line in lines:
            print(f"   {line}")
    print(f"total {time.monotonic() - t_all:.0f} s, load average now {os.getloadavg()[0]:.1f}")
    if failed:
        sys.exit(1)


async def _part(bench: Part, tmp: Path, tag: str, results: Results) -> None:
    await bench(tmp, tag, results)
