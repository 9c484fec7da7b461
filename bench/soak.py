"""Fault-injection soak: simulator runs of mixed kinds while a seeded driver kills -9 and
restarts the server, restarts the Docker engine, kills containers and cuts the connection the
server holds to Docker (its event stream and log follows with it).

Everything is real: the server is `python -m precheck serve` in its own process, the engine a
private `dockerd` on its own socket, data root, exec root and pid file (the simulator image
moved in with `docker save | docker load`), and between them a socket relay this script can
cut. Afterwards every run must be final, each completed run must hold each of its log lines
exactly once, `precheck-server verify` (chain, triggers, replay == the live server) must pass
and no labelled container may be left. Prints runs, faults injected per kind, the runs that
needed a second attempt, and lost = 0.

System failures are retried (`docker.max_attempts`, 2 unless `--max-attempts` says otherwise),
so the line check knows attempts: the attempts' lines tile the run's lines 1..N with no gap
and no overlap, and the last attempt of a completed run holds each of its lines once.

Run: `python -m bench.soak` (100 runs; under 10 minutes on 2 cores), `--runs N --seed S`.
The suite runs a short version (tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from bench.harness import ROOT, ServerProcess, temp_folder
from tests.engines import PrivateEngine, unmount_below
from tests.layouts import gds
from tests.simulator_config import simulator_docker

IMAGE = "precheck-simulator:latest"
FINAL = ("completed", "failed", "cancelled")
FAULTS = ("server killed", "engine restarted", "container killed", "connection cut")


class Relay:
    """A unix socket the server takes for Docker's, relaying to the engine's; `cut` closes
    every connection through it at once, as a network fault would."""

    def __init__(self, listen: Path, target: Path) -> None:
        self.listen, self.target = listen, target
        self.server: asyncio.Server | None = None
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.listen))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
        except OSError:
            writer.close()
            return
        pair = (writer, up_writer)
        self.pairs.add(pair)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self.pairs.discard(pair)
            for w in pair:
                w.close()

    def cut(self) -> int:
        cut = len(self.pairs)
        for pair in list(self.pairs):
            for w in pair:
                w.transport.abort()
        return cut

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


@attrs.define
class Planned:
    """One run to make: its layout's steering and how many noise lines it prints."""

    directives: tuple[str, ...]
    lines: int
    run_id: str | None = None


def plan(runs: int, rng: random.Random) -> list[Planned]:
    """Mixed kinds: passes with a log, design failures, deferred errors, system failures."""
    out = []
    for _ in range(runs):
        lines = rng.randint(50, 1500)
        kind = rng.choices(["pass", "design", "deferred", "system"], [6, 2, 1, 1])[0]
        steer = {
            "pass": (),
            "design": ("fail=KLayout.CheckSize",),
            "deferred": ("deferred=2",),
            "system": ("exit=3",),
        }[kind]
        out.append(Planned(("step_sleep=0.05", f"lines={lines}", *steer), lines))
    return out


@attrs.define
class Report:
    """What the soak saw."""

    runs: int
    faults: Counter[str]
    statuses: Counter[str]
    lost: list[str]
    seconds: float
    stuck_in_engine: list[str]
    retried: int = 0  # runs that needed more than one attempt
    max_attempts: int = 1
    retry_reasons: Counter[str] = attrs.field(factory=Counter)  # why attempts failed

    def lines(self) -> list[str]:
        faults = ", ".join(f"{k}: {self.faults[k]}" for k in FAULTS)
        ended = ", ".join(f"{k} {n}" for k, n in sorted(self.statuses.items()))
        return [
            f"runs: {self.runs} ({ended})",
            f"faults injected: {sum(self.faults.values())} ({faults})",
            f"runs that needed a second attempt: {self.retried}"
            f" (max_attempts = {self.max_attempts})",
            "attempts that failed, by why: "
            + (", ".join(f"{why}: {n}" for why, n in self.retry_reasons.most_common()) or "none"),
            f"lost = {len(self.lost)}" + ("" if not self.lost else f": {self.lost[:10]}"),
            f"containers the engine itself could not remove after its restart: "
            f"{len(self.stuck_in_engine)}",
            f"took {self.seconds:.0f} s",
        ]


