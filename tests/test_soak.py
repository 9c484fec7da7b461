"""A short fault-injection soak (bench/soak.py has the long one): runs of mixed kinds while the
server is killed -9 and restarted, a private Docker engine restarted, containers killed and the
server's connection to Docker cut, with system failures retried (`max_attempts = 2`). Nothing
may be lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness import temp_folder
from bench.soak import soak

pytestmark = [pytest.mark.docker, pytest.mark.timeout(420)]


async def test_no_run_or_line_is_lost_under_faults() -> None:
    """Every run final, its attempts' lines tiling its log, every completed run's lines once
    each, verify passes, no container left, after at least one fault of several kinds."""
    # The private engine's socket paths must stay short: a folder right under /tmp.
    with temp_folder("soak-", "/tmp") as tmp:
        report = await soak(Path(tmp), runs=24, seed=7, fault_every=0.8, max_attempts=2)
    print("\n".join(report.lines()))
    assert report.lost == []
    assert sum(report.statuses.values()) == 24
    assert sum(report.faults.values()) >= 4, report.faults
    assert len([k for k, n in report.faults.items() if n]) >= 2, report.faults
