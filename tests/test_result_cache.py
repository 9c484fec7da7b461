"""The result cache: a run identical to one that ended on its design is answered from it at
once, its files hard links of that run's, with no container; an image changed under its name
makes the next identical run a real one; another user's run answers without being named."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from precheck.config import Config, NotifyConfig
from precheck.web import keys
from tests.browser import Browser
from tests.docker_fixtures import Api, StartApp, docker
from tests.layouts import gds
from tests.notify_receivers import SECRET, start_receiver
from tests.simulator_config import simulator_docker

pytestmark = pytest.mark.docker

KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789", "root": "key-root-0123456789"}
ROLES = {"alice": "user", "bob": "user", "root": "admin"}


@pytest.fixture
def cached(make_config: Callable[..., Config], simulator_image: str) -> Callable[..., Config]:
    """Factory: a config on the simulator with the result cache on; `auth=True` gives it keys
    for two users and an admin; other keywords change the `[docker]` table."""

    def make(
        *, auth: bool = False, image: str = "", server: dict[str, Any] | None = None
    ) -> Config:
        tables: dict[str, Any] = {
            "docker": simulator_docker(image or simulator_image, max_attempts=1),
            "cache": {"enabled": True},
        }
        if server:
            tables["server"] = server
        if auth:
            api_keys = [{"name": n, "key": k, "role": ROLES[n]} for n, k in KEYS.items()]
            tables["auth"] = {"required": True, "api_keys": api_keys}
        return make_config(**tables)

    return make


def _storage(api: Api) -> Path:
    return api.app[keys.STORAGE].runs


async def _containers_of(run_id: str) -> list[str]:
    out = (await docker("ps", "-aq", "--filter", f"label=precheck.run={run_id}"))[1]
    return out.split()


async def _download(api: Api, run_id: str, headers: dict[str, str] | None = None) -> bytes:
    r = await api.client.get(f"/api/v1/prechecks/{run_id}/output", headers=headers)
    assert r.status == 200, await r.text()
    return await r.read()


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Each file under `folder`: its inode and bytes."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_ino, p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file()
    }


async def test_an_identical_run_is_answered_at_once_from_the_first(
    start_app: StartApp, cached: Callable[..., Config]
) -> None:
    """The second identical run answers final in under 100 ms, `Result.ReusedFrom` naming the
    first, with no container; its files are the first's (hard links: same inodes, same bytes)
    in its own folder, served with the same checksums, and outlive the first's removal."""
    api = await start_app(cached())
    layout = gds("chip_top")
    first = await api.run(layout, "chip.gds", die_id="ABCD1234")
    assert (await api.wait(first, 60))["Status"] == "completed"
    source = await api.get(first)
    assert source["Result"]["Reused"] is False and source["Result"]["ReusedFrom"] is None

    upload = await api.upload(layout, "again.gds")
    body = {"upload_id": upload, "top_cell": "chip_top", "die_id": "ABCD1234"}
    took, docs = [], []
    for _ in range(5):  # the median of a few: the machine may be busy with other work
        began = time.perf_counter()
        r = await api.client.post("/api/v1/prechecks", json=body)
        took.append(time.perf_counter() - began)
        assert r.status == 200, await r.text()
        docs.append(await r.json())
    assert all(d["State"]["Status"] == "completed" for d in docs), [d["State"] for d in docs]
    assert statistics.median(took) < 0.1, f"cache answers took {[round(t * 1000) for t in took]} ms"
    doc = docs[0]
    assert doc["Result"]["Reused"] is True and doc["Result"]["ReusedFrom"] == first
    assert doc["Id"] != first and doc["Queue"]["Position"] is None
    assert doc["Image"] == source["Image"] and doc["Output"] == source["Output"]
    assert doc["Result"]["Passed"] is True
    assert await _containers_of(doc["Id"]) == []
    assert [r.type for r in await api.events(run_id=doc["Id"])] == ["run.queued", "run.reused"]

    mine, theirs = _files(_storage(api) / doc["Id"]), _files(_storage(api) / first)
    assert mine == theirs and mine, "the same files, linked: same inodes and bytes"
    output = await _download(api, doc["Id"])
    assert output == await _download(api, first)
    assert hashlib.sha256(output).hexdigest() == doc["Output"]["Checksums"]["sha256"]

    r = await api.client.delete(f"/api/v1/prechecks/{first}", params={"remove": "1"})
    assert r.status == 200, await r.text()
    assert not (_storage(api) / first).exists()
    assert await _download(api, doc["Id"]) == output, "the answer keeps its files"


