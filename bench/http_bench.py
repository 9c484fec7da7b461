"""HTTP benchmarks of the precheck server, each against a real server process on loopback.

(a) `GET /api/v1/prechecks/{id}` with 10,000 runs in the log, against a bare aiohttp app that
    answers the same JSON document as a constant, under the same logging; prints both
    requests/s and their ratio (target >= 0.5).
(b) A 1 GiB GDS upload as a raw body; prints MB/s (target >= 200) and how much the server
    process's resident memory grew (target < 64 MB).

Run: `python -m bench.http_bench` (about a minute). Load comes from a separate process: a
native load generator when one is installed, otherwise a small aiohttp one. Servers run
without a supervisor, so no run starts while they are measured. Temp files are removed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.harness import (
    ROOT,
    config_text,
    curl_post,
    free_port,
    machine_line,
    proc_cpu,
    proc_memory,
    temp_folder,
    verdict,
    write_layout,
)

if TYPE_CHECKING:
    from precheck.events.types import Event

RUNS = 10_000
CONNECTIONS = 32
DURATION = 10.0  # per server, split into rounds
ROUNDS = 5
WARMUP = 1.0
UPLOAD_BYTES = 1 << 30
UPLOADS = 3
GDS_HEADER = b"\x00\x06\x00\x02\x02\x58"  # HEADER record, stream version 600
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'  # as `precheck-server serve` logs


# Servers ---------------------------------------------------------------------------------------


def this_module(*args: str) -> list[str]:
    """The command that runs this script with `args`, in a new process."""
    return [sys.executable, "-m", "bench.http_bench", *args]


class Server:
    """A server subprocess; its output goes to a log file next to its data."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT)
        self.base = f"http://127.0.0.1:{port}"

    def wait_ready(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(self.base + path, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout} s")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM of the server process, in bytes."""
        return proc_memory(self.proc.pid)

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server process has used."""
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def precheck_server(tmp: Path, storage: Path, name: str) -> Server:
    port = free_port()
    config = tmp / f"{name}.toml"
    server = {"host": "127.0.0.1", "port": port, "storage_path": str(storage)}
    server |= {"upload_expiry_minutes": 10080, "max_upload_mb": 2048}
    config.write_text(config_text(server), encoding="utf-8")
    return Server(this_module("--precheck-server", str(config)), port, tmp / f"{name}.log")


def run_precheck_server(config_path: Path) -> None:
    """As `precheck-server serve` runs it, minus the supervisor: no run is to start here."""
    import logging

    from aiohttp import web

    from precheck.app import create_app
    from precheck.config import load_config

    config = load_config(config_path)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    web.run_app(
        create_app(config, run_containers=False),
        host=config.server.host,
        port=config.server.port,
        access_log_format=ACCESS_LOG_FORMAT,
    )


def bare_server(tmp: Path, body: bytes) -> Server:
    port = free_port()
    body_file = tmp / "bare-body.json"
    body_file.write_bytes(body)
    argv = this_module("--bare-server", str(port), str(body_file))
    return Server(argv, port, tmp / "bare.log")


def run_bare_server(port: int, body_file: Path) -> None:
    """An aiohttp app answering one constant JSON body, logged like the precheck server."""
    import logging

    from aiohttp import web

    body = body_file.read_bytes()

    async def constant(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/health", constant)
    app.router.add_get("/api/v1/prechecks/{run_id}", constant)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    web.run_app(app, host="127.0.0.1", port=port, access_log_format=ACCESS_LOG_FORMAT)


# Building the log ------------------------------------------------------------------------------


async def build_log(storage: Path, runs: int) -> tuple[str, int]:
    """A log with one upload and `runs` runs (every other one cancelled); a queued run's id."""
    from datetime import UTC, datetime

    from precheck.domain.commands import CancelRun, QueueRun, ReceiveUpload, decide, upload_expiry
    from precheck.events.store import EventStore
    from precheck.events.types import Metadata
    from precheck.projections import Projections
    from precheck.service.command_handler import CommandHandler
    from precheck.storage.files import Storage

    files = Storage(storage)
    files.prepare()
    store = await EventStore.open(files.db_path)
    try:
        state = await Projections.replay(store)
        state.attach(store)
        handler = CommandHandler(store, state, files)
        meta = Metadata(actor="bench", client="127.0.0.1", request_id="bench")
        now = datetime.now(UTC)

        async def layout() -> AsyncIterator[bytes]:
            yield GDS_HEADER + b"\x00" * 4096

        received = await files.receive(layout(), 1 << 20)
        upload_id = uuid.uuid4().hex
        files.place_upload(received, upload_id, "input.gds")
        await handler.handle(
            ReceiveUpload(
                upload_id,
                "bench.gds",
                "input.gds",
                received.format,
                received.size,
                received.sha256,
                now,
                upload_expiry(now, 10080),
            ),
            meta,
        )

        # The events come from `decide`, as through the API, but are committed in large
        # batches: one durable commit per request would only make the setup slow.
        ids = [uuid.uuid4().hex for _ in range(runs)]
        queued: list[Event] = []
        for run_id in ids:
            cmd = QueueRun(run_id, upload_id, "chip_top", "FFFFFFFF", "1x1", False, now)
            queued.extend(decide(cmd, state).events)
        for chunk in _chunks(queued, 1000):
            await store.append(chunk, meta)
        cancels: list[Event] = []
        for run_id in ids[::2]:
            cancels.extend(decide(CancelRun(run_id, now), state).events)
        for chunk in _chunks(cancels, 1000):
            await store.append(chunk, meta)
        target = ids[-1]  # queued, at the back of a 5,000-run queue
        assert state.queue.position(target) == runs - runs // 2
        return target, store.head
    finally:
        await store.close()


def _chunks(items: list[Event], size: int) -> Iterator[list[Event]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# Load ------------------------------------------------------------------------------------------


def load(url: str, seconds: float) -> tuple[float, int]:
    """Requests/s and the count of non-2xx answers, from a separate load process."""
    if shutil.which("wrk"):
        out = subprocess.run(
            ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        errors = re.search(r"Socket errors:.*", out)
        if errors:
            print(f"    wrk: {errors.group(0)}")
        return rps, int(bad.group(1)) if bad else 0
    out = subprocess.run(
        this_module("--load", url, str(CONNECTIONS), str(seconds)),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    result = json.loads(out)
    return result["rps"], result["bad"]


def run_load(url: str, connections: int, seconds: float) -> None:
    """The fallback load generator: `connections` keep-alive connections for `seconds`."""
    import aiohttp

    async def main() -> None:
        done = bad = 0
        stop = time.monotonic() + seconds
        conn = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=conn) as session:

            async def worker() -> None:
                nonlocal done, bad
                while time.monotonic() < stop:
                    async with session.get(url) as r:
                        await r.read()
                        done += 1
                        bad += r.status >= 300

            start = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.monotonic() - start
        print(json.dumps({"rps": done / elapsed, "bad": bad}))

    asyncio.run(main())


def bench_get(tmp: Path) -> None:
    print(f"(a) GET /api/v1/prechecks/{{id}} with {RUNS:,} runs in the log")
    storage = tmp / "get-data"
    t0 = time.monotonic()
    run_id, events = asyncio.run(build_log(storage, RUNS))
    print(f"    log built: {events:,} events in {time.monotonic() - t0:.1f} s")
    path = f"/api/v1/prechecks/{run_id}"
    loader = f"wrk -t1 -c{CONNECTIONS}" if shutil.which("wrk") else "aiohttp load process"
    print(
        f"    load: {loader}, {CONNECTIONS} connections, {ROUNDS} alternating rounds of"
        f" {DURATION / ROUNDS:.0f} s per server"
    )

    servers: list[Server] = []
    try:
        server = precheck_server(tmp, storage, "get")
        servers.append(server)
        t0 = time.monotonic()
        server.wait_ready("/health")
        print(f"    precheck server up (replay included) in {time.monotonic() - t0:.1f} s")
        with urllib.request.urlopen(server.base + path) as r:
            body = r.read()
        doc = json.loads(body)
        assert doc["Id"] == run_id and doc["Queue"]["Position"] == RUNS // 2, doc["Queue"]
        bare = bare_server(tmp, body)
        servers.append(bare)
        bare.wait_ready("/health")
        # Both servers stay up and take turns, so a change in the machine's other load during
        # the run hits both alike instead of skewing the ratio.
        urls = {"precheck": server.base + path, "bare": bare.base + path}
        for url in urls.values():
            load(url, WARMUP)
        rates: dict[str, list[float]] = {name: [] for name in urls}
        bad = 0
        for _ in range(ROUNDS):
            for name, url in urls.items():
                rps, errors = load(url, DURATION / ROUNDS)
                rates[name].append(rps)
                bad += errors
    finally:
        for s in servers:
            s.stop()

    if bad:
        print(f"    WARNING: {bad} non-2xx answers")
    precheck_rps = sum(rates["precheck"]) / ROUNDS
    bare_rps = sum(rates["bare"]) / ROUNDS
    ratio = precheck_rps / bare_rps
    print(f"    response body: {len(body)} bytes (the bare app answers the same bytes)")
    for label, name, rps in (
        ("precheck server", "precheck", precheck_rps),
        ("bare aiohttp", "bare", bare_rps),
    ):
        print(f"    {label + ':':17}{rps:10.0f} requests/s  (rounds: {_list(rates[name])})")
    print(f"    ratio: {ratio:.2f} (target >= 0.5) {verdict(ratio >= 0.5, 'OK', 'MISSED')}")


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


# Upload ----------------------------------------------------------------------------------------


def make_layout(path: Path, size: int) -> str:
    """A GDS header then filler, `size` bytes on disk; its sha256."""
    block = bytes(range(256)) * 4096  # 1 MiB of filler that does not compress to nothing
    first = GDS_HEADER + block[len(GDS_HEADER) :]
    # On disk before the clock starts, so the upload does not wait on this file's writeback.
    return write_layout(path, first, block, size, fsync=True)


def post_file(url: str, path: Path) -> tuple[int, bytes]:
    """POST `path` as a raw body, streamed from disk by a separate client process."""
    if shutil.which("curl"):
        out = subprocess.run(curl_post(path, url), capture_output=True, check=True).stdout
        body, _, code = out.rpartition(b"\n")
        return int(code), body
    req = urllib.request.Request(
        url,
        data=path.open("rb"),
        method="POST",
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(path.stat().st_size),
        },
    )
    with urllib.request.urlopen(req) as r:
        return r.status, r.read()


def bench_upload(tmp: Path) -> None:
    mib = UPLOAD_BYTES >> 20
    print(f"(b) upload of a {mib} MiB GDS file as a raw body, {UPLOADS} times")
    layout = tmp / "big.gds"
    sha256 = make_layout(layout, UPLOAD_BYTES)
    storage = tmp / "upload-data"
    server = precheck_server(tmp, storage, "upload")
    rates = []
    try:
        server.wait_ready("/health")
        before = server.memory()
        for _ in range(UPLOADS):
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            status, body = post_file(server.base + "/api/v1/uploads?name=big.gds", layout)
            elapsed, cpu = time.monotonic() - t0, server.cpu_seconds() - cpu0
            if status != 200:
                raise SystemExit(f"upload failed: {status} {body[:500]!r}")
            doc = json.loads(body)
            assert doc["Size"] == UPLOAD_BYTES, doc
            assert doc["Checksums"]["sha256"] == sha256, "checksum differs"
            rates.append(UPLOAD_BYTES / elapsed / 1e6)
            print(
                f"    stored, fsynced and acknowledged in {elapsed:.2f} s ({rates[-1]:.0f} MB/s),"
                f" sha256 verified; server CPU {cpu:.2f} s"
            )
            # Deleted again, so three uploads need no more disk than one.
            url = f"{server.base}/api/v1/uploads/{doc['Id']}"
            with urllib.request.urlopen(urllib.request.Request(url, method="DELETE")) as r:
                assert r.status == 200
        after = server.memory()
    finally:
        server.stop()
    rate = sorted(rates)[len(rates) // 2]
    growth = (after["VmHWM"] - before["VmRSS"]) / 1e6
    print(
        f"    throughput (median): {rate:.0f} MB/s ({rate * 1e6 / (1 << 20):.0f} MiB/s)"
        f" (target >= 200) {verdict(rate >= 200, 'OK', 'MISSED')}"
    )
    print(
        f"    server memory: VmRSS {before['VmRSS'] / 1e6:.1f} -> {after['VmRSS'] / 1e6:.1f} MB,"
        f" VmHWM {before['VmHWM'] / 1e6:.1f} -> {after['VmHWM'] / 1e6:.1f} MB"
    )
    print(
        f"    peak RSS growth: {growth:.1f} MB (target < 64) {verdict(growth < 64, 'OK', 'MISSED')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--precheck-server", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", nargs=2, metavar=("PORT", "BODY"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--load", nargs=3, metavar=("URL", "CONN", "SECONDS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--only", choices=("get", "upload"), help="run one benchmark")
    args = parser.parse_args()
    if args.precheck_server:
        run_precheck_server(Path(args.precheck_server))
        return
    if args.bare_server:
        run_bare_server(int(args.bare_server[0]), Path(args.bare_server[1]))
        return
    if args.load:
        run_load(args.load[0], int(args.load[1]), float(args.load[2]))
        return
    with temp_folder("precheck-bench-") as tmp:
        print(machine_line())
        if args.only in (None, "get"):
            bench_get(tmp)
        if args.only in (None, "upload"):
            bench_upload(tmp)


if __name__ == "__main__":
    main()
