"""Notification benchmarks: a webhook receiver on loopback, the app in this process.

1. Run end -> webhook received: 20 sequential quick passing runs on the real engine with the
   simulator image, each asking for a webhook. Latency = the receiver's arrival time minus the
   time a store listener saw `run.outputs-stored` applied (the run is final from there); both
   on this process's monotonic clock. Also: how long until `notification.sent` was applied.
   Target: p50 < 100 ms.
2. 200 runs ending at once, a slow receiver (1 s per request): the runs are queued through the
   API and their ends recorded in one append (no containers: the part measures the notifier,
   not Docker), while a client reads a run's document over and over. Targets: those reads
   answer in < 50 ms p99, and every delivery arrives, once.

Run: `python -m bench.notify_bench` (about a minute; `--only N` for one part, `--image TAG` to
use a simulator image already built). Builds the simulator under a private tag and removes the
tag, the containers and the temp dirs at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.harness import (
    LocalServer,
    Results,
    docker_section,
    free_port,
    med,
    ms,
    pct,
    run_parts,
    verdict,
)
from tests.layouts import gds
from tests.simulator_config import CACHE_OFF, PREFLIGHT_OFF

TOKEN = uuid.uuid4().hex[:8]
PREFIX = f"pc-notify-bench-{TOKEN}-"
SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


class Receiver:
    """A webhook receiver on 127.0.0.1: notes when each run's notification arrived."""

    def __init__(self, delay: float = 0) -> None:
        self.delay = delay
        self.arrived: dict[str, float] = {}
        self.count = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._runner: web.AppRunner | None = None
        self.all_in = asyncio.Event()
        self.tick = asyncio.Event()  # set on every arrival (and by the log's watcher)
        self.expected = 0

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.arrived.setdefault(body["data"]["id"], time.monotonic())
        self.count += 1
        self.tick.set()
        if self.expected and len(self.arrived) >= self.expected:
            self.all_in.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _config(storage: Path, image: str, **notify: Any) -> Any:
    from precheck.config import parse_config

    raw = {
        "server": {"storage_path": str(storage), "upload_expiry_minutes": 1440},
        "docker": docker_section(image, PREFIX),
        "preflight": PREFLIGHT_OFF,
        "cache": CACHE_OFF,
        "notify": {"allowed_hosts": ["127.0.0.1"], "webhook_secret": SECRET, **notify},
    }
    return parse_config(raw, "notify_bench")


def _watch(server: LocalServer, tick: asyncio.Event) -> tuple[dict[str, float], dict[str, float]]:
    """Note when each run's `run.outputs-stored` and `notification.sent` were applied."""
    from precheck.events.store import RecordedEvent
    from precheck.web import keys

    stored: dict[str, float] = {}
    sent: dict[str, float] = {}

    def note(r: RecordedEvent) -> None:
        if r.type == "run.outputs-stored":
            stored[r.stream.removeprefix("run-")] = time.monotonic()
        elif r.type == "notification.sent":
            sent[r.stream.removeprefix("run-")] = time.monotonic()
            tick.set()

    server.app[keys.STORE].add_listener(note)
    return stored, sent


async def bench_end_to_hook(tmp: Path, image: str, results: Results) -> None:
    """Part 1: 20 real runs, each end told by webhook."""
    receiver = Receiver()
    await receiver.start()
    try:
        async with LocalServer(_config(tmp / "p1", image)) as server:
            stored, sent = _watch(server, receiver.tick)
            upload = await server.upload(gds("chip_top"))
            latencies, to_sent = [], []
            for _ in range(20):
                body = {
                    "upload_id": upload,
                    "top_cell": "chip_top",
                    "notify": [{"webhook": receiver.url}],
                }
                run_id = str((await server.call("POST", "/api/v1/prechecks", json=body))["Id"])
                await server.wait(run_id)
                async with asyncio.timeout(30):
                    while run_id not in receiver.arrived or run_id not in sent:
                        receiver.tick.clear()
                        await receiver.tick.wait()
                latencies.append(receiver.arrived[run_id] - stored[run_id])
                to_sent.append(sent[run_id] - stored[run_id])
    finally:
        await receiver.close()
    p50 = med(latencies)
    print("1. run end (run.outputs-stored applied) -> webhook received, 20 runs")
    print(f"   p50 {ms(p50)}   p90 {ms(pct(latencies, 90))}   max {ms(max(latencies))}")
    print(f"   -> notification.sent applied: p50 {ms(med(to_sent))}")
    results["1"] = [f"1. end -> webhook p50 {ms(p50).strip()} (< 100 ms) {verdict(p50 < 0.1)}"]


