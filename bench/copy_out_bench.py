"""Copy-out benchmark: how long a run's outputs take to become final once its container exits.

Real Docker engine, the simulator image, the app in this process on 127.0.0.1.

1. Small outputs: 30 sequential quick passing runs (1 warm-up not counted); an SSE client on
   `/events?follow=1` opened right after the run is queued. Latency = receipt of `event: end`
   minus Docker's `State.FinishedAt` of the container (from the supervisor's own inspect; the
   `die` event's time is the fallback). p50 and p95 (target p50 <= 100 ms), and how it splits
   (from a store listener: when `run.exited` and `run.outputs-stored` were applied; from the
   server's own engine client: when the copy-out asked for the archive, when its first bytes
   came and when its last bytes were read). Then the engine's own share: its `die` delay, and
   bare archive reads of the same runs folder out of a stopped container of the image holding
   what the last run kept (bytes dropped).
2. A 1 GiB output layout: the raw archive read of one 1 GiB file out of a stopped container
   through aiodocker (the bytes read and dropped; a container of the same image the file was
   put into), against a run of a 1 GiB layout (its output layout is that size): State.FinishedAt
   -> `run.outputs-stored` applied (final) and -> `end` on `/events` (target: final within 2x the
   raw read). The output's sha256 is checked against the input's.

Run: `python -m bench.copy_out_bench` (`--only N` for one part, `--runs N` for part 1).
Builds the simulator under a private tag and removes the tag, the containers and the temp dirs
at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker

from bench.harness import (
    LONG,
    DockerWatch,
    LocalServer,
    Part,
    Results,
    docker_section,
    local_app,
    med,
    ms,
    pct,
    run_parts,
    verdict,
    write_layout,
)
from bench.sse_bench import EndProbe
from precheck.config import parse_config
from precheck.runner.container_spec import OUTPUT_DIR, RUNS_DIR
from precheck.runner.engine import Engine
from precheck.runner.tar_stream import Entry, write_tar
from precheck.web import keys
from tests import layouts, sse_client
from tests.simulator_config import CACHE_OFF, PREFLIGHT_OFF

SMALL_RUNS = 30
WARMUP = 1
BIG_BYTES = 1 << 30
RAW_READS = 2
BARE_READS = 20
TOKEN = uuid.uuid4().hex[:10]
PREFIX = f"precheck-copyoutbench-{TOKEN}-"  # container names of every container this bench makes


def local_config(tmp: Path, image: str, name: str, memory: str, **server: Any) -> Any:
    raw = {
        "server": {
            "storage_path": str(tmp / f"{name}-data"),
            "upload_expiry_minutes": 1440,
            "max_concurrent": 1,
            **server,
        },
        "docker": docker_section(image, PREFIX, memory_limit=memory),
        "preflight": PREFLIGHT_OFF,
        "cache": CACHE_OFF,  # every run is a real one: the same layout is queued again
    }
    return parse_config(raw, "copy-out-bench")


async def run_to_end(server: LocalServer, run_id: str) -> tuple[float, str]:
    """When `event: end` of the run's `/events?follow=1` arrives, and the final status."""
    assert server.session is not None
    url = f"{server.base}/api/v1/prechecks/{run_id}/events"
    async with sse_client.sse(server.session, url, params={"follow": "1"}) as reader:
        async with asyncio.timeout(900):
            async for m in reader:
                if m.event == "end":
                    return time.time(), str(json.loads(m.data)["State"]["Status"])
    raise RuntimeError(f"the events of {run_id} closed without `end`")


def finished(probe: EndProbe, watch: DockerWatch, run_id: str) -> float:
    return probe.finished_at.get(run_id) or watch.at[run_id]["die"]


# 1. Small outputs ------------------------------------------------------------------------------


