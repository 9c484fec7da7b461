"""Output capture benchmark: one huge line, then very many short ones, through the real
demultiplexer, output capture and output-line store (SQLite in a temp folder).

Docker's multiplexed log stream is generated in this process, 16 KiB frames handed over a
little at a time as a socket would, so what is measured is our own work per byte:
splitting frames and lines, the line cap (`docker.max_line_kib`, 64), the per-run cap
(`docker.max_log_mib`, 256), the facts read for the verdict, and the durable writes.

Prints, for each case: bytes captured per second (target >= 50 MB/s), the largest gap of a
10 ms ticker (the event loop never blocked > 50 ms), and the growth of this process's RSS
(target < 100 MB).

Run: `python -m bench.capture_bench` (1 GiB line, 10,000,000 short lines: several minutes);
`--quick` for 64 MiB and 500,000 lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from bench.harness import proc_memory, temp_folder, verdict
from precheck.domain.verdict import Step
from precheck.runner.engine import Engine, _demux_lines
from precheck.runner.output_capture import OutputCapture
from precheck.storage.output_lines import LineBlock, OutputLineStore

FRAME = 16 << 10
READ = 64 << 10
STAMP = b"2026-11-26T12:00:00.123456789Z "


class FrameSource:
    """Docker's log stream body: `readany` over frames made on demand, in pieces of up to
    64 KiB, yielding to the event loop every 256 KiB as reads from a socket would."""

    def __init__(self, payloads: Iterator[bytes]) -> None:
        self.frames = self._frames(payloads)
        self.buf = bytearray()
        self.since_yield = 0

    @staticmethod
    def _frames(payloads: Iterator[bytes]) -> Iterator[bytes]:
        for payload in payloads:
            for i in range(0, len(payload), FRAME):
                piece = payload[i : i + FRAME]
                yield struct.pack(">BxxxL", 1, len(piece)) + piece

    async def readany(self) -> bytes:
        while len(self.buf) < READ:
            frame = next(self.frames, None)
            if frame is None:
                break
            self.buf += frame
        out = bytes(self.buf[:READ])
        del self.buf[:READ]
        self.since_yield += len(out)
        if self.since_yield >= 256 << 10:
            self.since_yield = 0
            await asyncio.sleep(0)
        return out


class GeneratedEngine(Engine):
    """An engine whose one container prints the given payloads."""

    def __init__(self, payloads: Iterator[bytes]) -> None:
        super().__init__()
        self.payloads = payloads

    async def logs(
        self, container_id: str, *, follow: bool, since: str | None = None
    ) -> AsyncIterator[LineBlock]:
        async for lines in _demux_lines(FrameSource(self.payloads), self.max_line):  # type: ignore[arg-type]
            yield lines


def huge_line(size: int) -> Iterator[bytes]:
    yield STAMP
    block = b"x" * (1 << 20)
    left = size
    while left > 0:
        yield block[: min(left, len(block))]
        left -= len(block)
    yield b"\n" + STAMP + b"Precheck successfully completed.\n"


def short_lines(count: int) -> tuple[Iterator[bytes], int]:
    """`count` short lines (a multiple of 10,000) and their size: batches of 10,000 lines, 20
    different ones made before the clock starts and sent in turn, so what is timed is the
    capture, not the making of its input."""
    batch, kinds = 10_000, 20
    made = [
        b"".join(STAMP + b"noise %d\n" % i for i in range(k * batch, (k + 1) * batch))
        for k in range(kinds)
    ]
    end = STAMP + b"Precheck successfully completed.\n"
    batches = count // batch
    size = sum(len(made[n % kinds]) for n in range(batches)) + len(end)

    def payloads() -> Iterator[bytes]:
        for n in range(batches):
            yield made[n % kinds]
        yield end

    return payloads(), size


async def capture(folder: Path, name: str, payloads: Iterator[bytes], size: int) -> list[str]:
    store = await OutputLineStore.open(folder / f"{name}.db")
    gaps: list[float] = []
    rss = [proc_memory(os.getpid())["VmRSS"]]

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            rss.append(proc_memory(os.getpid())["VmRSS"])

    async def on_step(_: Step) -> None:
        return None

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        facts = await OutputCapture(GeneratedEngine(payloads), store, name, "c", on_step).run()
    finally:
        elapsed = time.perf_counter() - started
        tick.cancel()
        await store.close()
    rate = size / elapsed / 1e6
    gap = max(gaps) * 1000 if gaps else 0.0
    growth = (max(rss) - rss[0]) / 1e6
    assert facts.success, "the success line after the flood was not read"
    return [
        f"{name}: {size / 1e6:,.0f} MB in {elapsed:.1f} s = {rate:.1f} MB/s "
        f"(target >= 50) {verdict(rate >= 50)}",
        f"{name}: largest gap of a 10 ms ticker {gap:.1f} ms (target <= 50) {verdict(gap <= 50)}",
        f"{name}: RSS growth {growth:.1f} MB (target < 100) {verdict(growth < 100)}",
    ]


async def main(line_bytes: int, count: int) -> None:
    with temp_folder("precheck-capture-bench-") as folder:
        lines = await capture(folder, "one huge line", huge_line(line_bytes), line_bytes)
        payloads, size = short_lines(count)
        lines += await capture(folder, "short lines", payloads, size)
    for line in lines:
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB and 500,000 lines")
    args = parser.parse_args()
    if args.quick:
        asyncio.run(main(64 << 20, 500_000))
    else:
        asyncio.run(main(1 << 30, 10_000_000))
