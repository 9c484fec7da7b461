"""SSE benchmarks: real Docker engine, the simulator image, real HTTP on loopback.

1. Line -> SSE client latency. 3 runs with `sleep=1 step_sleep=0.2` (a burst of 2-4 lines
   every ~0.2 s). In each, an observer process (separate from the app, so neither reader shares
   the server's event loop) holds one SSE client on `/logs?follow=1&timestamps=1` and, in the
   same run, a direct follow of the same container's log from Docker (`/containers/{id}/logs
   ?follow=1&timestamps=1`, attached on the container's `start` event). Latency = wall time the
   line was in the reader's hands minus the line's Docker timestamp; only lines printed after
   both readers were attached count. The app runs in this process, so the SSE path is split by
   a timing wrapper set on the running OutputLineStore instance's `publish` (called by the
   capture before the commit): the time it is called and the time the lines are in the shared
   window, right before readers are woken.
2. 500 SSE clients on one run printing 10,000 lines. The server is its own process (`python -m
   precheck serve`); the clients live in separate client processes (default 2 x 250, asyncio +
   aiohttp). While the run streams a client only keeps the bytes it got and the time of each
   chunk; it parses and checks its stream after the end, so the clients take little CPU from the
   server on 2 cores. They connect to `/logs?follow=1` while the container sleeps (`sleep=3`),
   then the run prints `lines=10000`. The bench follows the container's log directly from Docker
   too: that is the truth every client must match (line ids 1..N in order, once each, texts
   equal, then `end` with StatusCode 0). Latency of a delivery = time the chunk completing its
   message was read by the client minus the line's Docker timestamp (lines printed before the
   last client connected are left out: they come as catch-up). Server memory: VmHWM from /proc.
3. Run ends -> `end`: 20 quick runs (1 warm-up not counted); an SSE client on
   `/events?follow=1` opened right after the run is queued. Latency = receipt of `event: end`
   (and of the `status` message that first carries the final verdict) minus Docker's
   `State.FinishedAt` of the container, from the supervisor's own inspect (a timing wrapper keeps
   its result; the `die` event's timeNano is the fallback). Split from a store listener: wall
   time `run.exited` and `run.outputs-stored` were applied. For reference, when our own
   `POST /containers/{id}/wait` returned.

Parts 1 and 3 run the app in this process (`web.AppRunner` + `TCPSite` on 127.0.0.1).

Run: `python -m bench.sse_bench` (about 2 minutes; `--only N` for one part, `--client-procs K`
for part 2, `--profile` runs part 2's server under cProfile and prints where its time went).
Builds the simulator under a private tag and removes the tag, the containers and the temp dirs
at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import io
import json
import multiprocessing
import pstats
import resource
import struct
import time
import traceback
import uuid
from array import array
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import numpy as np

from bench.harness import (
    LONG,
    DockerWatch,
    LocalServer,
    Results,
    ServerProcess,
    bench_config,
    docker_section,
    docker_time,
    local_app,
    med,
    ms,
    proc_cpu,
    proc_memory,
    rank_index,
    run_parts,
    verdict,
)
from precheck.events.store import RecordedEvent
from precheck.events.types import RunExited, RunOutputsStored
from precheck.web import keys
from tests import layouts, sse_client

LATENCY_RUNS = 3
MANY_CLIENTS = 500
MANY_LINES = 10000
END_RUNS = 20
END_WARMUP = 1
TOKEN = uuid.uuid4().hex[:10]
PREFIX = f"precheck-ssebench-{TOKEN}-"  # container names of every run this bench causes
FINAL = ("completed", "failed", "cancelled")


# Small helpers ---------------------------------------------------------------------------------


def pct(values: Any, p: float) -> float:
    """Nearest-rank percentile, over numpy arrays of up to millions of deliveries."""
    s = np.sort(np.asarray(values, dtype=float))
    return float(s[rank_index(len(s), p)])


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    if want != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


async def read_docker_log(
    docker: aiodocker.Docker, container_id: str, into: list[tuple[str, str, float]]
) -> float:
    """Follow a container's log straight from Docker (raw endpoint, demultiplexed here).

    Appends (timestamp text, text, receive time) per line; returns when the response headers
    came (the time the follow was attached). Ends when the container stops.
    """
    params = {"stdout": "true", "stderr": "true", "timestamps": "true", "follow": "true"}
    attached = 0.0
    async with docker._query(f"containers/{container_id}/logs", params=params, timeout=LONG) as r:
        attached = time.time()
        content = r.content
        partial = {1: b"", 2: b""}
        while True:
            try:
                header = await content.readexactly(8)
            except asyncio.IncompleteReadError:
                break
            kind, size = struct.unpack(">BxxxL", header)
            data = partial.get(kind, b"") + await content.readexactly(size)
            t = time.time()
            *lines, partial[kind] = data.split(b"\n")
            for raw in lines:
                stamp, _, text = raw.decode("utf-8", "replace").rstrip("\r").partition(" ")
                into.append((stamp, text, t))
    return attached


async def with_local(
    tmp: Path, image: str, name: str, body: Callable[[LocalServer, DockerWatch], Awaitable[None]]
) -> None:
    config = bench_config(tmp / f"{name}-data", image, PREFIX, "sse-bench", max_concurrent=1)
    async with local_app(config) as (server, watch):
        await body(server, watch)


# 1. Line -> SSE client --------------------------------------------------------------------------


class LineProbe:
    """Wall times per line of the output-line store's steps, set on the running instance."""

    def __init__(self, log_store: Any) -> None:
        self.appended: dict[tuple[str, int], float] = {}
        self.stored: dict[tuple[str, int], float] = {}
        publish = log_store.publish

        def timed_publish(run_id: str, blocks: Any) -> None:
            t = time.time()
            publish(run_id, blocks)
            shown = time.time()
            for b in blocks:
                for line in range(b.first, b.last + 1):
                    self.appended[(run_id, line)] = t
                    self.stored[(run_id, line)] = shown

        log_store.publish = timed_publish


