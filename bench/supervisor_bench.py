"""Supervisor benchmarks: real Docker engine, the simulator image, real HTTP on loopback.

1. Container exit -> run document final: 30 sequential quick passing runs (max_concurrent 1).
   Latency = wall time a store listener saw the projection apply `run.exited` (listeners run in
   registration order and the projections' listener is registered first, so this is just after
   the apply) minus Docker's `State.FinishedAt` of the container. FinishedAt is taken from the
   supervisor's own inspect (a wrapper keeps its result; the container is removed afterwards);
   the `die` event's `timeNano`, from a separate Docker events subscription, is the fallback and
   is shown too: dockerd emits `die` some 20-40 ms after FinishedAt.
   Also: how that latency splits (by timing the supervisor's own Docker calls through thin
   wrappers set on the running instance; no project file is changed).
2. Hand-off: 20 runs queued back to back; next container `State.StartedAt` (inspected on its
   `start` event) minus the previous container's `State.FinishedAt`; against a bare aiodocker
   `containers.create` + `start` of the same image and the same create body (20 tries),
   `State.StartedAt` minus the time before `create`.
3. Log latency: a run with `step_sleep=0.2`; a follower awaits `wait_for_line` and then
   fetches `GET /api/v1/prechecks/{id}/logs?after_line=N&timestamps=1` over HTTP; latency = the
   time the line arrived in an HTTP response minus the line's Docker timestamp.
4. A 1 GiB layout through a whole run, the server as its own process (`python -m precheck
   serve`): upload, run, download; sha256 of output == input; server RSS growth.

For 1-3 the app runs in this process (`web.AppRunner` + `TCPSite` on 127.0.0.1).

Run: `python bench/supervisor_bench.py` (about 2-3 minutes; `--only N` for one part).
Builds the simulator under a private tag and removes the tag, the containers and the temp dirs
at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import hashlib
import importlib.util
import itertools
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
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiodocker  # noqa: E402
import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from precheck import keys  # noqa: E402
from precheck.app import create_app  # noqa: E402
from precheck.config import parse_config  # noqa: E402
from precheck.events.store import RecordedEvent  # noqa: E402
from precheck.events.types import RunExited, RunOutputsStored, RunStarted  # noqa: E402


def _load_layouts() -> Any:
    spec = importlib.util.spec_from_file_location("bench_layouts", ROOT / "tests" / "layouts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


layouts = _load_layouts()

EXIT_RUNS = 30
EXIT_WARMUP = 1
HANDOFF_RUNS = 20
BARE_TRIES = 20
BIG_BYTES = 1 << 30
TOKEN = uuid.uuid4().hex[:10]
PREFIX = f"precheck-bench-{TOKEN}-"  # container names of every run this bench causes
BARE_LABEL = "precheck.bench-bare"
LONG = aiohttp.ClientTimeout(total=None, sock_read=None)


# Small helpers ---------------------------------------------------------------------------------


def docker_time(text: str) -> float:
    """Docker's RFC 3339 UTC text with nanoseconds as unix seconds (float, ~0.1 us precision)."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    return seconds + int((frac + "000000000")[:9]) / 1e9


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 30 samples is the largest)."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def ms(x: float) -> str:
    return f"{x * 1000:8.1f} ms"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_config(storage: Path, image: str, **server: Any) -> Any:
    raw = {
        "server": {"storage_path": str(storage), "upload_expiry_minutes": 1440, **server},
        "docker": {
            "image": image,
            "pull": "never",
            "container_prefix": PREFIX,
            "memory_limit": "1g",
        },
    }
    return parse_config(raw, "supervisor-bench")


# Watching Docker from outside ------------------------------------------------------------------


class DockerWatch:
    """Our own subscription to Docker's events for one label; times per run and action."""

    def __init__(self, label: str) -> None:
        self.label = label
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
                if action == "start":
                    t = asyncio.create_task(self._inspect_start(run_id, event["Actor"]["ID"]))
                    self._inspects.add(t)
                    t.add_done_callback(self._inspects.discard)
                else:
                    self._fire(run_id, action)

    async def _inspect_start(self, run_id: str, container_id: str) -> None:
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
        if action in self.at.get(run_id, {}) and (action != "start" or run_id in self.started_at):
            return
        f = self._waiters.setdefault((run_id, action), asyncio.get_running_loop().create_future())
        await asyncio.wait_for(asyncio.shield(f), seconds)

    def start_time(self, run_id: str) -> float:
        return self.started_at.get(run_id) or self.at[run_id]["start"]