async def bench_small(tmp: Path, image: str, results: Results, runs: int) -> None:
    config = local_config(tmp, image, "small", "256m")
    async with local_app(config) as (server, watch):
        probe = EndProbe(server)
        archives = ArchiveProbe(server)
        upload = await server.upload(layouts.gds("chip_top"))
        rows: list[dict[str, float]] = []
        for i in range(WARMUP + runs):
            run_id = await server.queue(upload)
            end_at, final = await run_to_end(server, run_id)
            if final != "completed":
                raise RuntimeError(f"run {run_id} ended {final!r}")
            await watch.wait(run_id, "die")
            await watch.wait(run_id, "destroy")  # a quiet engine before the next run
            if i < WARMUP:
                continue
            t0 = finished(probe, watch, run_id)
            rows.append({
                "end": end_at - t0,
                "FinishedAt -> `die` at this bench's own Docker watch (engine)": (
                    watch.seen[run_id]["die"] - t0
                ),
                "FinishedAt -> run.exited applied": probe.exited[run_id] - t0,
                "FinishedAt -> the copy-out asks for the archive (engine's `die`, then us)": (
                    archives.asked[run_id] - t0
                ),
                "asked -> the archive's first bytes (engine: its lock, mount, helper)": (
                    archives.first[run_id] - archives.asked[run_id]
                ),
                "first -> last bytes read (small files written meanwhile)": (
                    archives.last[run_id] - archives.first[run_id]
                ),
                "last bytes -> run.outputs-stored applied (write, flush, append)": (
                    probe.stored[run_id] - archives.last[run_id]
                ),
                "run.outputs-stored applied -> `end` at the client": end_at - probe.stored[run_id],
            })  # fmt: skip
        bare = await bare_reads(image, config.server.storage_path / "runs" / run_id, run_id)
    end = [r["end"] for r in rows]
    p50, p95 = med(end), pct(end, 95)
    print(f"1. small outputs: {len(rows)} sequential quick runs ({WARMUP} warm-up not counted)")
    print(
        f"   exit -> `end` on /events  p50 {ms(p50)}   p95 {ms(p95)}   (target p50 <= 100 ms)"
        f"   {verdict(p50 <= 0.100)}"
    )
    print("   split (median / p95):")
    for k in rows[0]:
        if k != "end":
            v = [r[k] for r in rows]
            print(f"      {k:72s} {ms(med(v))}  {ms(pct(v, 95))}")
    die = med([r["FinishedAt -> `die` at this bench's own Docker watch (engine)"] for r in rows])
    print(
        f"   the engine's own share: a bare archive read of the last run's folder (same tree,"
        f" stopped container, {len(bare)} reads) p50 {ms(med(bare))}, min {ms(min(bare))};"
        f" with the `die` delay, {ms(die + med(bare))} of the p50 before the copy's first byte"
        " could be written"
    )
    results["small"] = [
        f"small outputs  exit -> end p50 {ms(p50).strip()}, p95 {ms(p95).strip()}"
        f" (p50 <= 100 ms) {verdict(p50 <= 0.100)}"
    ]


