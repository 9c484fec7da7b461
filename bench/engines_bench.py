"""More than one engine: throughput, a lost engine's run restarted elsewhere, parallel starts.

The engines are the default Docker engine and a private `dockerd` on its own socket, data
root, exec root and pid file (the simulator image moved in with `docker save | docker load`);
the server runs in this process.

1. Throughput: 24 runs on 2 engines x max_concurrent 2 against 1 engine x 2
   (target: ratio >= 1.8). Each run is 16 steps of RUN_STEP_SLEEP seconds, about 5 s in its
   container: a real precheck takes up to 3 hours, and a run of about 1.5 s (step_sleep 0.05)
   measures the per-run Docker work instead (create, copy-in, start, copy-out, remove: several
   tenths of a second a run, largely CPU, which both engines here take from the same 2 cores),
   so two engines could not double it. The run length used is printed.
2. An engine killed mid-run: the time from its loss to its run's next start on the other
   engine (target: within docker.engine_grace_seconds + 1 s).
3. Starting 4 runs on 4 free slots against starting 1: from queuing to the last start
   (target: no more than 1.5x). Printed beside it: the same Docker calls made straight
   through the Engine API with no server (create, copy the layout in, start; 4 at once, 2 on
   each engine, against 1), the floor under the figure on this machine.

Run: `python -m bench.engines_bench`.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import LocalServer, build_image, machine_line, remove_containers, temp_folder
from precheck.config import Config, parse_config
from precheck.runner.engine import Engine
from precheck.runner.tar_stream import Entry, write_tar
from tests.engines import DEFAULT_ENGINE_URL, PrivateEngine
from tests.layouts import gds
from tests.simulator_config import simulator_tables

RUNS = 24
GRACE = 2.0
RUN_STEP_SLEEP = 0.3  # seconds per step of a throughput run (16 steps)
RUN = gds("chip_top", f"step_sleep={RUN_STEP_SLEEP:g}")


def config(storage: Path, image: str, engines: list[dict[str, Any]]) -> Config:
    """The server's config: the simulator image, never pulled, on `engines`."""
    docker = {
        "container_prefix": "engines-bench-", "engines": engines,
        "engine_grace_seconds": GRACE, "max_attempts": 2,
    }  # fmt: skip
    raw = simulator_tables(storage, image, server={"upload_expiry_minutes": 1440}, docker=docker)
    return parse_config(raw, "engines-bench")


def main_engine(slots: int) -> dict[str, Any]:
    """The default engine, `main`."""
    return {"name": "main", "url": DEFAULT_ENGINE_URL, "max_concurrent": slots}


def second_engine(engine: PrivateEngine, slots: int) -> dict[str, Any]:
    """The private engine, `second`."""
    return {"name": "second", "url": engine.url, "max_concurrent": slots}


async def doc(server: LocalServer, run_id: str) -> dict[str, Any]:
    """The run's document."""
    result: dict[str, Any] = await server.call("GET", f"/api/v1/prechecks/{run_id}")
    return result


async def throughput(tmp: Path, image: str, engines: list[dict[str, Any]]) -> tuple[float, float]:
    """Seconds for RUNS runs, queued at once, to all end; and the median run's seconds from
    its start to its container's exit."""
    async with LocalServer(config(tmp / uuid.uuid4().hex, image, engines)) as server:
        uploads = [await server.upload(RUN) for _ in range(RUNS)]
        began = time.monotonic()
        runs = [await server.queue(u) for u in uploads]
        for run_id in runs:
            result = await server.wait(run_id, 600)
            assert result["StatusCode"] == 0, result
        took = time.monotonic() - began
        lengths = []
        for run_id in runs:
            state = (await doc(server, run_id))["State"]
            ran = datetime.fromisoformat(state["FinishedAt"]) - datetime.fromisoformat(
                state["StartedAt"]
            )
            lengths.append(ran.total_seconds())
        remove_containers([f"label=precheck.instance={server.instance}"])
        return took, statistics.median(lengths)


async def lost_engine(tmp: Path, image: str, second: PrivateEngine) -> float:
    """Seconds from killing the engine a run runs on to that run's start on the other one."""
    engines = [main_engine(1), second_engine(second, 1)]
    async with LocalServer(config(tmp / uuid.uuid4().hex, image, engines)) as server:
        first = await server.queue(await server.upload(gds("chip_top", "step_sleep=0.02")))
        lost = await server.queue(await server.upload(gds("chip_top", "step_sleep=1")))
        while (await doc(server, lost))["Engine"] != "second":  # noqa: ASYNC110 (from outside)
            await asyncio.sleep(0.02)
        await server.wait(first, 120)  # `main` is free: the retry can start at once
        assert second.proc is not None
        second.proc.kill()  # the machine is gone: no shutdown
        killed = time.monotonic()
        while True:
            d = await doc(server, lost)
            if d["Engine"] == "main" and d["State"]["Status"] == "running":
                break
            await asyncio.sleep(0.01)
        restarted = time.monotonic() - killed
        result = await server.wait(lost, 120)
        assert result["StatusCode"] == 0, result
        remove_containers([f"label=precheck.instance={server.instance}"])
    await second.start()
    return restarted