# Timing the supervisor's own steps --------------------------------------------------------------


class Probe:
    """Thin timing wrappers around the running supervisor's Docker calls, set on the instance.

    Keyed by run id; each entry is a list of (t_call, t_return) wall times. A wrapper only
    observes: it passes arguments, results and exceptions through unchanged, and a method that
    is not there (the supervisor changed) is simply not timed.
    """

    def __init__(self, supervisor: Any) -> None:
        self.calls: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.run_of: dict[str, str] = {}
        self.finished_at: dict[str, float] = {}  # run -> State.FinishedAt its inspect returned
        engine = supervisor.engine
        self._wrap(engine, "create", lambda a, r: a[1]["Labels"]["precheck.run"], bind=True)
        for name in ("put_archive", "start", "inspect", "remove"):
            self._wrap(engine, name, lambda a, r: self.run_of.get(a[0], "?"))
        self._wrap(supervisor, "_image", lambda a, r: "_any", name_as="image")
        self._wrap(supervisor, "_facts", lambda a, r: a[0].id, name_as="facts")

    def _wrap(
        self,
        obj: Any,
        name: str,
        key: Callable[[tuple[Any, ...], Any], str],
        bind: bool = False,
        name_as: str | None = None,
    ) -> None:
        orig = getattr(obj, name, None)
        if orig is None:
            return

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.time()
            result: Any = None
            try:
                result = await orig(*args, **kwargs)
                return result
            finally:
                self._note(name_as or name, t0, args, result, key, bind)

        setattr(obj, name, wrapper)

    def _note(
        self,
        name: str,
        t0: float,
        args: tuple[Any, ...],
        result: Any,
        key: Callable[[tuple[Any, ...], Any], str],
        bind: bool,
    ) -> None:
        t1 = time.time()
        try:
            run_id = key(args, result)
        except Exception:
            run_id = "?"
        if bind and isinstance(result, str):
            self.run_of[result] = run_id
        finished = getattr(result, "finished_at", "")
        if isinstance(finished, str) and finished and not finished.startswith("0001-"):
            if not getattr(result, "running", True):
                self.finished_at[run_id] = docker_time(finished)
        self.calls[run_id][name].append((t0, t1))

    def first_after(self, run_id: str, name: str, t: float) -> tuple[float, float] | None:
        found = [c for c in self.calls.get(run_id, {}).get(name, []) if c[0] >= t - 0.001]
        return min(found) if found else None

    def image_call_before(self, t: float, after: float) -> tuple[float, float] | None:
        found = [c for c in self.calls["_any"]["image"] if after - 0.001 <= c[0] <= t]
        return min(found) if found else None


class Applied:
    """Store listener: wall time the projections applied each run's `run.exited` (the run
    document shows its final state from then on) and `run.outputs-stored`."""

    def __init__(self) -> None:
        self.finished: dict[str, tuple[float, RecordedEvent]] = {}
        self.stored: dict[str, tuple[float, RecordedEvent]] = {}
        self.started: dict[str, tuple[float, RecordedEvent]] = {}

    def __call__(self, r: RecordedEvent) -> None:
        if isinstance(r.event, RunExited):
            self.finished[r.event.run_id] = (time.time(), r)
        elif isinstance(r.event, RunOutputsStored):
            self.stored[r.event.run_id] = (time.time(), r)
        elif isinstance(r.event, RunStarted):
            self.started[r.event.run_id] = (time.time(), r)


# The app in this process -----------------------------------------------------------------------


class LocalServer:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.app = create_app(config)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.base = ""
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LocalServer:
        await self.runner.setup()
        port = free_port()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
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
            "POST",
            f"/api/v1/uploads?name={name}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
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


