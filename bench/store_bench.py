"""Event store benchmarks, on real SQLite files in a temp folder.

(a) Durable appends: 50 writers, each appending single events to its own stream in a loop,
    through the store's group commit with `synchronous=FULL`; prints events/s (target >= 10,000)
    and the mean number of events per commit.
(b) Replay of 1,000,000 events (uploads, runs queued, started, progressed 16 times, finished)
    into empty `Projections`; prints events/s (target >= 100,000), split into reading and
    decoding the rows and applying them, and how long building the file took.

Run: `python -m bench.store_bench` (about a minute); `--profile` prints where replay time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.harness import Timer, temp_folder
from precheck.events.codec import encode, encode_metadata, iso
from precheck.events.store import GENESIS, EventStore, chain_hash
from precheck.events.types import (
    Event,
    Metadata,
    OutputFile,
    RunFinished,
    RunProgressed,
    RunQueued,
    RunStarted,
    UploadReceived,
    stream_of,
)
from precheck.projections import Projections

WRITERS = 50
APPEND_SECONDS = 5.0
REPLAY_EVENTS = 1_000_000
T0 = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
META = Metadata("bench", "127.0.0.1", "req-0123456789abcdef")
SUPERVISOR = Metadata("supervisor")


# (a) Appends ----------------------------------------------------------------------------------


async def bench_appends(folder: Path) -> None:
    store = await EventStore.open(folder / "appends.db")
    recorded_times: list[datetime] = []
    stop = asyncio.Event()

    async def writer(w: int) -> int:
        n = 0
        while not stop.is_set():
            n += 1
            [r] = await store.append([RunProgressed(f"w{w}", n, 16, "KLayout.CheckSize", T0)], META)
            recorded_times.append(r.recorded)
        return n

    try:
        with Timer() as took:
            tasks = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
            await asyncio.sleep(APPEND_SECONDS)
            stop.set()
            counts = await asyncio.gather(*tasks)
    finally:
        await store.close()
    events = sum(counts)
    # Every row of one commit carries that commit's time, so distinct times count the commits.
    commits = len(set(recorded_times))
    print(f"(a) durable appends, {WRITERS} concurrent writers, synchronous=FULL, WAL")
    print(
        f"    {events:,} events in {took.wall:.2f} s: {events / took.wall:,.0f} events/s"
        f" (target >= 10,000); cpu {took.cpu:.2f} s"
    )
    print(
        f"    {commits:,} commits: mean batch {events / commits:.1f} events,"
        f" {commits / took.wall:,.0f} commits/s"
    )


# (b) Replay -----------------------------------------------------------------------------------


def history(n: int) -> Iterator[tuple[list[Event], Metadata]]:
    """Appends as the server makes them, `n` events in all: per run a client uploads a layout
    and queues it (one request each), then the supervisor starts it, records 16 steps one by
    one and the verdict."""
    count = 0
    job = 0
    while count < n:
        u, r = f"u{job:07d}", f"r{job:07d}"
        at = T0 + timedelta(seconds=job)
        digest = f"{job:064x}"
        out = OutputFile("output/layout.gds.gz", 1234567, digest)
        ok = job % 4 != 0
        client = [Metadata("bench", "127.0.0.1", f"req-{job:07d}-{k}") for k in (1, 2)]
        steps: list[tuple[list[Event], Metadata]] = [
            ([RunProgressed(r, s, 16, f"KLayout.Step{s}", at)], SUPERVISOR) for s in range(1, 17)
        ]
        appends: list[tuple[list[Event], Metadata]] = [
            (
                [
                    UploadReceived(
                        u,
                        "chip.gds",
                        "layout.gds",
                        "gds",
                        7654321,
                        digest,
                        at,
                        at + timedelta(days=7),
                    )
                ],
                client[0],
            ),
            (
                [
                    RunQueued(
                        r,
                        u,
                        "TOP",
                        "ABCD1234",
                        "1x1",
                        False,
                        "chip.gds",
                        "layout.gds",
                        "gds",
                        7654321,
                        digest,
                        at,
                    )
                ],
                client[1],
            ),
            ([RunStarted(r, digest, "precheck:latest", "sha256:" + "e" * 64, at)], SUPERVISOR),
            *steps,
            (
                [
                    RunFinished(
                        r,
                        "completed" if ok else "failed",
                        0 if ok else 1,
                        "" if ok else "KLayout DRC found errors",
                        None if ok else "Checker.KLayoutDRC",
                        None if ok else "design",
                        {} if ok else {"KLayout DRC": 2},
                        out,
                        (out,),
                        {"density": 0.4, "cells": 12},
                        False,
                        at,
                    )
                ],
                SUPERVISOR,
            ),
        ]
        yield from appends[: n - count]
        count += len(appends)
        job += 1


async def build_log(path: Path, n: int) -> float:
    """Write `n` events as the store would; return the seconds it took.

    The rows are computed here (same codec, same chained hashes, a new recorded time every
    `EventStore.MAX_BATCH` appends as group commit would give) and inserted in one
    transaction, since one fsync per append would make the setup the slowest part.
    """
    started = time.perf_counter()
    await (await EventStore.open(path)).close()  # the store creates its own schema
    versions: dict[str, int] = {}
    prev, position = GENESIS, 0
    recorded = ""

    def rows() -> Iterator[tuple[object, ...]]:
        nonlocal prev, position, recorded
        for i, (events, meta) in enumerate(history(n)):
            if i % EventStore.MAX_BATCH == 0:
                recorded = iso(T0 + timedelta(microseconds=i))
            meta_text = encode_metadata(meta)
            for event in events:
                stream = stream_of(event)
                version = versions[stream] = versions.get(stream, 0) + 1
                position += 1
                tag, schema, data = encode(event)
                prev = chain_hash(
                    prev, position, stream, version, tag, schema, data, meta_text, recorded
                )
                yield position, stream, version, tag, schema, data, meta_text, recorded, prev

    with closing(sqlite3.connect(path)) as db, db:
        db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", rows())
    return time.perf_counter() - started


async def bench_replay(folder: Path, n: int, profile: bool) -> None:
    path = folder / "replay.db"
    build = await build_log(path, n)
    size = path.stat().st_size / 2**20
    print(f"(b) replay of {n:,} events into Projections")
    print(
        f"    built the log in {build:.1f} s ({n / build:,.0f} events/s,"
        f" rows computed and inserted directly; {size:,.0f} MiB)"
    )

    store = await EventStore.open(path)
    try:
        with Timer() as read:
            count = 0
            async for _ in store.read_all():
                count += 1
        profiler = cProfile.Profile() if profile else None
        with Timer() as total:
            if profiler:
                profiler.enable()
            projections = await Projections.replay(store)
            if profiler:
                profiler.disable()
    finally:
        await store.close()
    assert count == n and projections.position == n
    apply_wall, apply_cpu = max(total.wall - read.wall, 1e-9), max(total.cpu - read.cpu, 1e-9)
    print(
        f"    replay: {total.wall:.2f} s, {n / total.wall:,.0f} events/s (target >= 100,000);"
        f" cpu {total.cpu:.2f} s"
    )
    print(
        f"      read+decode {read.wall:.2f} s ({n / read.wall:,.0f} events/s; cpu {read.cpu:.2f} s)"
    )
    print(
        f"      apply       {apply_wall:.2f} s ({n / apply_wall:,.0f} events/s;"
        f" cpu {apply_cpu:.2f} s)"
    )
    print(
        f"      state: {len(projections.uploads.by_id):,} uploads,"
        f" {len(projections.runs.by_id):,} runs"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


async def main(args: argparse.Namespace) -> None:
    with temp_folder("store-bench-", args.dir) as folder:
        if not args.skip_appends:
            await bench_appends(folder)
        await bench_replay(folder, args.events, args.profile)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.store_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=REPLAY_EVENTS, help="events to replay")
    parser.add_argument("--profile", action="store_true", help="profile the replay")
    parser.add_argument("--skip-appends", action="store_true", help="only run the replay")
    parser.add_argument("--dir", default=None, help="folder for the temp files")
    asyncio.run(main(parser.parse_args()))
