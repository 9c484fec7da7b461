"""The child process that reads a layout: its format, database unit, top cells with their
bounding boxes, layers and cell count, printed as one line of JSON.

Run as `python -P inspect.py --max-memory-mb N --max-seconds S PATH` by `reading.py`, never
imported by the server: it limits its own address space and CPU time first, so a layout that
needs more than the configured memory fails here, not in the server. It imports only the
standard library and the layout reader, so it starts fast.

With `--as-user UID:GID --from-stdin` (how a server running as root starts it, in a folder of
its own) the child loads the reader, then gives up root for that user with no supplementary
groups before it touches the layout; PATH is then a file name in the working folder: the layout
comes on stdin, an open file the child could not open itself, and is copied there first, so the
reader parses a file it may read with no way into the server's storage folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from typing import Any

MAX_TOP_CELLS = 100  # listed; all are counted
MAX_LAYERS = 4096
MAX_NAME = 1024  # characters of a cell name kept
OASIS_MAGIC = b"%SEMI-OASIS\r\n"
GZIP_MAGIC = b"\x1f\x8b"


def limit(max_memory_mb: int, max_seconds: float) -> None:
    """Cap this process's address space and CPU time (the parent's timeout is the wall clock)."""
    size = max_memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (size, size))
    cpu = math.ceil(max_seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def sniff(path: str) -> str:
    """`gds.gz`, `oas` or `gds` from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(len(OASIS_MAGIC))
    if head.startswith(GZIP_MAGIC):
        return "gds.gz"
    return "oas" if head.startswith(OASIS_MAGIC) else "gds"


def _um(value: int, dbu: float) -> float:
    return round(value * dbu, 9)


def load_reader() -> Any:
    """The layout reader's module; loaded once the limits are set, before any user is given up
    (its files are the server's to read)."""
    import klayout.db as kdb

    return kdb


def give_up_root(uid: int, gid: int) -> None:
    """Become `uid`:`gid` with no supplementary groups, for good."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SystemExit("could not give up root")


def read(path: str, kdb: Any) -> dict[str, Any]:
    """What the layout at `path` holds (see the module's docstring)."""
    fmt = sniff(path)
    layout = kdb.Layout()
    layout.read(path)  # gzip-compressed streams are read as they are
    dbu = float(layout.dbu)
    tops = sorted(layout.top_cells(), key=lambda c: str(c.name))  # in a stable order
    top_cells = []
    for cell in tops[:MAX_TOP_CELLS]:
        box = cell.bbox()
        top_cells.append(
            {
                "name": cell.name[:MAX_NAME],
                "bbox": None
                if box.empty()
                else [
                    _um(box.left, dbu),
                    _um(box.bottom, dbu),
                    _um(box.right, dbu),
                    _um(box.top, dbu),
                ],
            }
        )
    layers = sorted({(int(i.layer), int(i.datatype)) for i in layout.layer_infos()})
    return {
        "format": fmt,
        "dbu": dbu,
        "top_cells": top_cells,
        "top_cell_count": len(tops),
        "layers": layers[:MAX_LAYERS],
        "cells": int(layout.cells()),
    }


def copy_stdin(name: str) -> None:
    """Copy the layout given on stdin to `name` in the working folder, for the reader."""
    with open(name, "xb") as out:
        while chunk := os.read(0, 1 << 20):
            out.write(chunk)


def main(argv: list[str] | None = None) -> int:
    """Read the layout within the limits; print `{"ok": true, ...}` or `{"ok": false, "error"}`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-memory-mb", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, required=True)
    parser.add_argument("--as-user", default="", help="UID:GID to give up root for")
    parser.add_argument("--from-stdin", action="store_true")
    parser.add_argument("path")
    args = parser.parse_args(argv)
    started = time.monotonic()
    limit(args.max_memory_mb, args.max_seconds)
    kdb = load_reader()
    if args.as_user:
        uid, gid = (int(n) for n in args.as_user.split(":"))
        give_up_root(uid, gid)
    try:
        if args.from_stdin:
            copy_stdin(args.path)
        result: dict[str, Any] = {"ok": True, **read(args.path, kdb)}
    except MemoryError:
        result = {"ok": False, "error": "memory", "detail": ""}
    except Exception as e:  # the reader's errors are RuntimeErrors with its message
        text = str(e).strip()
        memory = ("bad_alloc", "memory", "failed to map")
        kind = "memory" if any(m in text.lower() for m in memory) else "unreadable"
        result = {"ok": False, "error": kind, "detail": text[:2000]}
    result["seconds"] = round(time.monotonic() - started, 3)
    result["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
