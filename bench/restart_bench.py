"""Restart benchmark: how long a server on a log of 1,000,000 events takes to serve again.

The log is the replay log of `store_bench` (50,000 uploads and runs, each run queued, started,
16 steps, finished). The app starts in this process without a supervisor, its clock at the
log's time (so nothing expires); "serving" is the first `/health` answer on its port. Timed:

1. a start with no snapshot: a full replay (prints events/s; target >= 100,000);
2. the clean stop after it, which writes the snapshot (prints its size and time);
3. a start from that snapshot (target < 1 s);
4. a start from the snapshot with `--after` (10,000) events appended after it, folded in.

After start 3, a periodic snapshot of that state is written twice, pickled in the event loop
and (as the server does) in a forked copy: how long each takes and the loop's longest stall.

Run: `python -m bench.restart_bench` (a few minutes, most of it building the log).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.harness import Timer, free_port, machine_line, temp_folder
from bench.store_bench import REPLAY_EVENTS, T0, build_log, history
from precheck.app import create_app
from precheck.config import Config, parse_config
from precheck.events.codec import encode, encode_metadata, iso
from precheck.events.store import EventStore, chain_hash
from precheck.events.types import stream_of
from precheck.projections.snapshot import read_header, snapshot_path
from precheck.service.snapshots import SnapshotWriter
from precheck.web import keys


def _config(storage: Path, port: int) -> Config:
    raw = {
        "server": {"storage_path": str(storage), "host": "127.0.0.1", "port": port},
        "preflight": {"enabled": False},
    }
    return parse_config(raw, "restart-bench")


async def snapshot_stalls(app: web.Application, folder: Path) -> None:
    """A periodic snapshot of the started server's state, taken in the loop and in a forked
    copy (the server's way): how long each took, and the loop's longest stall meanwhile."""
    projections = app[keys.PROJECTIONS]
    for serving in (False, True):
        writer = SnapshotWriter(projections, folder / "stall.snapshot", written=0)
        gaps: list[float] = []

        async def tick(gaps: list[float]) -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick(gaps))
        await asyncio.sleep(0.05)
        with Timer() as took:
            assert await writer.write(serving=serving)
        ticker.cancel()
        how = "in a forked copy (the server's way)" if serving else "in the loop"
        print(
            f"   periodic snapshot {how}: {took.wall:.2f} s,"
            f" the loop's longest stall {max(gaps) * 1000:,.0f} ms"
        )


async def start_and_stop(config: Config, stalls: bool = False) -> tuple[float, float, int, float]:
    """Seconds to the first `/health` answer (printing its CPU seconds too: on a busy machine
    wall time includes waiting for a core), seconds to stop (which writes the snapshot; its CPU
    seconds printed too), events in the log, and the events replayed per second of start."""
    app = create_app(config, clock=lambda: T0 + timedelta(days=1), run_containers=False)
    runner = web.AppRunner(app, access_log=None)
    started, cpu = time.perf_counter(), time.process_time()
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", config.server.port).start()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{config.server.port}/health") as r,
    ):
        assert r.status == 200, await r.text()
    serving = time.perf_counter() - started
    print(f"   (start: {serving:.2f} s wall, {time.process_time() - cpu:.2f} s cpu)")
    head = app[keys.STORE].head
    if stalls:
        await snapshot_stalls(app, config.server.storage_path)
    cpu = time.process_time()
    with Timer() as stop:
        await runner.cleanup()
    print(f"   (stop: {stop.wall:.2f} s wall, {time.process_time() - cpu:.2f} s cpu)")
    return serving, stop.wall, head, head / serving


def append_after(db: Path, n: int) -> None:
    """`n` more events (another run's history) appended as the store would write them."""
    with closing(sqlite3.connect(db)) as conn, conn:
        position, prev = conn.execute(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
        versions: dict[str, int] = {}
        recorded = iso(T0 + timedelta(hours=1))
        rows = []
        for events, meta in history(n):
            meta_text = encode_metadata(meta)
            for event in events:
                # Streams of their own: the log's runs are named r0000000..., these x...
                stream = "x" + stream_of(event)
                version = versions[stream] = versions.get(stream, 0) + 1
                position += 1
                tag, schema, data = encode(event)
                data = data.replace('"u0', '"xu0').replace('"r0', '"xr0')
                prev = chain_hash(
                    prev, position, stream, version, tag, schema, data, meta_text, recorded
                )
                row = (position, stream, version, tag, schema, data, meta_text, recorded, prev)
                rows.append(row)
        conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", rows)


async def main(args: argparse.Namespace) -> None:
    print(machine_line(note=True))
    with temp_folder("restart-bench-", args.dir) as folder:
        storage = folder / "data"
        storage.mkdir()
        db = storage / "precheck.db"
        built = await build_log(db, args.events)
        await (await EventStore.open(db)).close()
        print(f"log: {args.events:,} events built in {built:.1f} s ({db.stat().st_size >> 20} MiB)")
        config = _config(storage, free_port())
        snap = snapshot_path(db)

        serving, stop, head, rate = await start_and_stop(config)
        print(
            f"1. start with no snapshot: serving after {serving:.2f} s"
            f" ({rate:,.0f} events/s replayed; target >= 100,000)"
        )
        info, _ = read_header(snap)
        print(
            f"2. clean stop: {stop:.2f} s, snapshot at position {info.position:,} written"
            f" ({info.bytes / 2**20:.1f} MiB)"
        )
        serving, _, head2, _ = await start_and_stop(config, stalls=True)
        assert head2 == head
        print(f"3. start from the snapshot: serving after {serving:.2f} s (target < 1 s)")

        append_after(db, args.after)
        serving, _, head3, _ = await start_and_stop(config)
        print(
            f"4. start from the snapshot with {head3 - head:,} later events folded:"
            f" serving after {serving:.2f} s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.restart_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=REPLAY_EVENTS, help="events in the log")
    parser.add_argument("--after", type=int, default=10_000, help="events after the snapshot")
    parser.add_argument("--dir", default=None, help="folder for the temp files")
    asyncio.run(main(parser.parse_args()))
