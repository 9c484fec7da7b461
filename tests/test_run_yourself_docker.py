""" "Run it yourself" on a real engine: the command line a run's document prints, run by the
shell with Docker's own client, gives the run's verdict lines, exit code and output."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from precheck.config import Config
from tests.docker_fixtures import StartApp
from tests.layouts import gds

pytestmark = pytest.mark.docker

# The times of day the flow's lines carry: its logger's and its tools' own.
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [+-]\d{4})?|\[\d\d:\d\d:\d\d\]")
# The progress bar's last line ends with the time the flow took (`16/16 0:00:01`).
ELAPSED = re.compile(r"(\d+/\d+) \d+:\d\d:\d\d$")


def timeless(lines: list[str]) -> list[str]:
    """The lines with their times of day, and the flow's elapsed time, blanked out."""
    return [ELAPSED.sub(r"\1 <elapsed>", STAMP.sub("<time>", line)) for line in lines]


async def shell(command: str, cwd: Path) -> tuple[int, list[str]]:
    """`command` run by the shell in `cwd`: its exit code and its output's lines."""
    proc = await asyncio.create_subprocess_shell(
        command, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines()


@pytest.mark.parametrize(
    ("directives", "status", "said"),
    [
        ((), "completed", "Precheck successfully completed."),
        (("fail=KLayout.CheckSize",), "failed", "Error: The precheck failed"),
    ],
    ids=["passes", "fails"],
)
async def test_the_printed_command_gives_the_runs_verdict(
    start_app: StartApp,
    sim_config: Callable[..., Config],
    tmp_path: Path,
    directives: tuple[str, ...],
    status: str,
    said: str,
) -> None:
    """The run's `RunItYourself.Command`, run in a folder holding the layout under its
    `Layout` name, exits as the run did, says the same lines (but for their times of day)
    and writes the same output layout to `./output`."""
    api = await start_app()
    layout = gds("chip_top", *directives)
    run_id = await api.run(layout, name="my chip.gds")
    ended = await api.wait(run_id, 60)
    assert ended["Status"] == status
    doc = await api.get(run_id)
    mine = doc["RunItYourself"]
    assert mine["Image"] == doc["Image"] and doc["ImageDigest"] is None  # built here: by id
    assert mine["Layout"] == "my chip.gds"
    (tmp_path / mine["Layout"]).write_bytes(layout)

    code, lines = await shell(mine["Command"], tmp_path)

    assert code == doc["State"]["ExitCode"], lines
    ran = (await api.logs(run_id, limit=10000))["lines"]
    assert timeless(lines) == timeless(ran)
    assert any(line.startswith(said) for line in lines), lines
    if doc["Output"]["Available"]:
        written = (tmp_path / "output" / doc["Output"]["Filename"]).read_bytes()
        assert hashlib.sha256(written).hexdigest() == doc["Output"]["Checksums"]["sha256"]