async def starts(tmp: Path, image: str, second: PrivateEngine, count: int) -> float:
    """Seconds from queuing `count` runs (on 4 free slots) to the last one's start."""
    engines = [main_engine(2), second_engine(second, 2)]
    async with LocalServer(config(tmp / uuid.uuid4().hex, image, engines)) as server:
        uploads = [await server.upload(gds("chip_top", "step_sleep=0.2")) for _ in range(count)]
        runs = [await server.queue(u) for u in uploads]
        docs = []
        for run_id in runs:
            while (d := await doc(server, run_id))["State"]["Status"] == "queued":  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            docs.append(d)
        created = min(datetime.fromisoformat(d["Created"]) for d in docs)
        started = max(datetime.fromisoformat(d["State"]["StartedAt"]) for d in docs)
        for run_id in runs:
            await server.wait(run_id, 120)
        remove_containers([f"label=precheck.instance={server.instance}"])
        return (started - created).total_seconds()


async def docker_alone(tmp: Path, image: str, second: PrivateEngine, count: int) -> float:
    """Seconds to create, fill and start `count` containers at once (the first two on `main`,
    the next two on `second`) straight through the Engine API: no server, no queue, no log."""
    layout = tmp / "alone.gds"
    layout.write_bytes(gds("chip_top"))
    engines = [Engine(DEFAULT_ENGINE_URL), Engine(second.url)]
    # The limits of a run's create body (`container_spec.py`), around a command that waits.
    spec = {
        "Image": image, "Cmd": ["sleep", "5"], "Labels": {"engines-bench": "alone"},
        "NetworkDisabled": True,
        "HostConfig": {
            "NetworkMode": "none", "Memory": 256 << 20, "MemorySwap": 256 << 20,
            "PidsLimit": 512, "SecurityOpt": ["no-new-privileges"],
        },
    }  # fmt: skip
    entries = [Entry("input"), Entry("output"), Entry("input/chip_top.gds", layout)]

    async def one(engine: Engine) -> str:
        cid = await engine.create(f"engines-bench-alone-{uuid.uuid4().hex[:12]}", spec)
        await engine.put_archive(cid, "/", write_tar(entries))
        await engine.start(cid)
        return cid

    try:
        placed = [engines[i // 2] for i in range(count)]
        began = time.monotonic()
        made = await asyncio.gather(*(one(e) for e in placed))
        took = time.monotonic() - began
        for engine, cid in zip(placed, made, strict=True):
            await engine.remove(cid)
        return took
    finally:
        for engine in engines:
            await engine.close()
        remove_containers(["label=engines-bench=alone"])  # any left on `main` by a failure


async def bench(tmp: Path) -> None:
    """Build the image, start the private engine, measure, report."""
    image = f"precheck-engines-bench:{uuid.uuid4().hex[:8]}"
    build_image(image, tmp / "build.log")
    second = PrivateEngine(Path(f"/tmp/eb-{uuid.uuid4().hex[:6]}"), image)
    try:
        await second.start()
        await second.load_image()
        one, ran_one = await throughput(tmp, image, [main_engine(2)])
        two, ran_two = await throughput(tmp, image, [main_engine(2), second_engine(second, 2)])
        ratio = one / two
        restarted = await lost_engine(tmp, image, second)
        await starts(tmp, image, second, 1)  # warm-up
        single = min([await starts(tmp, image, second, 1) for _ in range(3)])
        four = min([await starts(tmp, image, second, 4) for _ in range(3)])
        alone_single = min([await docker_alone(tmp, image, second, 1) for _ in range(3)])
        alone_four = min([await docker_alone(tmp, image, second, 4) for _ in range(3)])
    finally:
        await second.stop()
        shutil.rmtree(second.root, ignore_errors=True)
        rmi = await asyncio.create_subprocess_exec("docker", "rmi", "-f", image)
        await rmi.wait()
    print(machine_line())
    print(
        f"1. throughput, {RUNS} runs of 16 steps x {RUN_STEP_SLEEP:g} s (median run"
        f" {ran_one:.1f} s on 1 engine, {ran_two:.1f} s on 2): 1 engine x 2 {one:.1f} s,"
        f" 2 engines x 2 {two:.1f} s, ratio {ratio:.2f} (target >= 1.8):"
        f" {'PASS' if ratio >= 1.8 else 'MISS'}"
    )
    print(
        f"2. engine killed mid-run: its run started on the other engine after {restarted:.2f} s"
        f" (target <= grace {GRACE:g} s + 1 s): {'PASS' if restarted <= GRACE + 1 else 'MISS'}"
    )
    print(
        f"3. starting 4 runs on 4 free slots {four:.3f} s, 1 run {single:.3f} s, ratio"
        f" {four / single:.2f} (target <= 1.5): {'PASS' if four <= 1.5 * single else 'MISS'}"
    )
    print(
        f"   the same Docker calls with no server (create, copy-in, start): 4 at once"
        f" {alone_four:.3f} s, 1 {alone_single:.3f} s, ratio {alone_four / alone_single:.2f}"
    )


def main() -> None:
    """`python -m bench.engines_bench`."""
    with temp_folder("engines-bench-") as tmp:
        asyncio.run(bench(Path(tmp)))


if __name__ == "__main__":
    main()
