"""Pre-flight benchmark: reading layouts in the child process, and upload to `Layout.Status: done`.

1. Reading: GDS and OASIS files of 10 MB, 100 MB and 1 GiB (many 1 µm squares in one top cell,
   written straight to disk), each read by the real child (`precheck/layout/inspect.py`)
   through `read_layout`, with room to spare (16 GiB, 10 minutes) so the true figures show.
   Printed: the reading's wall time (the parent's view, child start included) and the child's
   peak RSS, against the targets: 10 MB < 1 s, 100 MB < 5 s, 1 GiB < 60 s (the default
   `preflight.max_seconds`), and peak memory under 4096 MB (the default
   `preflight.max_memory_mb`), so a default server reads it.
2. End to end: a 100 MB GDS uploaded to the app in this process (no containers), from the
   upload's acknowledgement to `Layout.Status: done` (target < 5 s).

Run: `python -m bench.preflight_bench` (all sizes; a few minutes and ~2 GiB of temp disk);
`--quick` for 10 MB only.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.harness import free_port, machine_line, temp_folder, verdict
from precheck.app import create_app
from precheck.config import parse_config
from precheck.events.store import RecordedEvent
from precheck.events.types import UploadInspected, UploadInspectionFailed
from precheck.layout.reading import Limits, ReadFailed, read_layout
from precheck.web import keys
from tests.real_layouts import write_big_gds, write_big_oasis

MB = 1_000_000
GIB = 1 << 30
DEFAULT_MEMORY_MB = 4096
ROOMY = Limits(max_seconds=600, max_memory_mb=16384)
TIME_TARGET = {10 * MB: 1.0, 100 * MB: 5.0, GIB: 60.0}
WRITERS: dict[str, Callable[[Path, int], int]] = {"gds": write_big_gds, "oas": write_big_oasis}


def _size_name(size: int) -> str:
    return "1 GiB" if size == GIB else f"{size // MB} MB"


async def reading(folder: Path, sizes: list[int]) -> list[str]:
    """Read each file once in the child; one printed line each."""
    lines = []
    for size in sizes:
        for fmt, write in WRITERS.items():
            path = folder / f"layout.{fmt}"
            shapes = write(path, size)
            started = time.perf_counter()
            try:
                facts = await read_layout(path, ROOMY)
            except ReadFailed as e:
                lines.append(f"{_size_name(size):>6} {fmt:3}: {shapes:>10,} shapes: MISS: {e}")
                continue
            finally:
                path.unlink()
            took = time.perf_counter() - started
            peak_mb = facts.max_rss_kib / 1024
            ok_time = took < TIME_TARGET[size]
            ok_memory = peak_mb < DEFAULT_MEMORY_MB
            lines.append(
                f"{_size_name(size):>6} {fmt:3}: {shapes:>10,} shapes: read in {took:6.2f} s"
                f" (target < {TIME_TARGET[size]:g} s: {verdict(ok_time)}),"
                f" child peak {peak_mb:7.0f} MB"
                f" (target < {DEFAULT_MEMORY_MB} MB: {verdict(ok_memory)})"
            )
            print(lines[-1], flush=True)
    return lines


async def end_to_end(folder: Path) -> str:
    """A 100 MB GDS uploaded to a live app: acknowledgement to `Layout.Status: done`."""
    config = parse_config(
        {"server": {"storage_path": str(folder / "data")}, "preflight": {"enabled": True}},
        "bench",
    )
    app = create_app(config, run_containers=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    path = folder / "chip_top.gds"
    write_big_gds(path, 100 * MB)
    done: dict[str, float] = {}
    recorded = asyncio.Event()
    app[keys.STORE].add_listener(lambda r: _note(r, done, recorded))
    try:
        async with aiohttp.ClientSession() as session:
            with path.open("rb") as body:
                async with session.post(
                    f"http://127.0.0.1:{port}/api/v1/uploads?name=chip_top.gds",
                    data=body,
                    headers={"Content-Type": "application/octet-stream"},
                ) as r:
                    assert r.status == 200, await r.text()
                    upload_id = (await r.json())["Id"]
                    acked = time.perf_counter()
            while upload_id not in done:
                recorded.clear()
                await asyncio.wait_for(recorded.wait(), 120)
            url = f"http://127.0.0.1:{port}/api/v1/uploads/{upload_id}"
            async with session.get(url) as r:
                status = (await r.json())["Layout"]["Status"]
    finally:
        await runner.cleanup()
    took = done[upload_id] - acked
    ok = status == "done" and took < 5
    return (
        f"100 MB GDS upload acknowledged to Layout.Status {status}: {took:.2f} s"
        f" (target < 5 s: {verdict(ok)})"
    )


def _note(r: RecordedEvent, done: dict[str, float], recorded: asyncio.Event) -> None:
    if isinstance(r.event, UploadInspected | UploadInspectionFailed):
        done.setdefault(r.event.upload_id, time.perf_counter())
        recorded.set()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 MB files only, no end to end")
    args = parser.parse_args()
    sizes = [10 * MB] if args.quick else [10 * MB, 100 * MB, GIB]
    print(machine_line(note=True), flush=True)
    with temp_folder("preflight-bench-") as folder:
        lines = await reading(folder, sizes)
        if not args.quick:
            lines.append(await end_to_end(folder))
            print(lines[-1], flush=True)
    print("\nPre-flight benchmark")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    asyncio.run(main())