async def test_what_is_not_the_same_run_runs(
    start_app: StartApp, cached: Callable[..., Config]
) -> None:
    """A different die id or output format, `"cache": false`, and a cancelled run are no
    answers: those runs queue and run."""
    api = await start_app(cached())
    layout = gds("chip_top")
    first = await api.run(layout, die_id="ABCD1234")
    assert (await api.wait(first, 60))["Status"] == "completed"
    upload = await api.upload(layout)
    for fields in (
        {"die_id": "ZZZZ0000"},
        {"die_id": "ABCD1234", "output_format": "oas"},
        {"die_id": "ABCD1234", "cache": False},
    ):
        doc = await api.create(upload, **fields)
        assert doc["State"]["Status"] == "queued", fields
        assert (await api.wait(doc["Id"], 60))["Status"] == "completed"
        assert (await api.get(doc["Id"]))["Result"]["Reused"] is False

    other = gds("chip_top", "step_sleep=30")
    slow = await api.run(other)
    await api.wait_running(slow)
    assert (await api.cancel(slow))[0] == 200
    doc = await api.create(await api.upload(other))
    assert doc["State"]["Status"] == "queued", "a cancelled run answers nothing"
    assert (await api.cancel(doc["Id"]))[0] in (200, 202)


async def test_an_answer_takes_no_place_in_the_queue(
    start_app: StartApp, cached: Callable[..., Config]
) -> None:
    """With as many runs waiting as `server.max_queued_per_owner` allows, an identical run is
    still answered (it never waits), while any other run is refused with 429."""
    api = await start_app(cached(server={"max_queued_per_owner": 1, "max_concurrent": 1}))
    layout = gds("chip_top")
    first = await api.run(layout)
    assert (await api.wait(first, 60))["Status"] == "completed"
    slow = gds("chip_top", "step_sleep=30")
    running = await api.run(slow)
    await api.wait_running(running)
    waiting = await api.run(slow, "slow.gds")
    doc = await api.create(await api.upload(layout))
    assert doc["Result"]["ReusedFrom"] == first
    r = await api.client.post(
        "/api/v1/prechecks",
        json={"upload_id": await api.upload(layout), "top_cell": "chip_top", "cache": False},
    )
    assert r.status == 429 and "max_queued_per_owner" in (await r.json())["message"]
    for run_id in (waiting, running):
        assert (await api.cancel(run_id))[0] in (200, 202)


async def test_a_design_failure_answers(start_app: StartApp, cached: Callable[..., Config]) -> None:
    """A run that failed on its design answers an identical one: failed, on the design, with
    the same deferred errors."""
    api = await start_app(cached())
    layout = gds("chip_top", "deferred=3")
    first = await api.run(layout)
    ended = await api.wait(first, 60)
    assert ended["Status"] == "failed"
    doc = await api.create(await api.upload(layout))
    assert doc["State"]["Status"] == "failed" and doc["Result"]["ReusedFrom"] == first
    assert doc["Result"]["Classification"] == "design"
    assert doc["Result"]["DeferredErrors"] == (await api.get(first))["Result"]["DeferredErrors"]