async def with_local(
    tmp: Path,
    image: str,
    name: str,
    body: Callable[[LocalServer, DockerWatch, Probe, Applied], Awaitable[None]],
) -> None:
    config = bench_config(tmp / f"{name}-data", image, max_concurrent=1)
    async with LocalServer(config) as server:
        applied = Applied()
        server.app[keys.STORE].add_listener(applied)  # after the projections' own listener
        probe = Probe(server.app[keys.SUPERVISOR])
        watch = DockerWatch(f"precheck.instance={server.instance}")
        await watch.start()
        try:
            await body(server, watch, probe, applied)
        finally:
            await watch.close()


# 1. Exit -> final state ------------------------------------------------------------------------


def exit_time(run_id: str, watch: DockerWatch, probe: Probe) -> float:
    """Docker's State.FinishedAt (from the supervisor's own inspect), else the die event's time."""
    return probe.finished_at.get(run_id) or watch.at[run_id]["die"]


def exit_split(run_id: str, watch: DockerWatch, probe: Probe, applied: Applied) -> dict[str, float]:
    """Segments from the container's exit to the applied `run.exited` (seconds)."""
    die = watch.at[run_id]["die"]
    finished = exit_time(run_id, watch, probe)
    t_applied, rec = applied.finished[run_id]
    at = rec.event.at.timestamp()
    recorded = rec.recorded.timestamp()
    out = {"total": t_applied - finished, "seen_by_bench": watch.seen[run_id]["die"] - die}
    out["FinishedAt -> die event (inside dockerd)"] = die - finished
    inspect = probe.first_after(run_id, "inspect", die)
    facts = probe.first_after(run_id, "facts", die)
    if inspect and facts:
        out["die -> supervisor inspects"] = inspect[0] - die
        out["inspect"] = inspect[1] - inspect[0]
        out["wait for log capture (facts)"] = facts[1] - facts[0]
        out["verdict built (facts -> event)"] = at - facts[1]
    else:
        out["die -> event built (at)"] = at - die
    out["append queued (at -> recorded)"] = recorded - at
    out["commit + apply (recorded -> applied)"] = t_applied - recorded
    if run_id in applied.stored:
        out["then outputs copied out and stored"] = applied.stored[run_id][0] - t_applied
    return out


def print_split(title: str, splits: list[dict[str, float]]) -> None:
    print(f"   {title} (median / p99 over {len(splits)} runs):")
    names = list(dict.fromkeys(k for s in splits for k in s))  # every segment, in order
    for k in names:
        if k in ("total", "seen_by_bench"):
            continue
        vals = [s[k] for s in splits if k in s]
        n = "" if len(vals) == len(splits) else f"  ({len(vals)} runs)"
        print(f"      {k:42s} {ms(statistics.median(vals))}  {ms(pct(vals, 99))}{n}")


async def bench_exit(tmp: Path, image: str, results: dict[str, list[str]]) -> None:
    async def body(server: LocalServer, watch: DockerWatch, probe: Probe, applied: Applied) -> None:
        upload = await server.upload(layouts.gds("chip_top"))
        runs: list[str] = []
        for i in range(EXIT_WARMUP + EXIT_RUNS):
            run_id = await server.queue(upload)
            ended = await server.wait(run_id)
            doc = await server.call("GET", f"/api/v1/prechecks/{run_id}")
            if ended["Status"] != "completed" or doc["State"]["Status"] != "completed":
                raise RuntimeError(f"run {run_id} did not pass: {ended} {doc['State']}")
            await watch.wait(run_id, "die")
            await watch.wait(run_id, "destroy")  # a quiet engine before the next run
            if i >= EXIT_WARMUP:
                runs.append(run_id)
        splits = [exit_split(r, watch, probe, applied) for r in runs]
        lat = [s["total"] for s in splits]
        p50, p99 = statistics.median(lat), pct(lat, 99)
        print(
            f"1. container exit -> run document final: {len(lat)} sequential quick passing runs,"
            f" max_concurrent 1 ({EXIT_WARMUP} warm-up run not counted)"
        )
        exact = sum(r in probe.finished_at for r in runs)
        print(
            f"   latency = projection applied run.exited - State.FinishedAt"
            f" ({exact} of {len(runs)} from inspect, the rest from the die event)"
        )
        print(f"   p50 {ms(p50)}   (target < 50 ms)   {verdict(p50 < 0.050)}")
        print(
            f"   p99 {ms(p99)}   (target < 200 ms)  {verdict(p99 < 0.200)}"
            f"   (nearest rank: the largest of {len(lat)})"
        )
        print(f"   min {ms(min(lat))}   max {ms(max(lat))}")
        print(
            f"   die event reached a separate subscriber after: median "
            f"{ms(statistics.median(s['seen_by_bench'] for s in splits)).strip()}"
        )
        print_split("split", splits)
        results["exit"] = [
            f"exit -> final  p50 {ms(p50).strip()} (< 50 ms) {verdict(p50 < 0.050)},"
            f" p99 {ms(p99).strip()} (< 200 ms) {verdict(p99 < 0.200)}"
        ]

    await with_local(tmp, image, "exit", body)


