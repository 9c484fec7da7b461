"""A file name in the run folder that is not UTF-8 is stored and listed in an escaped form: the
run ends `completed` with the file, not `finish-failed` on an event that cannot be written.

The file is put into the stopped container through the archive API of a real engine, just
before the copy-out reads the run folder.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable

import pytest

from precheck.config import Config
from tests.docker_fixtures import AddingToRunFolder, StartApp
from tests.layouts import gds

pytestmark = pytest.mark.docker

RAW_NAME = b"reports/caf\xe9-\xff.txt"  # Latin-1 bytes, not UTF-8
ESCAPED = "caf\\xe9-\\xff.txt"


class OddNameEngine(AddingToRunFolder):
    """A real engine that adds a file with a name that is not UTF-8 to a run folder."""

    def extra(self) -> bytes:
        raw = io.BytesIO()
        with tarfile.open(
            fileobj=raw, mode="w", format=tarfile.GNU_FORMAT, errors="surrogateescape"
        ) as tar:
            info = tarfile.TarInfo(RAW_NAME.decode("utf-8", "surrogateescape"))
            info.size = 5
            tar.addfile(info, io.BytesIO(b"odd\n\n"))
        return raw.getvalue()


async def test_a_name_that_is_not_utf8_is_stored_escaped(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """The run completes; the report is listed under its escaped name and downloads whole."""
    api = await start_app(sim_config(), engine=OddNameEngine)
    run = await api.run(gds("chip_top"))
    ended = await api.wait(run, 60)
    assert ended["Status"] == "completed", ended
    assert await api.events("run.finish-failed", run) == []
    r = await api.client.get(f"/api/v1/prechecks/{run}/reports")
    names = [x["Name"] for x in await r.json()]
    assert ESCAPED in names, names
    r = await api.client.get(f"/api/v1/prechecks/{run}/reports/{ESCAPED}")
    assert r.status == 200, await r.text()
    assert await r.read() == b"odd\n\n"