class ArchiveProbe:
    """Wall times, at the server's own engine client, of each run's first archive read: when
    the copy-out asked for it, when its first bytes came, when its last bytes were read."""

    def __init__(self, server: LocalServer) -> None:
        self.asked: dict[str, float] = {}
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        supervisor = server.app[keys.SUPERVISOR]
        engine = supervisor.engine
        get_archive = engine.get_archive
        runs = supervisor.state.runs

        def run_of(container_id: str) -> str:
            return next((r.id for r in runs.by_id.values() if r.container_id == container_id), "")

        async def timed(container_id: str, path: str) -> AsyncIterator[bytes] | None:
            run_id = run_of(container_id)
            first_read = run_id not in self.asked
            if first_read:
                self.asked[run_id] = time.time()
            tar = await get_archive(container_id, path)
            if tar is None or not first_read:
                return tar
            return self._timed_chunks(run_id, tar)

        setattr(engine, "get_archive", timed)  # noqa: B010 - on this instance only

    async def _timed_chunks(self, run_id: str, tar: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in tar:
                self.first.setdefault(run_id, time.time())
                self.last[run_id] = time.time()
                yield chunk
        finally:
            aclose = getattr(tar, "aclose", None)
            if aclose is not None:
                await aclose()


async def bare_reads(image: str, run_dir: Path, run_id: str) -> list[float]:
    """Seconds of each archive read of the runs folder, bytes dropped, out of a stopped
    container of `image` holding what the run kept, where its container had it: how long the
    engine alone takes to give a copy-out its bytes."""
    runs = RUNS_DIR.lstrip("/")
    entries = [Entry(runs), Entry(f"{runs}/{run_id}"), Entry(f"{runs}/.output")]
    for path in sorted((run_dir / "run").rglob("*")):
        name = f"{runs}/{run_id}/{path.relative_to(run_dir / 'run').as_posix()}"
        entries.append(Entry(name, path) if path.is_file() else Entry(name))
    for path in sorted((run_dir / "output").iterdir()):
        entries.append(Entry(f"{runs}/.output/{path.name}", path))
    reads = await timed_reads(image, "bare", entries, RUNS_DIR, BARE_READS)
    return [seconds for seconds, _ in reads]


async def timed_reads(
    image: str, name: str, entries: list[Entry], path: str, reads: int
) -> list[tuple[float, int]]:
    """Seconds and bytes of each of `reads` archive reads of `path` (bytes dropped) out of a
    stopped container of `image` (named `name`) holding `entries`."""
    engine = Engine()
    docker = aiodocker.Docker()
    container_id = ""
    try:
        spec = {"Image": image, "Cmd": ["true"], "Labels": {"precheck.bench": TOKEN}}
        container_id = await engine.create(f"{PREFIX}{name}", spec)
        await engine.put_archive(container_id, "/", write_tar(entries))
        out = []
        for _ in range(reads):
            t = time.perf_counter()
            got = 0
            url = f"containers/{container_id}/archive"
            async with docker._query(url, params={"path": path}, timeout=LONG) as r:
                async for chunk in r.content.iter_any():
                    got += len(chunk)
            out.append((time.perf_counter() - t, got))
        return out
    finally:
        if container_id:
            await engine.remove(container_id)
        await engine.close()
        await docker.close()


# 2. 1 GiB output layout ------------------------------------------------------------------------


async def raw_read(image: str, layout: Path) -> list[float]:
    """Seconds of each raw archive read of the 1 GiB file out of a stopped container."""
    name = "big.gds"
    out = OUTPUT_DIR.lstrip("/")
    entries = [Entry(out), Entry(f"{out}/{name}", layout)]
    reads = await timed_reads(image, "raw", entries, f"{OUTPUT_DIR}/{name}", RAW_READS)
    if any(got < BIG_BYTES for _, got in reads):
        raise RuntimeError(f"a raw read got fewer than {BIG_BYTES} bytes: {reads}")
    return [seconds for seconds, _ in reads]


async def bench_big(tmp: Path, image: str, results: Results) -> None:
    layout = tmp / "big.gds"
    top = "chip_top"
    head = layouts.gds(top)
    line = (bytes(range(32, 127)) * 44)[:4095] + b"\n"
    sha = write_layout(layout, head, line * 256, BIG_BYTES)
    print(f"2. a 1 GiB output layout (sha256 {sha[:16]}...)")
    raw = await raw_read(image, layout)
    raw_s = statistics.mean(raw)
    print(
        "   raw archive read of the file (aiodocker, bytes dropped): "
        + ", ".join(f"{s:.2f} s" for s in raw)
        + f"  (mean {raw_s:.2f} s, {BIG_BYTES / raw_s / 1e6:.0f} MB/s)"
    )
    config = local_config(tmp, image, "big", "4g", max_upload_mb=2048)
    async with local_app(config) as (server, watch):
        probe = EndProbe(server)
        assert server.session is not None
        with layout.open("rb") as f:
            up = await server.call(
                "POST", "/api/v1/uploads?name=big.gds", data=f,
                headers={"Content-Type": "application/octet-stream"},
            )  # fmt: skip
        run_id = await server.queue(str(up["Id"]))
        end_at, final = await run_to_end(server, run_id)
        if final != "completed":
            raise RuntimeError(f"big run ended {final!r}")
        await watch.wait(run_id, "die")
        t0 = finished(probe, watch, run_id)
        doc = await server.call("GET", f"/api/v1/prechecks/{run_id}")
        digest, size = hashlib.sha256(), 0
        async with server.session.get(f"{server.base}/api/v1/prechecks/{run_id}/output") as r:
            async for chunk in r.content.iter_chunked(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    same = digest.hexdigest() == sha and size == BIG_BYTES
    final_s = probe.stored[run_id] - t0
    ratio = final_s / raw_s
    print(f"   run: exit -> run.exited applied          {probe.exited[run_id] - t0:6.2f} s")
    print(f"   run: exit -> final (outputs stored)      {final_s:6.2f} s")
    print(f"   run: exit -> `end` on /events            {end_at - t0:6.2f} s")
    print(
        f"   final / raw read = {ratio:.2f}x   (target <= 2x)   {verdict(ratio <= 2)};"
        f" output sha256 {'equals' if same else 'DIFFERS FROM'} the input's {verdict(same)}"
        f" (status {doc['State']['Status']})"
    )
    results["big"] = [
        f"1 GiB output   raw read {raw_s:.2f} s, exit -> final {final_s:.2f} s ({ratio:.2f}x,"
        f" <= 2x) {verdict(ratio <= 2)}, exit -> end {end_at - t0:.2f} s, sha256 {verdict(same)}"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.copy_out_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", type=int, choices=(1, 2), action="append")
    parser.add_argument("--image", help="use this simulator tag instead of building one")
    parser.add_argument("--runs", type=int, default=SMALL_RUNS, help="runs of part 1")
    args = parser.parse_args()
    parts: dict[int, Part] = {1: functools.partial(bench_small, runs=args.runs), 2: bench_big}
    run_parts(
        args.only or [1, 2],
        parts,
        image=args.image,
        tag=f"precheck-simulator:copyoutbench-{TOKEN}",
        tmp_prefix="precheck-copy-out-bench-",
        container_filters=(f"name={PREFIX}",),
    )


if __name__ == "__main__":
    main()
