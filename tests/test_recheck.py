"""Re-check with the latest image: a new run of the same upload and parameters whose start
resolves the image anew (pulled unless the engine's policy is `never`), linked to the old."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from precheck.config import Config
from precheck.runner.engine import Engine
from tests.docker_fixtures import StartApp, docker
from tests.layouts import gds

pytestmark = pytest.mark.docker


class Registry(Engine):
    """A real engine whose pull of a name brings the newer image under it, as a registry would
    that republished the tag; it counts the pulls."""

    def __init__(self, url: str, newer: str) -> None:
        super().__init__(url)
        self.newer = newer
        self.pulls: list[str] = []

    async def pull(self, image: str) -> None:
        self.pulls.append(image)
        await docker("tag", self.newer, image)


async def _image_id(image: str) -> str:
    return (await docker("image", "inspect", "--format", "{{.Id}}", image))[1].strip()


async def test_a_recheck_runs_the_image_the_name_stands_for_now(
    start_app: StartApp, sim_config: Callable[..., Config], image_and_another: tuple[str, str]
) -> None:
    """With pull policy `missing` a re-run keeps the image the engine has; a re-check pulls
    first and runs the newer one, same upload and parameters, `RecheckOf` naming the run."""
    name, newer = image_and_another
    engines: list[Registry] = []

    def make(url: str) -> Registry:
        engines.append(Registry(url, newer))
        return engines[-1]

    api = await start_app(sim_config(image=name, pull="missing"), engine=make)
    old_id = await _image_id(name)
    run = await api.create(await api.upload(gds("chip_top"), "chip_top.gds"), die_id="ABCD1234")
    assert (await api.wait(run["Id"], 60))["Status"] == "completed"
    first = await api.get(run["Id"])
    assert first["Image"] == old_id and first["RecheckOf"] is None

    r = await api.client.post(f"/api/v1/prechecks/{run['Id']}/rerun")
    assert r.status == 200, await r.text()
    rerun = (await r.json())["Id"]
    assert (await api.wait(rerun, 60))["Status"] == "completed"
    assert (await api.get(rerun))["Image"] == old_id, "a re-run does not pull what it has"
    assert all(not e.pulls for e in engines)

    r = await api.client.post(f"/api/v1/prechecks/{run['Id']}/recheck")
    assert r.status == 200, await r.text()
    queued = await r.json()
    assert queued["RecheckOf"] == run["Id"] and queued["Id"] not in (run["Id"], rerun)
    assert (await api.wait(queued["Id"], 60))["Status"] == "completed"
    again = await api.get(queued["Id"])
    assert [p for e in engines for p in e.pulls] == [name]
    assert again["Image"] == await _image_id(newer) != old_id
    assert again["RunItYourself"]["Image"] == again["Image"]
    assert again["Config"]["Labels"] == first["Config"]["Labels"]
    assert again["Config"]["Cmd"][:-1] == first["Config"]["Cmd"][:-1]  # but for the run tag


async def test_a_recheck_of_no_run_is_404(start_app: StartApp) -> None:
    """An unknown run: 404 with a JSON message; nothing is queued."""
    api = await start_app()
    r = await api.client.post(f"/api/v1/prechecks/{'0' * 32}/recheck")
    assert r.status == 404
    assert "message" in await r.json()
    assert (await (await api.client.get("/api/v1/queue")).json())["queued"] == 0