async def bench_many_slow(tmp: Path, image: str, results: Results) -> None:
    """Part 2: 200 ends at once, a receiver taking 1 s per request."""
    from precheck.events.types import Metadata, RunExited, RunOutputsStored, RunStarted
    from precheck.web import keys

    count = 200
    receiver = Receiver(delay=1.0)
    receiver.expected = count
    await receiver.start()
    reads: list[float] = []
    try:
        config = _config(tmp / "p2", image)
        # No supervisor: the runs stay queued until their ends are recorded below.
        from precheck.app import create_app

        server = LocalServer.__new__(LocalServer)
        server.app = create_app(config, run_containers=False)
        server.runner = web.AppRunner(server.app, access_log=None)
        await server.runner.setup()
        port = free_port()
        await web.TCPSite(server.runner, "127.0.0.1", port).start()
        server.base = f"http://127.0.0.1:{port}"
        server.session = aiohttp.ClientSession()
        try:
            upload = await server.upload(gds("chip_top"))
            ids = []
            for _ in range(count):
                body = {
                    "upload_id": upload,
                    "top_cell": "chip_top",
                    "notify": [{"webhook": receiver.url}],
                }
                ids.append(str((await server.call("POST", "/api/v1/prechecks", json=body))["Id"]))
            store, now = server.app[keys.STORE], server.app[keys.CLOCK]()
            events: list[Any] = []
            for run_id in ids:
                events += [
                    RunStarted(run_id, "c", "precheck:bench", "sha256:00", now),
                    RunExited(run_id, "completed", 0, "", None, {}, False, now, now),
                    RunOutputsStored(run_id, None, (), {}, None, now),
                ]
            started = time.monotonic()
            await store.append(events, Metadata("supervisor"))

            async def read_while_delivering() -> None:
                while not receiver.all_in.is_set():
                    t = time.monotonic()
                    await server.call("GET", f"/api/v1/prechecks/{ids[0]}")
                    reads.append(time.monotonic() - t)

            reader = asyncio.create_task(read_while_delivering())
            async with asyncio.timeout(120):
                await receiver.all_in.wait()
            all_in = time.monotonic() - started
            await reader
            await asyncio.sleep(1.5)  # any duplicate would come by now
        finally:
            await server.session.close()
            await server.runner.cleanup()
    finally:
        await receiver.close()
    p99 = pct(reads, 99)
    every = len(receiver.arrived) == count
    print(f"2. {count} runs ending at once, receiver 1 s per request (notify.max_concurrent 32)")
    print(f"   every delivery in {all_in:.1f} s: {len(receiver.arrived)}/{count} runs told,")
    print(f"   {receiver.count} requests in all")
    print(f"   GET of a run meanwhile ({len(reads)} reads): p50 {ms(med(reads))} p99 {ms(p99)}")
    results["2"] = [
        f"2. reads while 200 deliver p99 {ms(p99).strip()} (< 50 ms) {verdict(p99 < 0.05)};"
        f" {len(receiver.arrived)}/{count} told {verdict(every)}"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.notify_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", type=int, choices=(1, 2), action="append")
    parser.add_argument("--image", help="use this simulator tag instead of building one")
    args = parser.parse_args()
    run_parts(
        args.only or [1, 2],
        {1: bench_end_to_hook, 2: bench_many_slow},
        image=args.image,
        tag=f"precheck-simulator:bench-{TOKEN}",
        tmp_prefix="precheck-notify-bench-",
        container_filters=(f"name={PREFIX}",),
    )


if __name__ == "__main__":
    main()