# 2. Hand-off -----------------------------------------------------------------------------------


async def bench_handoff(tmp: Path, image: str, results: dict[str, list[str]]) -> None:
    async def body(server: LocalServer, watch: DockerWatch, probe: Probe, applied: Applied) -> None:
        upload = await server.upload(layouts.gds("chip_top"))
        # Warm-up run so the first pair does not pay for a cold engine.
        first = await server.queue(upload)
        await server.wait(first)
        await watch.wait(first, "destroy")
        runs = [await server.queue(upload) for _ in range(HANDOFF_RUNS)]
        for run_id in runs:
            ended = await server.wait(run_id)
            if ended["Status"] != "completed":
                raise RuntimeError(f"run {run_id} did not pass: {ended}")
        for run_id in runs:
            await watch.wait(run_id, "start")
            await watch.wait(run_id, "die")
        await watch.wait(runs[-1], "destroy")

        gaps, splits = [], []
        for prev, nxt in itertools.pairwise(runs):
            die = watch.at[prev]["die"]
            started = watch.start_time(nxt)
            gaps.append(started - exit_time(prev, watch, probe))
            s: dict[str, float] = {
                "FinishedAt -> die event (inside dockerd)": die - exit_time(prev, watch, probe)
            }
            create = probe.first_after(nxt, "create", die - 60)
            put = probe.first_after(nxt, "put_archive", die - 60)
            start = probe.first_after(nxt, "start", die - 60)
            image_call = probe.image_call_before(create[0], die) if create else None
            if create and put and create[0] >= die and image_call:
                s["die -> supervisor starts next"] = image_call[0] - die
                s["image inspect"] = image_call[1] - image_call[0]
                s["create"] = create[1] - create[0]
                s["put_archive (input in)"] = put[1] - put[0]
            elif create and create[0] < die:  # made ready before the previous one exited
                s["create + put_archive done before the exit"] = 0.0
            if start:
                s["= die -> start call (cumulative)"] = start[0] - die
                s["start call -> State.StartedAt"] = started - start[0]
                s["start call returns after StartedAt"] = start[1] - started
            splits.append(s)
        exit_busy = [exit_split(r, watch, probe, applied)["total"] for r in runs]

        # Bare aiodocker create + start, same image and create body, one at a time.
        docker = aiodocker.Docker()
        bare, bare_create = [], []
        try:
            spec = server.app[keys.SUPERVISOR].container_spec(
                server.app[keys.PROJECTIONS].runs.by_id[runs[0]]
            )
            spec = dict(spec, Cmd=["true"], Labels={BARE_LABEL: TOKEN})
            for i in range(BARE_TRIES + 1):
                t0 = time.time()
                c = await docker.containers.create(spec, name=f"{PREFIX}bare-{i}")
                t1 = time.time()
                try:
                    await c.start()
                    info = await c.show()
                    if i > 0:  # the first is a warm-up
                        bare.append(docker_time(info["State"]["StartedAt"]) - t0)
                        bare_create.append(t1 - t0)
                    await c.wait()
                finally:
                    await c.delete(force=True)
        finally:
            await docker.close()

        p50, bare50 = statistics.median(gaps), statistics.median(bare)
        diff = p50 - bare50
        print(
            f"2. hand-off: {HANDOFF_RUNS} runs queued back to back, max_concurrent 1;"
            f" next State.StartedAt - previous State.FinishedAt, {len(gaps)} pairs"
        )
        print(
            f"   ours p50 {ms(p50)}   (target < 500 ms)  {verdict(p50 < 0.5)}"
            f"   [min {ms(min(gaps)).strip()}, p99 {ms(pct(gaps, 99)).strip()}]"
        )
        print(
            f"   bare aiodocker create+start p50 {ms(bare50)}   (StartedAt - before create,"
            f" {len(bare)} tries; create alone p50 {ms(statistics.median(bare_create)).strip()})"
        )
        print(f"   ours - bare = {ms(diff).strip()}   (target <= 150 ms)  {verdict(diff <= 0.150)}")
        if splits:
            print_split("split of ours", splits)
        print(
            f"   (exit -> final state of these back-to-back runs: p50 "
            f"{ms(statistics.median(exit_busy)).strip()}, p99 {ms(pct(exit_busy, 99)).strip()};"
            f" no target: the next start competes with it)"
        )
        results["handoff"] = [
            f"hand-off       p50 {ms(p50).strip()} (< 500 ms) {verdict(p50 < 0.5)},"
            f" minus bare {ms(bare50).strip()} = {ms(diff).strip()} (<= 150 ms)"
            f" {verdict(diff <= 0.150)}"
        ]

    await with_local(tmp, image, "handoff", body)


