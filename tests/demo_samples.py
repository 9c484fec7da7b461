"""The sample layouts shipped in simulator/samples/ for trying the service with the simulator.

`python -m tests.demo_samples simulator/samples` writes them; a test checks the shipped files
equal what this module makes, so the samples and the simulator's steering keys cannot drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.layouts import gds as _gds

DIE_1X1 = (3932_000, 5122_000)  # nm: each sample is a 1x1 die at the origin, so pre-flight passes


def gds(top: str, *directives: str) -> bytes:
    """A sample: the simulator's directives in a 1x1 die."""
    return _gds(top, *directives, die=DIE_1X1)


# file name -> (what the run does, the layout)
SAMPLES: dict[str, tuple[str, bytes]] = {
    "pass.gds": ("passes every step", gds("chip_top")),
    "fail-checksize.gds": (
        "fails at step 3, KLayout.CheckSize (a design failure)",
        gds("chip_top", "fail=KLayout.CheckSize"),
    ),
    "deferred-drc.gds": (
        "runs every step, then fails with 3 deferred KLayout DRC errors",
        gds("chip_top", "deferred=3"),
    ),
    "slow-long-log.gds": (
        "takes about a minute and prints 20,000 extra lines at its Magic DRC step",
        gds("chip_top", "step_sleep=4", "lines=20000"),
    ),
    "oom.gds": (
        "needs 512 MB at its DRC step: out of memory under a smaller memory_limit (system failure)",
        gds("chip_top", "oom=512"),
    ),
}


def write_samples(folder: Path) -> list[Path]:
    """Write every sample into `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (_, data) in SAMPLES.items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    return written


if __name__ == "__main__":
    for path in write_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "simulator/samples")):
        print(path)
