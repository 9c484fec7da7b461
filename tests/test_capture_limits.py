"""A run's captured output is bounded: past `docker.max_log_mib` lines are counted, not stored,
with a visible marker, and the verdict still reads every line."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable

import pytest

from precheck.config import Config
from precheck.events.types import RunOutputsStored
from precheck.runner.copy_out import MAX_SKIPPED_LISTED
from precheck.web import keys
from tests.docker_fixtures import AddingToRunFolder, StartApp
from tests.layouts import gds

pytestmark = pytest.mark.docker


async def test_output_past_the_cap_is_counted_not_stored(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """150,000 noise lines under a 1 MiB cap: the stored log stops near 1 MiB with a marker,
    ends with the count of what was not kept, and the run still completes (its success line,
    past the cap, was read)."""
    api = await start_app(sim_config(max_log_mib=1))
    run = await api.run(gds("chip_top", "lines=150000"))
    ended = await api.wait(run, 120)
    assert ended["Status"] == "completed", ended
    r = await api.client.get(f"/api/v1/prechecks/{run}/logs", params={"format": "text"})
    text = await r.text()
    lines = text.splitlines()
    assert sum(len(line) for line in lines) < (1 << 20) + 1000
    marker = [i for i, line in enumerate(lines) if line.startswith("[output past 1 MiB")]
    assert len(marker) == 1, lines[-3:]
    assert lines[marker[0] - 1].startswith("noise ")
    assert lines[-1].endswith("of output past the cap were not kept]"), lines[-1]
    dropped = int(lines[-1].split()[0].lstrip("["))
    kept_noise = sum(1 for line in lines if line.startswith("noise "))
    assert kept_noise + dropped > 150_000  # every noise line, kept or counted (and a few more)
    doc = await api.get(run)
    assert doc["Progress"]["Step"] == 16  # steps past the cap were still recorded


async def test_copy_out_past_its_caps_lists_what_it_skipped(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """With `docker.max_output_files = 3` a passing run keeps 3 files of its run folder and its
    output layout, and lists every other file with why; the run is still final."""
    api = await start_app(sim_config(max_output_files=3))
    run = await api.run(gds("chip_top"))
    ended = await api.wait(run, 60)
    assert ended["Status"] == "completed", ended
    doc = await api.get(run)
    assert doc["Output"]["Available"] is True
    skipped = doc["Output"]["Skipped"]
    assert len(skipped) > 10, skipped
    assert {s["Why"] for s in skipped} == {"over docker.max_output_files (3)"}
    files = api.app[keys.PROJECTIONS].runs.by_id[run].files
    assert len(files) == 3


EXTRA_FILES = MAX_SKIPPED_LISTED + 150


class ManyFilesEngine(AddingToRunFolder):
    """A real engine that adds EXTRA_FILES small files to a run folder."""

    def extra(self) -> bytes:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            for n in range(EXTRA_FILES):
                info = tarfile.TarInfo(f"extra/file-{n:04}.txt")
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
        return raw.getvalue()


async def test_the_list_of_skipped_files_is_bounded(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """Hundreds of files past `docker.max_output_files`: the event and the document list the
    first MAX_SKIPPED_LISTED and count the rest."""
    api = await start_app(sim_config(max_output_files=3), engine=ManyFilesEngine)
    run = await api.run(gds("chip_top"))
    ended = await api.wait(run, 60)
    assert ended["Status"] == "completed", ended
    [stored] = await api.events("run.outputs-stored", run)
    assert isinstance(stored.event, RunOutputsStored)
    assert len(stored.event.skipped) == MAX_SKIPPED_LISTED
    assert stored.event.skipped_more >= EXTRA_FILES - MAX_SKIPPED_LISTED
    output = (await api.get(run))["Output"]
    assert len(output["Skipped"]) == MAX_SKIPPED_LISTED
    assert output["SkippedMore"] == stored.event.skipped_more