# 3. Log latency --------------------------------------------------------------------------------


async def bench_logs(tmp: Path, image: str, results: dict[str, list[str]]) -> None:
    async def body(server: LocalServer, watch: DockerWatch, probe: Probe, applied: Applied) -> None:
        logs = server.app[keys.OUTPUT_LINES]
        upload = await server.upload(layouts.gds("chip_top", "step_sleep=0.2"))
        run_id = await server.queue(upload)
        ended = asyncio.ensure_future(server.wait(run_id))
        served: list[tuple[int, float, float, float]] = []  # line, docker time, woke, served

        async def follow() -> None:
            last = 0
            while True:
                waiter = asyncio.ensure_future(logs.wait_for_line(run_id, last))
                await asyncio.wait([waiter, ended], return_when=asyncio.FIRST_COMPLETED)
                woke = time.time()
                if not waiter.done():
                    waiter.cancel()
                page = await server.call(
                    "GET", f"/api/v1/prechecks/{run_id}/logs?after_line={last}&timestamps=1"
                )
                t = time.time()
                for i, text in enumerate(page["lines"]):
                    stamp = text.split(" ", 1)[0]
                    served.append((page["first_line"] + i, docker_time(stamp), woke, t))
                last = page["last_line"]
                if ended.done() and not page["lines"]:
                    return

        await follow()
        result = await ended
        if result["Status"] != "completed":
            raise RuntimeError(f"log run did not pass: {result}")
        numbers = [s[0] for s in served]
        if numbers != list(range(1, len(numbers) + 1)):
            raise RuntimeError("the follower missed or repeated lines")
        lat = [s[3] - s[1] for s in served]
        stored = [s[2] - s[1] for s in served]
        http = [s[3] - s[2] for s in served]
        p50, p99 = statistics.median(lat), pct(lat, 99)
        print(
            f"3. log latency: one run with step_sleep=0.2, {len(lat)} lines; follower awaits"
            f" OutputLineStore.wait_for_line then GETs ?after_line=N over HTTP"
        )
        print(f"   p50 {ms(p50)}   (target < 100 ms)  {verdict(p50 < 0.100)}")
        print(f"   p99 {ms(p99)}   max {ms(max(lat)).strip()}")
        print(
            f"   split (median / p99): Docker timestamp -> stored and reader woken"
            f" {ms(statistics.median(stored)).strip()} / {ms(pct(stored, 99)).strip()};"
            f" woken -> HTTP response in hand {ms(statistics.median(http)).strip()} / "
            f"{ms(pct(http, 99)).strip()}"
        )
        results["logs"] = [
            f"log latency    p50 {ms(p50).strip()} (< 100 ms) {verdict(p50 < 0.100)},"
            f" p99 {ms(p99).strip()}"
        ]

    await with_local(tmp, image, "logs", body)