async def _observe(conn: Any) -> None:
    """Observer process: per run, one SSE client and one direct Docker follow, side by side."""
    loop = asyncio.get_running_loop()
    docker = aiodocker.Docker()
    session = aiohttp.ClientSession(timeout=LONG)
    try:
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] != "run":
                return
            url = command[1]
            got: list[tuple[int, str, float]] = []  # line, data, received
            direct: list[tuple[str, str, float]] = []
            end: list[Any] = []

            async def follow_sse(url: str = url, got: Any = got, end: Any = end) -> float:
                params = {"follow": "1", "timestamps": "1"}
                async with sse_client.sse(session, url, params=params) as reader:
                    attached = time.time()
                    async with asyncio.timeout(120):
                        async for m in reader:
                            t = time.time()
                            if m.event == "end":
                                end.append(json.loads(m.data))
                                break
                            assert m.id is not None, "a log line without its id"
                            got.append((int(m.id), m.data, t))
                return attached

            sse_task = asyncio.ensure_future(follow_sse())
            command = await loop.run_in_executor(None, conn.recv)  # the container, once started
            async with asyncio.timeout(120):
                attached_docker = await read_docker_log(docker, command[1], direct)
            attached_sse = await sse_task
            conn.send(("result", got, direct, end, attached_sse, attached_docker))
    finally:
        await session.close()
        await docker.close()


def child_main(conn: Any, main: Coroutine[Any, Any, None]) -> None:
    """Run a child process's `main`; its failure goes back through the pipe."""
    try:
        asyncio.run(main)
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()


def end_child(p: Any) -> None:
    p.join(10)
    if p.is_alive():
        p.kill()
        p.join()


def observer_process(conn: Any) -> None:
    child_main(conn, _observe(conn))


