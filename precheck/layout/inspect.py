"""The child process that reads a layout: its format, database unit, top cells with their
bounding boxes, layers and cell count, printed as one line of JSON.

Run as `python -P inspect.py --max-memory-mb N --max-seconds S PATH` by `reading.py`, never
imported by the server: it limits its own address space and CPU time first, so a layout that
needs more than the configured memory fails here, not in the server. It imports only the
standard library and the layout reader, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import math
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


def read(path: str) -> dict[str, Any]:
    """What the layout at `path` holds (see the module's docstring)."""
    import klayout.db as kdb  # here: the limits are set before the reader's libraries load

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


def main(argv: list[str] | None = None) -> int:
    """Read the layout within the limits; print `{"ok": true, ...}` or `{"ok": false, "error"}`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-memory-mb", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, required=True)
    parser.add_argument("path")
    args = parser.parse_args(argv)
    started = time.monotonic()
    limit(args.max_memory_mb, args.max_seconds)
    try:
        result: dict[str, Any] = {"ok": True, **read(args.path)}
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
