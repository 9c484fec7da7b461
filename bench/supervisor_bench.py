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

Run: `python -m bench.supervisor_bench` (about 2-3 minutes; `--only N` for one part).
Builds the simulator under a private tag and removes the tag, the containers and the temp dirs
at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from bench.harness import (
    DockerWatch,
    LocalServer,
    Results,
    ServerProcess,
    bench_config,
    curl_post,
    docker_section,
    docker_time,
    local_app,
    ms,
    pct,
    proc_memory,
    run_parts,
    verdict,
    write_layout,
)
from precheck.events.store import RecordedEvent
from precheck.events.types import RunExited, RunOutputsStored, RunStarted
from precheck.runner.container_spec import container_spec
from precheck.web import keys
from tests import layouts

EXIT_RUNS = 30
EXIT_WARMUP = 1
HANDOFF_RUNS = 20
BARE_TRIES = 20
BIG_BYTES = 1 << 30
TOKEN = uuid.uuid4().hex[:10]
PREFIX = f"precheck-bench-{TOKEN}-"  # container names of every run this bench causes
BARE_LABEL = "precheck.bench-bare"


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
        # The run's end holds the supervisor's `_facts` already bound: wrap its own reference.
        self._wrap(supervisor.run_end, "facts_of", lambda a, r: a[0].id, name_as="facts")

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

        # On the instance, frozen classes too (`RunEnd` is): the wrapper only observes.
        object.__setattr__(obj, name, wrapper)

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


async def with_local(
    tmp: Path,
    image: str,
    name: str,
    body: Callable[[LocalServer, DockerWatch, Probe, Applied], Awaitable[None]],
) -> None:
    config = bench_config(tmp / f"{name}-data", image, PREFIX, "supervisor-bench", max_concurrent=1)
    async with local_app(config, inspect_start=True) as (server, watch):
        applied = Applied()
        server.app[keys.STORE].add_listener(applied)  # after the projections' own listener
        probe = Probe(server.app[keys.SUPERVISOR])
        await body(server, watch, probe, applied)


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


async def bench_exit(tmp: Path, image: str, results: Results) -> None:
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


async def bench_handoff(tmp: Path, image: str, results: Results) -> None:
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
            spec = container_spec(
                server.app[keys.PROJECTIONS].runs.by_id[runs[0]],
                server.app[keys.CONFIG].docker,
                server.instance,
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


async def bench_logs(tmp: Path, image: str, results: Results) -> None:
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


async def bench_big(tmp: Path, image: str, results: Results) -> None:
    layout = tmp / "big.gds"
    top = f"bench_{TOKEN}"  # a unique top cell: its label selects this run's Docker events
    t0 = time.monotonic()
    head = layouts.gds(top)
    line = (bytes(range(32, 127)) * 44)[:4095] + b"\n"  # text lines of 4 KiB: cheap to grep
    sha = write_layout(layout, head, line * 256, BIG_BYTES)
    print("4. 1 GiB layout through a whole run (server process: python -m precheck serve)")
    print(f"   layout written in {time.monotonic() - t0:.1f} s, sha256 {sha[:16]}...")
    server = await ServerProcess.start(
        tmp,
        "big",
        {
            "storage_path": str(tmp / "big-data"),
            "max_upload_mb": 2048,
            "upload_expiry_minutes": 60,
            "max_concurrent": 1,
        },
        docker_section(image, PREFIX, memory_limit="4g"),
    )
    base = server.base
    watch = DockerWatch(f"precheck.top_cell={top}", inspect_start=True)
    await watch.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:
            await server.wait_ready(session)
            before = proc_memory(server.pid)

            t = time.monotonic()
            curl = await asyncio.create_subprocess_exec(
                *curl_post(layout, base + "/api/v1/uploads?name=big.gds"),
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
            after = proc_memory(server.pid)
            await watch.wait(run_id, "die")
    finally:
        await watch.close()
        await server.stop(30)
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


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.supervisor_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", type=int, choices=(1, 2, 3, 4), action="append")
    parser.add_argument("--image", help="use this simulator tag instead of building one")
    args = parser.parse_args()
    run_parts(
        args.only or [1, 2, 3, 4],
        {1: bench_exit, 2: bench_handoff, 3: bench_logs, 4: bench_big},
        image=args.image,
        tag=f"precheck-simulator:bench-{TOKEN}",
        tmp_prefix="precheck-supervisor-bench-",
        container_filters=(f"name={PREFIX}", f"label={BARE_LABEL}={TOKEN}"),
    )


if __name__ == "__main__":
    main()