async def test_with_the_cache_off_in_the_config_every_run_runs(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """`[cache] enabled = false` (as the tests' default config): the same run twice runs twice."""
    config = sim_config()
    assert config.cache.enabled is False
    api = await start_app(config)
    layout = gds("chip_top")
    first = await api.run(layout)
    assert (await api.wait(first, 60))["Status"] == "completed"
    doc = await api.create(await api.upload(layout))
    assert doc["State"]["Status"] == "queued"
    assert (await api.wait(doc["Id"], 60))["Status"] == "completed"


async def test_an_image_changed_under_its_name_makes_the_next_run_real(
    start_app: StartApp, cached: Callable[..., Config], image_and_another: tuple[str, str]
) -> None:
    """The image is resolved before deciding: once the name stands for another image (a tag
    rebuilt), the next identical run runs on it; the one after is answered from that one."""
    name, rebuilt = image_and_another
    api = await start_app(cached(image=name))
    layout = gds("chip_top")
    first = await api.run(layout)
    assert (await api.wait(first, 60))["Status"] == "completed"
    old_image = (await api.get(first))["Image"]
    hit = await api.create(await api.upload(layout))
    assert hit["Result"]["ReusedFrom"] == first

    await docker("tag", rebuilt, name)
    again = await api.create(await api.upload(layout))
    assert again["State"]["Status"] == "queued", "a changed image is never answered for"
    assert (await api.wait(again["Id"], 60))["Status"] == "completed"
    new_image = (await api.get(again["Id"]))["Image"]
    assert new_image != old_image
    assert len(await _containers_of(again["Id"])) <= 1  # it ran (removed once it ended)
    last = await api.create(await api.upload(layout))
    assert last["Result"]["ReusedFrom"] == again["Id"] and last["Image"] == new_image


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


async def _upload(api: Api, who: str, body: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", body, filename="chip.gds", content_type="application/octet-stream")
    r = await api.client.post("/api/v1/uploads", data=form, headers=_auth(who))
    assert r.status == 200, await r.text()
    return str((await r.json())["Id"])


async def _create(api: Api, who: str, upload: str) -> dict[str, Any]:
    body = {"upload_id": upload, "top_cell": "chip_top"}
    r = await api.client.post("/api/v1/prechecks", json=body, headers=_auth(who))
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


async def test_another_users_run_answers_without_being_named(
    start_app: StartApp, cached: Callable[..., Config]
) -> None:
    """Bob's run of the bytes Alice's run checked is answered from hers, but nothing bob reads
    (the run, the list, its events, the audit feed) names her run or upload; an admin sees
    `ReusedFrom`; bob still cannot reach her run; a run of bob's own answered from his is named."""
    api = await start_app(cached(auth=True))
    layout = gds("chip_top")
    hers_upload = await _upload(api, "alice", layout)
    hers = (await _create(api, "alice", hers_upload))["Id"]
    r = await api.client.post(
        f"/api/v1/prechecks/{hers}/wait", params={"timeout": "60"}, headers=_auth("alice")
    )
    assert (await r.json())["Status"] == "completed"

    his = await _create(api, "bob", await _upload(api, "bob", layout))
    assert his["State"]["Status"] == "completed"
    assert his["Result"]["Reused"] is True and his["Result"]["ReusedFrom"] is None
    seen = []
    for path in (
        f"/api/v1/prechecks/{his['Id']}",
        "/api/v1/prechecks",
        f"/api/v1/prechecks/{his['Id']}/events",
        "/api/v1/events",
    ):
        r = await api.client.get(path, headers=_auth("bob"))
        assert r.status == 200, (path, await r.text())
        seen.append(await r.text())
    for text in seen:
        assert hers not in text and hers_upload not in text
    assert await _download(api, his["Id"], _auth("bob")) == await _download(
        api, hers, _auth("alice")
    )
    r = await api.client.get(f"/api/v1/prechecks/{hers}", headers=_auth("bob"))
    assert r.status == 404

    r = await api.client.get(f"/api/v1/prechecks/{his['Id']}", headers=_auth("root"))
    assert (await r.json())["Result"]["ReusedFrom"] == hers
    r = await api.client.get("/api/v1/events", headers=_auth("root"))
    reused = [e for e in (await r.json())["events"] if e["type"] == "run.reused"]
    assert [e["data"]["source_run_id"] for e in reused] == [hers]

    # Once bob has a run of his own that ran, his next is answered from it, and named.
    body = {"upload_id": await _upload(api, "bob", layout), "top_cell": "chip_top", "cache": False}
    r = await api.client.post("/api/v1/prechecks", json=body, headers=_auth("bob"))
    ran = (await r.json())["Id"]
    r = await api.client.post(
        f"/api/v1/prechecks/{ran}/wait", params={"timeout": "60"}, headers=_auth("bob")
    )
    assert (await r.json())["Status"] == "completed"
    own = await _create(api, "bob", await _upload(api, "bob", layout))
    assert own["Result"]["ReusedFrom"] == ran


async def test_oasis_output_is_downloaded_checked_and_keyed(
    start_app: StartApp, cached: Callable[..., Config]
) -> None:
    """`"output_format": "oas"` runs with `--output /output/<top>.oas`; the download is that
    OASIS file with its checksum; an identical OASIS run is answered from it, a GDS one not."""
    api = await start_app(cached())
    layout = gds("chip_top")
    doc = await api.create(await api.upload(layout), output_format="oas")
    assert doc["Config"]["Cmd"][4:6] == ["--output", "/output/chip_top.oas"]
    assert (await api.wait(doc["Id"], 60))["Status"] == "completed"
    done = await api.get(doc["Id"])
    assert done["Output"]["Filename"] == "chip_top.oas"
    r = await api.client.get(f"/api/v1/prechecks/{doc['Id']}/output")
    assert r.status == 200
    assert "chip_top.oas" in r.headers["Content-Disposition"]
    body = await r.read()
    assert body.startswith(b"%SEMI-OASIS\r\n")
    assert hashlib.sha256(body).hexdigest() == done["Output"]["Checksums"]["sha256"]

    hit = await api.create(await api.upload(layout), output_format="oas")
    assert hit["Result"]["ReusedFrom"] == doc["Id"]
    assert hit["Output"]["Filename"] == "chip_top.oas"
    gds_run = await api.create(await api.upload(layout))
    assert gds_run["State"]["Status"] == "queued"
    assert gds_run["Config"]["Cmd"][4:6] == ["--output", "/output/chip_top.gds"]
    assert (await api.cancel(gds_run["Id"]))[0] in (200, 202)


async def test_a_bad_output_format_is_refused(
    start_app: StartApp, cached: Callable[..., Config]
) -> None:
    """An unknown `output_format` is 400 with a message, and nothing is recorded."""
    api = await start_app(cached())
    upload = await api.upload(gds("chip_top"))
    before = len(await api.events())
    r = await api.client.post(
        "/api/v1/prechecks",
        json={"upload_id": upload, "top_cell": "chip_top", "output_format": "cif"},
    )
    assert r.status == 400
    assert "output_format" in (await r.json())["message"]
    assert len(await api.events()) == before


async def test_a_run_answered_from_the_cache_is_told_like_any_ended_run(
    start_app: StartApp, cached: Callable[..., Config]
) -> None:
    """A reused run's subscribers are told of its end, once, with its final status."""
    receiver = await start_receiver()
    try:
        notify = NotifyConfig(allowed_hosts=("127.0.0.1",), webhook_secret=SECRET)
        api = await start_app(attrs.evolve(cached(), notify=notify))
        layout = gds("chip_top")
        first = await api.run(layout)
        assert (await api.wait(first, 60))["Status"] == "completed"
        doc = await api.create(await api.upload(layout), notify=[{"webhook": receiver.url}])
        assert doc["Result"]["ReusedFrom"] == first
        await receiver.wait(1, 30)
        (got,) = receiver.got
        data = json.loads(got.body)["data"]
        assert got.verified and data["status"] == "completed" and data["id"] == doc["Id"]
        assert data["image_id"] == doc["Image"]
    finally:
        await receiver.server.close()


async def test_a_source_whose_files_cannot_be_linked_leaves_nothing_and_the_run_runs(
    start_app: StartApp, cached: Callable[..., Config]
) -> None:
    """When the source's folder does not hold every file its record lists (here: its output
    layout gone from the disk behind the log's back), no `run.reused` is recorded, no folder or
    partial copy is left, and the run queues as any other."""
    api = await start_app(cached())
    layout = gds("chip_top")
    first = await api.run(layout)
    assert (await api.wait(first, 60))["Status"] == "completed"
    root = _storage(api).parent
    name = (await api.get(first))["Output"]["Filename"]
    output = next((root / "runs" / first).rglob(name))
    output.rename(root / "tmp" / "moved-aside")
    doc = await api.create(await api.upload(layout))
    assert doc["State"]["Status"] == "queued" and doc["Result"] is None
    assert await api.events("run.reused") == []
    assert sorted(p.name for p in (root / "tmp").iterdir()) == ["moved-aside"]
    assert sorted(p.name for p in (root / "runs").iterdir()) == [first]
    assert (await api.wait(doc["Id"], 60))["Status"] == "completed"


async def test_the_run_page_says_a_run_was_answered_from_the_cache(
    browser: Browser, start_app: StartApp, cached: Callable[..., Config]
) -> None:
    """A run answered from the cache says so under its verdict, naming the run it came from;
    the run that really ran says nothing of the kind."""
    api = await start_app(cached())
    layout = gds("chip_top")
    first = await api.run(layout, "chip.gds")
    assert (await api.wait(first, 60))["Status"] == "completed"
    again = await api.run(layout, "again.gds")
    assert (await api.get(again))["Result"]["ReusedFrom"] == first
    browser.point_at(api.client)

    def look(run: str) -> tuple[str, bool]:
        browser.open(f"#/runs/{run}")
        browser.until_visible("verdict")
        browser.until(lambda _: browser.find("verdict-text").text)
        shown = browser.find("reused")
        return shown.text, shown.is_displayed()

    text, shown = await browser.drive(lambda: look(again), 60)
    assert shown and text.startswith("Answered from the result cache") and first in text
    assert (await browser.drive(lambda: look(first), 60))[1] is False