class Soak:
    """The driver: submits the planned runs, injects faults, then checks what is left."""

    def __init__(
        self, tmp: Path, runs: int, seed: int, fault_every: float, max_attempts: int = 2
    ) -> None:
        self.tmp = tmp
        self.max_attempts = max_attempts
        self.retried = 0
        self.retry_reasons: Counter[str] = Counter()
        self.rng = random.Random(seed)
        self.planned = plan(runs, self.rng)
        self.fault_every = fault_every
        self.engine = PrivateEngine(tmp / "engine", IMAGE)
        self.relay = Relay(tmp / "relay.sock", self.engine.socket)
        self.server: ServerProcess | None = None
        self.faults: Counter[str] = Counter()
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.storage = tmp / "data"
        self.stuck_in_engine: list[str] = []

    async def start_server(self) -> None:
        server = {
            "storage_path": str(self.storage),
            "max_concurrent": 3,
            "upload_expiry_minutes": 1440,
        }
        docker = simulator_docker(
            IMAGE, url=f"unix://{self.relay.listen}", timeout_minutes=2, container_prefix="soak-",
            max_attempts=self.max_attempts,
        )  # fmt: skip
        self.server = await ServerProcess.start(self.tmp, "soak", server, docker)
        for _ in range(600):
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self.session.get(self.server.base + "/health") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the server did not start:\n{self.server.log.read_text()[-3000:]}")

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        """A request to whichever server process runs now; retried while it is down."""
        for _ in range(400):
            assert self.server is not None
            try:
                async with self.session.request(method, self.server.base + path, **kw) as r:
                    if r.status < 500:
                        return r.status, await r.json()
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{method} {path}: no answer")

    async def submit(self, p: Planned) -> None:
        _, up = await self.call(
            "POST", "/api/v1/uploads?name=chip_top.gds", data=gds("chip_top", *p.directives),
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        _, run = await self.call(
            "POST",
            "/api/v1/prechecks",
            json={"upload_id": up["Id"], "top_cell": "chip_top", "preflight": "warn"},
        )
        p.run_id = run["Id"]

    async def inject(self, stop: asyncio.Event) -> None:
        """A fault every `fault_every` seconds or so, of a kind the seed picks."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.uniform(0.5, 1.5) * self.fault_every)
                return
            kind = self.rng.choice(FAULTS)
            if kind == "server killed":
                assert self.server is not None
                self.server.proc.kill()  # -9: no shutdown at all
                await self.server.proc.wait()
                await self.start_server()
            elif kind == "engine restarted":
                await self.engine.restart()
            elif kind == "container killed":
                running = (await self.engine.output("ps", "-q", "--filter", "name=soak-")).split()
                if not running:
                    continue
                await self.engine.docker("kill", self.rng.choice(running), check=False)
            else:
                if not self.relay.cut():
                    continue
            self.faults[kind] += 1

    async def run(self) -> Report:
        started = time.monotonic()
        await self.engine.start()
        await self.engine.load_image()
        await self.relay.start()
        await self.start_server()
        stop = asyncio.Event()
        faults = asyncio.create_task(self.inject(stop))
        try:
            for i, p in enumerate(self.planned):
                await self.submit(p)
                if i % 3 == 2:
                    await asyncio.sleep(self.rng.uniform(0.5, 2.0))
            await self.until_final(deadline=time.monotonic() + 240, stop=stop)
        finally:
            stop.set()
            await faults
        lost = await self.check()
        statuses = Counter(await self.statuses())
        seconds = time.monotonic() - started
        return Report(
            len(self.planned),
            self.faults,
            statuses,
            lost,
            seconds,
            self.stuck_in_engine,
            self.retried,
            self.max_attempts,
            self.retry_reasons,
        )

    async def statuses(self) -> list[str]:
        _, runs = await self.call("GET", "/api/v1/prechecks")
        return [r["State"]["Status"] for r in runs]

    async def until_final(self, deadline: float, stop: asyncio.Event) -> None:
        """Until every run is final (faults stop once three quarters are)."""
        while time.monotonic() < deadline:
            statuses = await self.statuses()
            final = sum(s in FINAL for s in statuses)
            if final >= 0.75 * len(self.planned):
                stop.set()
            if final == len(self.planned):
                return
            await asyncio.sleep(0.5)

    async def check(self) -> list[str]:
        """Every way a run or a line can be lost, as one line each."""
        lost = []
        for p in self.planned:
            _, doc = await self.call("GET", f"/api/v1/prechecks/{p.run_id}")
            status = doc["State"]["Status"]
            if status not in FINAL:
                lost.append(f"{p.run_id}: still {status}")
                continue
            attempts = [a["Attempt"] for a in doc.get("Attempts") or []] or [1]
            if len(attempts) > 1:
                self.retried += 1
            for a in (doc.get("Attempts") or [])[:-1]:
                self.retry_reasons[_gist(a["Error"])] += 1
            pages = [await self.attempt_lines(p, n) for n in attempts]
            lost += _gaps(p, pages)
            if status != "completed":
                continue
            noise = [t for t in pages[-1]["lines"] if t.startswith("noise ")]
            if noise != [f"noise {i}" for i in range(1, p.lines + 1)]:
                lost.append(f"{p.run_id}: {len(noise)} noise lines for {p.lines}")
        verify = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "precheck", "verify", "--config", str(self.tmp / "soak.toml"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        out, _ = await verify.communicate()
        if verify.returncode != 0:
            lost.append(f"verify: {out.decode(errors='replace').strip()[-500:]}")
        for _ in range(100):  # the supervisor removes each container after its run's end
            left = (await self.engine.output("ps", "-aq", "--filter", "name=soak-")).split()
            if not left:
                break
            await asyncio.sleep(0.1)
        else:
            rows = await self.engine.output(
                "ps", "-a", "--filter", "name=soak-", "--format", "{{.Names}}\t{{.Status}}"
            )
            for row in rows.strip().splitlines():
                name, _, status = row.partition("\t")
                if status == "Removal In Progress":
                    # The engine was restarted while removing it and cannot finish (its
                    # file system stays mounted): Docker's own state, shown apart.
                    self.stuck_in_engine.append(name)
                else:
                    lost.append(f"container left: {name} ({status})")
        return lost

    async def attempt_lines(self, p: Planned, attempt: int) -> dict[str, Any]:
        """One attempt's output lines, as `/logs?attempt=N` serves them."""
        _, page = await self.call(
            "GET",
            f"/api/v1/prechecks/{p.run_id}/logs",
            params={"limit": "10000", "attempt": str(attempt)},
        )
        return dict(page)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop(20)
        await self.relay.close()
        await self.session.close()
        with contextlib.suppress(Exception):
            left = (await self.engine.output("ps", "-aq")).split()
            if left:
                await self.engine.docker("rm", "-f", *left, check=False)
        await self.engine.stop()
        unmount_below(self.tmp)


def _gist(error: str) -> str:
    """An attempt's error without its ids and numbers, to count alike ones together."""
    return " ".join(w for w in error.split()[:6] if not any(c.isdigit() for c in w))


def _gaps(p: Planned, pages: list[dict[str, Any]]) -> list[str]:
    """How the attempts' lines fail to tile the run's lines 1..N: a gap, an overlap, or a hole
    inside an attempt (an attempt that printed nothing, like a failed start, has no lines)."""
    wrong, expected = [], 1
    for n, page in enumerate(pages, 1):
        if not page["lines"]:
            continue
        first, last = page["first_line"], page["last_line"]
        if first != expected:
            wrong.append(f"{p.run_id}: attempt {n} starts at line {first}, not {expected}")
        if last - first + 1 != len(page["lines"]):
            wrong.append(
                f"{p.run_id}: attempt {n} holds {len(page['lines'])} lines {first}..{last}"
            )
        expected = last + 1
    return wrong


async def soak(
    tmp: Path, runs: int, seed: int, fault_every: float, max_attempts: int = 2
) -> Report:
    """Run the soak in `tmp`; what it saw."""
    driver = Soak(tmp, runs, seed, fault_every, max_attempts)
    try:
        return await driver.run()
    finally:
        await driver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-every", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--max-attempts", type=int, default=2, help="docker.max_attempts")
    parser.add_argument("--keep", action="store_true", help="keep the folder when runs are lost")
    args = parser.parse_args()
    # The private engine's sockets must stay short: a folder right under /tmp.
    with temp_folder("soak-", "/tmp") as tmp:
        report = asyncio.run(soak(tmp, args.runs, args.seed, args.fault_every, args.max_attempts))
        if args.keep and report.lost:
            kept = Path(f"{tmp}-kept")
            os.rename(tmp, kept)
            tmp.mkdir()
            print(f"kept in {kept}")
    for line in report.lines():
        print(line)
    print(
        json.dumps(
            {"lost": len(report.lost), "faults": dict(report.faults), "retried": report.retried}
        )
    )
    sys.exit(1 if report.lost else 0)


if __name__ == "__main__":
    main()