# 4. 1 GiB layout through a whole run -----------------------------------------------------------


def make_big_layout(path: Path, size: int, top: str) -> str:
    """`tests.layouts.gds` header, then filler to `size` bytes; its sha256."""
    head = layouts.gds(top)
    line = (bytes(range(32, 127)) * 44)[:4095] + b"\n"  # text lines of 4 KiB: cheap to grep
    block = line * 256
    digest = hashlib.sha256()
    with path.open("wb") as f:
        f.write(head)
        digest.update(head)
        left = size - len(head)
        while left > 0:
            piece = block[: min(left, len(block))]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def proc_memory(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


async def bench_big(tmp: Path, image: str, results: dict[str, list[str]]) -> None:
    port = free_port()
    storage = tmp / "big-data"
    config = tmp / "big.toml"
    config.write_text(
        "[server]\n"
        f'host = "127.0.0.1"\nport = {port}\nstorage_path = "{storage}"\n'
        "max_upload_mb = 2048\nupload_expiry_minutes = 60\nmax_concurrent = 1\n"
        "[docker]\n"
        f'image = "{image}"\npull = "never"\nmemory_limit = "4g"\ncontainer_prefix = "{PREFIX}"\n',
        encoding="utf-8",
    )
    layout = tmp / "big.gds"
    top = f"bench_{TOKEN}"  # a unique top cell: its label selects this run's Docker events
    t0 = time.monotonic()
    sha = make_big_layout(layout, BIG_BYTES, top)
    print("4. 1 GiB layout through a whole run (server process: python -m precheck serve)")
    print(f"   layout written in {time.monotonic() - t0:.1f} s, sha256 {sha[:16]}...")
    log_path = tmp / "big-server.log"
    out = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "precheck",
        "serve",
        "--config",
        str(config),
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    watch = DockerWatch(f"precheck.top_cell={top}")
    await watch.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:
            for _ in range(600):
                if proc.returncode is not None:
                    raise RuntimeError(f"server exited:\n{log_path.read_text(errors='replace')}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(base + "/health") as r:
                        health = await r.json()
                        if r.status == 200 and (health.get("docker") or {}).get("reachable"):
                            break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # let the supervisor connect and settle
            before = proc_memory(proc.pid)

            t = time.monotonic()
            curl = await asyncio.create_subprocess_exec(
                "curl",
                "-sS",
                "-X",
                "POST",
                "-T",
                str(layout),
                "-H",
                "Expect:",
                "-H",
                "Content-Type: application/octet-stream",
                "-w",
                "\n%{http_code}",
                base + "/api/v1/uploads?name=big.gds",
                stdout=asyncio.subprocess.PIPE,
            )
            raw, _ = await curl.communicate()
            t_upload = time.monotonic() - t
            body, _, code = raw.rpartition(b"\n")
            if code != b"200":
                raise RuntimeError(f"upload failed: {code!r} {body[:300]!r}")
            up = json.loads(body)
            if up["Checksums"]["sha256"] != sha:
                raise RuntimeError("the upload's checksum differs from the file's")

            t = time.monotonic()
            async with session.post(
                base + "/api/v1/prechecks", json={"upload_id": up["Id"], "top_cell": top}
            ) as r:
                run = await r.json()
            run_id = run["Id"]
            async with session.post(base + f"/api/v1/prechecks/{run_id}/wait?timeout=600") as r:
                ended = await r.json()
            t_run = time.monotonic() - t
            t_answered = time.time()
            async with session.get(base + f"/api/v1/prechecks/{run_id}") as r:
                doc = await r.json()
            if ended.get("Status") != "completed":
                raise RuntimeError(f"big run did not pass: {ended} {doc['State']}")

            t = time.monotonic()
            digest, size = hashlib.sha256(), 0
            async with session.get(base + f"/api/v1/prechecks/{run_id}/output") as r:
                if r.status != 200:
                    raise RuntimeError(f"download failed: {r.status}")
                async for chunk in r.content.iter_chunked(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            t_download = time.monotonic() - t
            after = proc_memory(proc.pid)
            await watch.wait(run_id, "die")
    finally:
        await watch.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        out.close()
    same = digest.hexdigest() == sha and size == BIG_BYTES
    created = docker_time(doc["Created"])
    start, die = watch.start_time(run_id), watch.at[run_id]["die"]
    growth = (after["VmHWM"] - before["VmRSS"]) / 1e6
    gib = BIG_BYTES / (1 << 30)
    print(
        f"   upload   {t_upload:6.1f} s  ({BIG_BYTES / t_upload / 1e6:.0f} MB/s, curl -T, raw body)"
    )
    print(f"   run      {t_run:6.1f} s  (POST /prechecks -> /wait answered), of which:")
    print(
        f"      queued -> StartedAt     {start - created:6.1f} s  (create, input copied in, start)"
    )
    print(f"      StartedAt -> die        {die - start:6.1f} s  (the simulator in the container)")
    print(f"      die -> /wait answered   {t_answered - die:6.1f} s  (verdict, outputs copied out)")
    print(f"   download {t_download:6.1f} s  ({size / t_download / 1e6:.0f} MB/s)")
    print(
        f"   output sha256 {'equals' if same else 'DIFFERS FROM'} the input's"
        f" ({size / (1 << 30):.2f} of {gib:.0f} GiB)  {verdict(same)}"
    )
    print(
        f"   server memory: VmRSS before {before['VmRSS'] / 1e6:.1f} MB, VmHWM after"
        f" {after['VmHWM'] / 1e6:.1f} MB (VmRSS after {after['VmRSS'] / 1e6:.1f} MB)"
    )
    print(f"   growth {growth:.1f} MB   (target < 100 MB)  {verdict(growth < 100)}")
    results["big"] = [
        f"1 GiB run      output sha256 {verdict(same)}, server RSS growth {growth:.1f} MB"
        f" (< 100 MB) {verdict(growth < 100)}; upload {t_upload:.1f} s, run {t_run:.1f} s,"
        f" download {t_download:.1f} s"
    ]


# Setup and cleanup -----------------------------------------------------------------------------


def build_image(tag: str, log: Path) -> None:
    with log.open("wb") as err:
        r = subprocess.run(
            ["bash", str(ROOT / "simulator" / "build.sh"), tag],
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=300,
        )
    if r.returncode != 0:
        raise RuntimeError(f"simulator build failed:\n{log.read_text(errors='replace')[-2000:]}")


def remove_containers() -> int:
    ids: set[str] = set()
    for f in (f"name={PREFIX}", f"label={BARE_LABEL}={TOKEN}"):
        r = subprocess.run(["docker", "ps", "-aq", "--filter", f], capture_output=True, text=True)
        ids.update(r.stdout.split())
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    return len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, choices=(1, 2, 3, 4), action="append")
    parser.add_argument("--image", help="use this simulator tag instead of building one")
    args = parser.parse_args()
    parts = args.only or [1, 2, 3, 4]
    tmp = Path(tempfile.mkdtemp(prefix="precheck-supervisor-bench-"))
    tag = args.image or f"precheck-simulator:bench-{TOKEN}"
    results: dict[str, list[str]] = {}
    failed = False
    t_all = time.monotonic()
    try:
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, aiohttp"
            f" {aiohttp.__version__}, load average {os.getloadavg()[0]:.1f}"
            " (other work on this machine adds noise)"
        )
        if not args.image:
            t = time.monotonic()
            build_image(tag, tmp / "build.log")
            print(f"simulator image {tag} built in {time.monotonic() - t:.1f} s")
        benches = {1: bench_exit, 2: bench_handoff, 3: bench_logs, 4: bench_big}
        for n in parts:
            try:
                asyncio.run(benches[n](tmp, tag, results))
            except Exception:
                failed = True
                print(f"{n}. FAILED:\n{traceback.format_exc()}")
            sys.stdout.flush()
    finally:
        n = remove_containers()
        if n:
            print(f"removed {n} leftover container(s)")
        if not args.image:
            subprocess.run(["docker", "rmi", tag], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print("summary:")
    for lines in results.values():
        for line in lines:
            print(f"   {line}")
    print(f"total {time.monotonic() - t_all:.0f} s, load average now {os.getloadavg()[0]:.1f}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
