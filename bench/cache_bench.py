"""Result cache benchmark: the same layout submitted N times (real Docker engine, the simulator
image, real HTTP on loopback, the app in this process).

The first run runs; the N - 1 after it are answered from it. Printed: the first run's time
(POST to final, through `/wait`), the cached answers' p50 / p95 / max (POST to final: each
answer is final when it arrives, which is checked), and the storage the N runs use under
`runs/`: bytes on disk counting each inode once (hard links share one copy), against N copies.
Targets: cached p50 < 100 ms; storage: one copy.

Run: `python -m bench.cache_bench --runs 100` (`--layout-mb` pads the layout, so the outputs
weigh something: the simulator writes the layout out twice). Builds the simulator under a
private tag and removes the tag, the containers and the temp dir at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

from bench.harness import (
    LocalServer,
    bench_config,
    build_image,
    machine_line,
    ms,
    pct,
    remove_containers,
    temp_folder,
    verdict,
)
from tests.layouts import gds

PREFIX = "precheck-cache-bench-"
TARGET = 0.100  # seconds, POST to final


def on_disk(folder: Path) -> tuple[int, int, int]:
    """Under `folder`: bytes on disk counting each inode once, the files' apparent bytes
    counting every name, and how many names."""
    seen: set[int] = set()
    disk = apparent = names = 0
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            names += 1
            apparent += st.st_size
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                disk += st.st_blocks * 512
    return disk, apparent, names


async def bench(tmp: Path, image: str, runs: int, layout_mb: int) -> bool:
    layout = gds("chip_top") + bytes(layout_mb << 20)  # padding after the library's end
    config = bench_config(
        tmp / "data", image, PREFIX, "cache-bench", cache={"enabled": True}, max_concurrent=1
    )
    async with LocalServer(config) as server:
        upload = await server.upload(layout)
        body = {"upload_id": upload, "top_cell": "chip_top"}
        t = time.perf_counter()
        first = await server.call("POST", "/api/v1/prechecks", json=body)
        ended = await server.wait(first["Id"])
        first_time = time.perf_counter() - t
        if ended["Status"] != "completed":
            print(f"the first run ended {ended['Status']}: no answer to measure")
            return False
        times: list[float] = []
        for _ in range(runs - 1):
            t = time.perf_counter()
            doc = await server.call("POST", "/api/v1/prechecks", json=body)
            times.append(time.perf_counter() - t)
            if doc["State"]["Status"] != "completed" or doc["Result"]["ReusedFrom"] != first["Id"]:
                print(f"run {doc['Id']} was not answered from the cache: {doc['State']}")
                return False
        disk, apparent, names = on_disk(tmp / "data" / "runs")
        one_disk, _, _ = on_disk(tmp / "data" / "runs" / first["Id"])
    p50 = pct(times, 50)
    print(
        f"layout: {len(layout) / 1e6:.1f} MB; {runs} runs of it, {runs - 1} answered from the first"
    )
    print(f"first run (POST to final): {first_time:.2f} s")
    print(
        f"cached answers (POST to final): p50 {ms(p50)}, p95 {ms(pct(times, 95))},"
        f" max {ms(max(times))}  [target p50 < {ms(TARGET)}: {verdict(p50 < TARGET)}]"
    )
    print(
        f"storage of the {runs} runs: {disk / 1e6:.2f} MB on disk ({names} names,"
        f" {apparent / 1e6:.1f} MB if each were a copy); one run's folder: {one_disk / 1e6:.2f} MB"
        f"  [target one copy: {verdict(disk <= one_disk)}]"
    )
    return p50 < TARGET and disk <= one_disk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--layout-mb", type=int, default=20)
    parser.add_argument("--image", help="a simulator image already built (else one is built)")
    args = parser.parse_args()
    tag = args.image or f"precheck-simulator-bench:{uuid.uuid4().hex[:12]}"
    ok = False
    print(machine_line(note=True))
    with temp_folder("precheck-cache-bench-") as tmp:
        try:
            if not args.image:
                t = time.monotonic()
                build_image(tag, tmp / "build.log")
                print(f"simulator image {tag} built in {time.monotonic() - t:.1f} s")
            ok = asyncio.run(bench(tmp, tag, args.runs, args.layout_mb))
        finally:
            remove_containers([f"name={PREFIX}"])
            if not args.image:
                subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