async def bench_latency(tmp: Path, image: str, results: Results, args: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    observer = ctx.Process(target=observer_process, args=(child_end,), daemon=True)
    observer.start()
    child_end.close()
    deadline = time.monotonic() + 200

    async def body(server: LocalServer, watch: DockerWatch) -> None:
        probe = LineProbe(server.app[keys.OUTPUT_LINES])
        upload = await server.upload(layouts.gds("chip_top", "sleep=1", "step_sleep=0.2"))
        sse_lat: list[float] = []
        dock_lat: list[float] = []
        split: dict[str, list[float]] = defaultdict(list)
        total_lines = 0
        for _ in range(LATENCY_RUNS):
            run_id = await server.queue(upload)
            parent_end.send(("run", f"{server.base}/api/v1/prechecks/{run_id}/logs"))
            await watch.wait(run_id, "start")
            parent_end.send(("container", watch.container[run_id]))
            answer = await recv(parent_end, deadline)
            if answer[0] != "result":
                raise RuntimeError(f"the observer process failed:\n{answer[1]}")
            _, got, direct, end, attached_sse, attached_docker = answer
            await watch.wait(run_id, "destroy")  # a quiet engine before the next run
            if not end or end[0].get("StatusCode") != 0:
                raise RuntimeError(f"run {run_id} did not end well: {end}")
            if [g[0] for g in got] != list(range(1, len(got) + 1)) or len(got) != len(direct):
                raise RuntimeError(f"SSE lines 1..{len(got)} vs {len(direct)} from Docker")
            both = max(attached_sse, attached_docker) + 0.02
            for (line, data, t), (stamp, text, t_direct) in zip(got, direct, strict=True):
                if data != f"{stamp} {text}":
                    raise RuntimeError(f"line {line}: SSE {data!r} != Docker {stamp} {text!r}")
                ts = docker_time(stamp)
                if ts < both:
                    continue
                sse_lat.append(t - ts)
                dock_lat.append(t_direct - ts)
                appended, stored = probe.appended[(run_id, line)], probe.stored[(run_id, line)]
                split["Docker timestamp -> capture publishes it (OutputLineStore.publish)"].append(
                    appended - ts
                )
                split["publish -> in the shared window, readers woken"].append(stored - appended)
                split["woken -> SSE client (other process) has the message"].append(t - stored)
            total_lines += len(got)
        p50, p99 = med(sse_lat), pct(sse_lat, 99)
        d50, d99 = med(dock_lat), pct(dock_lat, 99)
        ratio = p50 / d50
        print(
            f"1. line -> SSE client: {LATENCY_RUNS} runs with sleep=1 step_sleep=0.2,"
            f" {len(sse_lat)} lines counted (of {total_lines}; only lines printed after both"
            " readers attached); app in this process, both readers in one observer process"
        )
        print("   latency = receive time - the line's Docker timestamp")
        print(f"   SSE /logs?follow=1&timestamps=1   p50 {ms(p50)}   p99 {ms(p99)}   max"
              f" {ms(max(sse_lat)).strip()}")  # fmt: skip
        print(f"   Docker logs follow (direct)      p50 {ms(d50)}   p99 {ms(d99)}   max"
              f" {ms(max(dock_lat)).strip()}")  # fmt: skip
        print(f"   SSE p50 {ms(p50).strip()}   (target < 100 ms)   {verdict(p50 < 0.100)}")
        print(
            f"   ratio SSE / direct: p50 {ratio:.2f}x   (target <= 2x)   {verdict(ratio <= 2)};"
            f"  p99 {p99 / d99:.2f}x"
        )
        print("   split of the SSE path (median / p99):")
        for k, v in split.items():
            print(f"      {k:62s} {ms(med(v))}  {ms(pct(v, 99))}")
        results["latency"] = [
            f"line -> SSE    p50 {ms(p50).strip()} (< 100 ms) {verdict(p50 < 0.100)}, p99"
            f" {ms(p99).strip()}; direct Docker p50 {ms(d50).strip()}, p99 {ms(d99).strip()};"
            f" ratio {ratio:.2f}x (<= 2x) {verdict(ratio <= 2)}"
        ]

    try:
        await with_local(tmp, image, "latency", body)
    finally:
        with contextlib.suppress(Exception):
            parent_end.send(("stop",))
        parent_end.close()
        end_child(observer)


# 2. 500 clients, 10,000 lines ------------------------------------------------------------------


CR_TO_LF = bytes.maketrans(b"\r", b"\n")


def parse_stream(data: bytes, chunk_ends: Any, chunk_times: Any) -> dict[str, Any]:
    """Check one client's whole stream and time each log line by the chunk that completed it.

    Log messages are `id: N\ndata: TEXT` (fast path); anything else (the `retry:`, a `: ping`
    comment, the `end` message) goes through a general field parser, and whatever is not one
    of those is an error. The server writes its messages with LF only; only aiohttp-sse's ping
    comments use CRLF, so CR -> LF (same length: byte offsets stay true) is safe here.
    """
    if b"\r" in data:
        data = data.translate(CR_TO_LF)
    errors: list[str] = []
    digest = hashlib.sha256()
    update = digest.update
    ends = array("q")
    expect, off = 1, 0
    end: Any = None
    end_id = None
    for m in data.split(b"\n\n"):
        off += len(m) + 2
        if m[:4] == b"id: ":
            nl = m.find(b"\n", 4)
            if m[nl + 1 : nl + 7] == b"data: " and m.find(b"\n", nl + 1) < 0:
                if int(m[4:nl]) != expect:
                    errors.append(f"line id {int(m[4:nl])} where {expect} was due")
                    expect = int(m[4:nl])
                update(m[nl + 7 :] + b"\n")
                ends.append(off - 1)  # the last byte of the blank line that dispatched it
                expect += 1
                continue
        if not m.strip(b"\n"):
            continue
        fields: dict[bytes, list[bytes]] = defaultdict(list)
        for line in m.split(b"\n"):
            if not line or line.startswith(b":"):
                continue  # a comment (heartbeat)
            name, _, value = line.partition(b":")
            fields[name].append(value[1:] if value.startswith(b" ") else value)
        if not fields or set(fields) == {b"retry"}:
            continue
        if fields.get(b"event") == [b"end"] and end is None:
            end = json.loads(b"\n".join(fields[b"data"]))
            end_id = int(fields[b"id"][0])
            continue
        errors.append(f"unexpected message {m[:80]!r}")
    if data and not data.endswith(b"\n\n"):
        errors.append(f"stream ends inside a message: {data[-80:]!r}")
    which = np.searchsorted(np.asarray(chunk_ends), np.asarray(ends), side="right")
    received = np.asarray(chunk_times)[which] if len(ends) else np.zeros(0)
    return {
        "lines": expect - 1, "digest": digest.hexdigest(), "errors": errors[:5],
        "n_errors": len(errors), "end": end, "end_id": end_id, "received": received.tobytes(),
    }  # fmt: skip


async def _read_client(response: Any) -> tuple[list[bytes], Any, list[str]]:
    """Only keep what came and when while the run streams; everything is checked afterwards."""
    chunks: list[bytes] = []
    times = array("d")
    errors: list[str] = []
    try:
        async for chunk in response.content.iter_any():
            times.append(time.time())
            chunks.append(chunk)
    except Exception as e:  # reported with the client's result, not hidden
        errors.append(f"read failed: {e!r}")
    finally:
        response.close()
    return chunks, times, errors


async def _client_main(conn: Any, count: int) -> None:
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    command = await loop.run_in_executor(None, conn.recv)
    if command[0] != "go":
        return
    url = command[1]
    cpu0 = time.process_time()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    headers = {"Accept": "text/event-stream"}
    async with aiohttp.ClientSession(connector=connector, timeout=LONG) as session:
        responses = await asyncio.gather(*(session.get(url, headers=headers) for _ in range(count)))
        conn.send(("connected", time.time(), [r.status for r in responses]))
        streams = await asyncio.gather(*(_read_client(r) for r in responses))
    cpu_streaming = time.process_time() - cpu0
    done = []
    for chunks, times, errors in streams:
        ends = np.cumsum([len(c) for c in chunks], dtype=np.int64)
        result = parse_stream(b"".join(chunks), ends, times)
        result["errors"] = errors + result["errors"]
        result["n_errors"] += len(errors)
        done.append(result)
    conn.send(("done", done, cpu_streaming))


async def recv(conn: Any, deadline: float) -> Any:
    """The next object from a client process's pipe, without blocking the loop or a thread."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), readable)
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            while not conn.poll():
                await ready
                ready = loop.create_future()
        return conn.recv()
    except TimeoutError:
        raise RuntimeError("a client process did not answer in time") from None
    finally:
        loop.remove_reader(conn.fileno())


def client_process(conn: Any, count: int) -> None:
    """A client process: `count` SSE clients on one URL, each checked and timed."""
    child_main(conn, _client_main(conn, count))


async def bench_many(tmp: Path, image: str, results: Results, args: Any) -> None:
    procs_n = args.client_procs
    per = [MANY_CLIENTS // procs_n + (i < MANY_CLIENTS % procs_n) for i in range(procs_n)]
    top = f"bench_{TOKEN}"  # a unique top cell: its label selects this run's Docker events
    prof_path = tmp / "many-server.prof"
    server = await ServerProcess.start(
        tmp,
        "many",
        {
            "storage_path": str(tmp / "many-data"),
            "upload_expiry_minutes": 60,
            "max_concurrent": 1,
        },
        docker_section(image, PREFIX),
        profile_to=prof_path if args.profile else None,
    )
    ctx = multiprocessing.get_context("spawn")
    deadline = time.monotonic() + 240
    pipes, children = [], []
    for n in per:
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=client_process, args=(child_end, n), daemon=True)
        p.start()
        child_end.close()
        pipes.append(parent_end)
        children.append(p)
    watch = DockerWatch(f"precheck.top_cell={top}")
    await watch.start()
    docker = aiodocker.Docker()
    base = server.base
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            await server.wait_ready(session)
            layout = layouts.gds(top, "sleep=3", f"lines={MANY_LINES}")
            async with session.post(
                base + "/api/v1/uploads?name=many.gds", data=layout,
                headers={"Content-Type": "application/octet-stream"},
            ) as r:  # fmt: skip
                upload_id = (await r.json())["Id"]
            before = proc_memory(server.pid)
            cpu_before = proc_cpu(server.pid)
            t_queue = time.time()
            async with session.post(
                base + "/api/v1/prechecks", json={"upload_id": upload_id, "top_cell": top}
            ) as r:
                run_id = (await r.json())["Id"]
            url = f"{base}/api/v1/prechecks/{run_id}/logs?follow=1"
            for c in pipes:
                c.send(("go", url))
            connected = [await recv(c, deadline) for c in pipes]
            for c in connected:
                if c[0] != "connected":
                    raise RuntimeError(f"client process failed:\n{c[1]}")
            t_connected = max(c[1] for c in connected)
            statuses = [s for c in connected for s in c[2]]
            if statuses.count(200) != MANY_CLIENTS:
                raise RuntimeError(f"clients got statuses {sorted(set(statuses))}")
            await watch.wait(run_id, "start")
            direct: list[tuple[str, str, float]] = []
            async with asyncio.timeout(120):
                await read_docker_log(docker, watch.container[run_id], direct)
            done = [await recv(c, deadline) for c in pipes]
            for d in done:
                if d[0] != "done":
                    raise RuntimeError(f"client process failed:\n{d[1]}")
            after = proc_memory(server.pid)
            cpu_server = proc_cpu(server.pid) - cpu_before
            async with session.get(base + f"/api/v1/prechecks/{run_id}") as r:
                doc = await r.json()
    finally:
        await docker.close()
        await watch.close()
        for c in pipes:
            with contextlib.suppress(Exception):
                c.send(("stop",))
            c.close()
        await server.stop(60)
        for p in children:
            end_child(p)

    # Check every client against Docker's own log.
    expect_hash = hashlib.sha256()
    for _, text, _ in direct:
        expect_hash.update(text.encode("utf-8") + b"\n")
    want = expect_hash.hexdigest()
    n_lines = len(direct)
    ts = np.array([docker_time(stamp) for stamp, _, _ in direct])
    noise = [i for i, (_, text, _) in enumerate(direct) if text == "noise 1"]
    t_first_noise = ts[noise[0]] if noise else float("nan")
    live_from = int(np.searchsorted(ts, t_connected))  # lines printed after all had connected
    clients = [c for d in done for c in d[1]]
    bad: list[str] = []
    lat_parts = []
    last_line_at = []
    for i, c in enumerate(clients):
        problem = ""
        if c["n_errors"]:
            problem = f"{c['n_errors']} errors, first {c['errors']}"
        elif c["lines"] != n_lines:
            problem = f"{c['lines']} lines, Docker printed {n_lines}"
        elif c["digest"] != want:
            problem = "texts differ from Docker's"
        elif not c["end"] or c["end"].get("StatusCode") != 0 or c["end_id"] != n_lines:
            problem = f"end {c['end']} id {c['end_id']}"
        if problem:
            bad.append(f"client {i}: {problem}")
            continue
        received = np.frombuffer(c["received"], dtype=np.float64)
        lat_parts.append((received - ts)[live_from:])
        last_line_at.append(received[-1])
    lat = np.concatenate(lat_parts) if lat_parts else np.array([float("nan")])
    p50, p99 = float(np.percentile(lat, 50)), pct(lat, 99)
    hwm = after["VmHWM"] / 1e6
    ok = not bad
    client_cpu = [d[2] for d in done]
    profiled = " under cProfile" if args.profile else ""
    split_clients = "/".join(map(str, per))
    print(f"2. {MANY_CLIENTS} SSE clients on /logs?follow=1 of one run printing {MANY_LINES} lines"
          f" (server: python -m precheck serve{profiled};"
          f" clients: {procs_n} processes x {split_clients}, asyncio + aiohttp)")  # fmt: skip
    print(f"   all connected {t_connected - t_queue:.2f} s after the run was queued;"
          f" the first noise line was printed {t_first_noise - t_queue:.2f} s after it"
          f" ({live_from} earlier header lines not counted in latency:"
          " they came as catch-up)")  # fmt: skip
    print(f"   every client got all {n_lines} lines, once each, in order, texts equal to"
          f" Docker's, then `end` (StatusCode 0): {MANY_CLIENTS - len(bad)} of {MANY_CLIENTS}"
          f"  {verdict(ok)}")  # fmt: skip
    for b in bad[:5]:
        print(f"      {b}")
    print(f"   delivery latency over {lat.size} deliveries (receive - Docker timestamp):"
          f" p50 {ms(p50).strip()}, p99 {ms(p99).strip()},"
          f" max {ms(float(lat.max())).strip()}")  # fmt: skip
    print(f"   p99 {ms(p99)}   (target < 1 s)   {verdict(p99 < 1.0)}")
    direct_lat = np.array([t for _, _, t in direct]) - ts
    print(f"   for reference, the bench's own direct Docker follow of the same log: p50"
          f" {ms(float(np.percentile(direct_lat[live_from:], 50))).strip()}, p99"
          f" {ms(pct(direct_lat[live_from:], 99)).strip()}")  # fmt: skip
    last = max(last_line_at) if last_line_at else float("nan")
    print(f"   the {MANY_LINES} noise lines were printed within {ts[-1] - t_first_noise:.2f} s;"
          f" the last client had the last line {last - ts[-1]:.2f} s after it was"
          " printed")  # fmt: skip
    print(f"   server memory: VmRSS before {before['VmRSS'] / 1e6:.1f} MB, VmHWM {hwm:.1f} MB"
          f" (VmRSS after {after['VmRSS'] / 1e6:.1f} MB)")  # fmt: skip
    print(f"   peak RSS {hwm:6.1f} MB   (target < 300 MB)   {verdict(hwm < 300)}")
    print(f"   CPU: server {cpu_server:.1f} s from the queueing to the end of the run"
          f" ({last - t_queue:.1f} s wall to the last delivery); client processes while streaming"
          f" {' + '.join(f'{c:.1f}' for c in client_cpu)} s (they check the streams after"
          f" the end); run {doc['State']['Status']}")  # fmt: skip
    results["many"] = [
        f"{MANY_CLIENTS} clients    every line once, in order {verdict(ok)}; p50 {ms(p50).strip()},"
        f" p99 {ms(p99).strip()} (< 1 s) {verdict(p99 < 1.0)}; server VmHWM {hwm:.1f} MB"
        f" (< 300 MB) {verdict(hwm < 300)}"
    ]
    if args.profile and prof_path.exists():
        buf = io.StringIO()
        stats = pstats.Stats(str(prof_path), stream=buf)
        stats.sort_stats("tottime").print_stats(25)
        print("   server profile (cProfile, whole server life, by own time):")
        for line in buf.getvalue().splitlines():
            if line.strip():
                print(f"      {line}")


# 3. Run ends -> `end` ---------------------------------------------------------------------------


class EndProbe:
    """FinishedAt from the supervisor's own inspect; wall times the end events were applied."""

    def __init__(self, server: LocalServer) -> None:
        self.finished_at: dict[str, float] = {}
        self.exited: dict[str, float] = {}
        self.stored: dict[str, float] = {}
        engine = server.app[keys.SUPERVISOR].engine
        inspect = engine.inspect

        async def timed_inspect(container_id: str) -> Any:
            state = await inspect(container_id)
            finished = getattr(state, "finished_at", "")
            if (
                state is not None
                and not state.running
                and finished
                and not finished.startswith("0001-")
            ):
                run_id = state.labels.get("precheck.run")
                if run_id:
                    self.finished_at.setdefault(run_id, docker_time(finished))
            return state

        setattr(engine, "inspect", timed_inspect)  # noqa: B010 - on this instance only
        server.app[keys.STORE].add_listener(self)  # after the projections' own listener

    def __call__(self, r: RecordedEvent) -> None:
        if isinstance(r.event, RunExited):
            self.exited[r.event.run_id] = time.time()
        elif isinstance(r.event, RunOutputsStored):
            self.stored[r.event.run_id] = time.time()


async def bench_end(tmp: Path, image: str, results: Results, args: Any) -> None:
    async def body(server: LocalServer, watch: DockerWatch) -> None:
        probe = EndProbe(server)
        upload = await server.upload(layouts.gds("chip_top"))
        assert server.session is not None
        rows: list[dict[str, float]] = []
        exact = 0
        waited: list[float] = []

        async def container_wait(run_id: str) -> float:
            """When Docker's `POST /containers/{id}/wait` returns, for comparison with `die`."""
            await watch.wait(run_id, "start")
            await watch.docker._query_json(
                f"containers/{watch.container[run_id]}/wait", method="POST", timeout=LONG
            )
            return time.time()

        async def logs_end(run_id: str) -> float:
            """When `event: end` of the run's log stream arrives (sent once the container
            stopped and every line is captured, before the outputs are copied out)."""
            url = f"{server.base}/api/v1/prechecks/{run_id}/logs"
            assert server.session is not None
            async with sse_client.sse(server.session, url, params={"follow": "1"}) as reader:
                async for m in reader:
                    if m.event == "end":
                        return time.time()
            raise RuntimeError(f"the log stream of {run_id} closed without `end`")

        for i in range(END_WARMUP + END_RUNS):
            run_id = await server.queue(upload)
            waiter = asyncio.ensure_future(container_wait(run_id))
            log_ender = asyncio.ensure_future(logs_end(run_id))
            url = f"{server.base}/api/v1/prechecks/{run_id}/events"
            verdict_at = end_at = 0.0
            final = ""
            async with sse_client.sse(server.session, url, params={"follow": "1"}) as reader:
                async with asyncio.timeout(120):
                    async for m in reader:
                        t = time.time()
                        if m.event == "end":
                            end_at = t
                            final = json.loads(m.data)["State"]["Status"]
                            break
                        if not verdict_at and json.loads(m.data)["State"]["Status"] in FINAL:
                            verdict_at = t
            if final != "completed" or not verdict_at:
                raise RuntimeError(f"run {run_id} ended {final!r}")
            logs_end_at = await asyncio.wait_for(log_ender, 30)
            await watch.wait(run_id, "die")
            await watch.wait(run_id, "destroy")  # a quiet engine before the next run
            try:
                wait_returned: float | None = await asyncio.wait_for(waiter, 10)
            except (aiodocker.DockerError, TimeoutError):
                wait_returned = None
            if i < END_WARMUP:
                continue
            die = watch.at[run_id]["die"]
            finished = probe.finished_at.get(run_id)
            exact += finished is not None
            finished = finished or die
            if wait_returned is not None:
                waited.append(wait_returned - finished)
            rows.append({
                "end": end_at - finished,
                "logs end": logs_end_at - finished,
                "verdict": verdict_at - finished,
                "FinishedAt -> die event (inside dockerd)": die - finished,
                "die event -> run.exited applied (inspect, log capture end, append)": (
                    probe.exited[run_id] - die
                ),
                "run.exited applied -> verdict `status` at the client": (
                    verdict_at - probe.exited[run_id]
                ),
                "run.exited -> run.outputs-stored applied (copy out, append)": (
                    probe.stored[run_id] - probe.exited[run_id]
                ),
                "run.outputs-stored applied -> `end` at the client": (
                    end_at - probe.stored[run_id]
                ),
            })  # fmt: skip
        end = [r["end"] for r in rows]
        ver = [r["verdict"] for r in rows]
        p50, v50 = med(end), med(ver)
        print(f"3. run ends -> SSE /events?follow=1: {len(rows)} sequential quick runs"
              f" ({END_WARMUP} warm-up not counted); minus State.FinishedAt ({exact} of"
              f" {len(rows)} from the supervisor's inspect, the rest the die event)")  # fmt: skip
        print(f"   `end`                          p50 {ms(p50)}   p99 {ms(pct(end, 99))}"
              f"   (target p50 < 50 ms)   {verdict(p50 < 0.050)}")  # fmt: skip
        print(f"   `status` with the final verdict p50 {ms(v50)}   p99 {ms(pct(ver, 99))}")
        logs = [r["logs end"] for r in rows]
        print(f"   `end` of /logs?follow=1        p50 {ms(med(logs))}   p99 {ms(pct(logs, 99))}"
              f"   (target p50 < 50 ms)   {verdict(med(logs) < 0.050)}")  # fmt: skip
        print("   split (median / p99):")
        for k in rows[0]:
            if k in ("end", "verdict", "logs end"):
                continue
            v = [r[k] for r in rows]
            print(f"      {k:70s} {ms(med(v))}  {ms(pct(v, 99))}")
        if waited:
            die = med(r["FinishedAt -> die event (inside dockerd)"] for r in rows)
            print(f"   for reference: Docker's POST /containers/{{id}}/wait (our own call) returned"
                  f" {ms(med(waited)).strip()} after FinishedAt (median of {len(waited)});"
                  f" the `die` event came {ms(die).strip()} after it")  # fmt: skip
        results["end"] = [
            f"end message    /logs p50 {ms(med(logs)).strip()} (< 50 ms)"
            f" {verdict(med(logs) < 0.050)}; /events (after the outputs are stored)"
            f" p50 {ms(p50).strip()} (< 50 ms) {verdict(p50 < 0.050)};"
            f" final-verdict status p50 {ms(v50).strip()}"
        ]

    await with_local(tmp, image, "end", body)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sse_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", type=int, choices=(1, 2, 3), action="append")
    parser.add_argument("--image", help="use this simulator tag instead of building one")
    parser.add_argument("--client-procs", type=int, default=2, choices=(1, 2, 3, 4))
    parser.add_argument("--profile", action="store_true", help="part 2's server under cProfile")
    args = parser.parse_args()
    fds = raise_fd_limit()
    parts = {1: bench_latency, 2: bench_many, 3: bench_end}
    run_parts(
        args.only or [1, 2, 3],
        {n: functools.partial(bench, args=args) for n, bench in parts.items()},
        image=args.image,
        tag=f"precheck-simulator:ssebench-{TOKEN}",
        tmp_prefix="precheck-sse-bench-",
        container_filters=(f"name={PREFIX}",),
        machine=(f"fd limit {fds}",),
    )


if __name__ == "__main__":
    main()
