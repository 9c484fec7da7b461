"""Backup benchmark: `precheck-server backup DEST` of a store with 10 GB of files.

The store holds `--files` uploads of `--mib` MiB each (100 x 100 MiB: 10 GiB), each announced
by its `upload.received` in the log as the server writes it. Timed, each as a real CLI process:

1. the first backup into an empty DEST (every file read, checked against its sha256, written
   and synced);
2. a repeated backup with nothing new (only the log is copied; the files are known);
3. a repeated backup after `--new` (5) more uploads.

Prints seconds and MB/s (of the bytes the store's files hold, and of those copied). Needs
twice the store's size free on the disk of `--dir`; everything is removed at the end.

Run: `python -m bench.backup_bench` (several minutes, most of it writing the store).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.harness import config_text, machine_line, temp_folder, write_layout
from precheck.events.store import EventStore
from precheck.events.types import Metadata, UploadReceived
from precheck.storage.files import Storage

T0 = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
BENCH = Metadata("bench", "127.0.0.1", "req-backup-bench")


async def add_uploads(storage: Storage, first: int, count: int, size: int, block: bytes) -> int:
    """`count` uploads of `size` bytes, files first, then their events; the bytes written."""
    store = await EventStore.open(storage.db_path)
    try:
        for i in range(first, first + count):
            upload_id = f"u{i:05d}"
            path = storage.upload_file(upload_id, "layout.gds")
            path.parent.mkdir(parents=True, exist_ok=True)
            # A distinct first line: every file has its own sha256.
            digest = await asyncio.to_thread(
                write_layout, path, f"upload {i}\n".encode(), block, size, True
            )
            at = T0 + timedelta(minutes=i)
            event = UploadReceived(
                upload_id, f"chip{i}.gds", "layout.gds", "gds", size, digest, at,
                at + timedelta(days=3650),
            )  # fmt: skip
            await store.append([event], BENCH)
    finally:
        await store.close()
    return count * size


def backup(config: Path, dest: Path) -> tuple[float, str]:
    """Seconds one `precheck-server backup DEST` took, and its report."""
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "precheck", "backup", str(dest), "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    took = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"backup failed: {run.stderr}")
    return took, " / ".join(run.stdout.strip().splitlines())


def _figures(seconds: float, total: int, copied: int) -> str:
    return (
        f"{seconds:.1f} s, {total / 1e6 / seconds:,.0f} MB/s of the store's files,"
        f" {copied / 1e6 / seconds:,.0f} MB/s copied"
    )


async def main(args: argparse.Namespace) -> None:
    print(machine_line(note=True))
    size = args.mib << 20
    block = os.urandom(1 << 20)
    with temp_folder("backup-bench-", args.dir) as folder:
        storage = Storage(folder / "data")
        storage.prepare()
        config = folder / "config.toml"
        config.write_text(config_text({"storage_path": str(storage.root)}), encoding="utf-8")
        started = time.perf_counter()
        total = await add_uploads(storage, 0, args.files, size, block)
        made = time.perf_counter() - started
        print(
            f"store: {args.files} files of {args.mib} MiB, {total / 1e9:.2f} GB, written and"
            f" synced in {made:.1f} s ({total / 1e6 / made:,.0f} MB/s)"
        )
        dest = folder / "backup"
        took, report = backup(config, dest)
        print(f"1. first backup: {_figures(took, total, total)}\n   {report}")
        took, report = backup(config, dest)
        print(f"2. repeated, nothing new: {_figures(took, total, 0)}\n   {report}")
        new = await add_uploads(storage, args.files, args.new, size, block)
        took, report = backup(config, dest)
        print(f"3. repeated, {args.new} new files: {_figures(took, total + new, new)}\n   {report}")
        shutil.rmtree(dest)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.backup_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--files", type=int, default=100, help="uploads in the store")
    parser.add_argument("--mib", type=int, default=100, help="MiB per upload")
    parser.add_argument("--new", type=int, default=5, help="uploads added before the third")
    parser.add_argument("--dir", default=None, help="folder for the temp files")
    asyncio.run(main(parser.parse_args()))
