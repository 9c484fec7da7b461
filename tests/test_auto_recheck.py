"""Automatic re-checks (`[recheck] enabled`): the simulator image rebuilt under the same tag (a
new id: locally built images have no repo digest) re-checks each upload whose newest verdict
came from the old image, behind every user's run and within `recheck.max_share` of the slots,
once per upload and image; a changed verdict is told to the re-checked run's subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config, NotifyConfig, RecheckConfig, load_config
from precheck.events.store import EventStore, RecordedEvent
from precheck.events.types import RecheckPlanned, RunQueued, RunStarted
from precheck.projections import Projections
from precheck.web import keys
from tests.browser import Browser
from tests.docker_fixtures import Api, StartApp, docker
from tests.layouts import gds
from tests.notify_receivers import SECRET, start_receiver
from tests.simulator_config import simulator_tables, toml_text

pytestmark = pytest.mark.docker

Rebuild = Callable[..., Awaitable[str]]


@pytest.fixture
def same_tag(simulator_image: str) -> Iterator[tuple[str, Rebuild]]:
    """A name standing for the simulator image, and `rebuild(env)`: the same image built again
    under that name with a label of its own (and an `ENV` line, if given), so the name stands
    for a new id; returns that id. Every image made is removed after the test."""
    name = f"precheck-autorecheck:{uuid.uuid4().hex[:12]}"
    subprocess.run(["docker", "tag", simulator_image, name], check=True, timeout=60)
    made: list[str] = []

    async def rebuild(env: str = "") -> str:
        lines = [f"FROM {simulator_image}", f"LABEL precheck.test={uuid.uuid4().hex}"]
        if env:
            lines.append(f"ENV {env}")
        proc = await asyncio.create_subprocess_exec(
            *("docker", "build", "-q", "-t", name, "-"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(("\n".join(lines) + "\n").encode())
        assert proc.returncode == 0, err.decode()
        made.append(out.decode().strip())
        return await _image_id(name)

    yield name, rebuild
    with contextlib.suppress(subprocess.TimeoutExpired):  # a busy engine: removal is clean-up
        subprocess.run(["docker", "rmi", "-f", name, *made], capture_output=True, timeout=300)


async def _image_id(image: str) -> str:
    return (await docker("image", "inspect", "--format", "{{.Id}}", image))[1].strip()


def _config(sim_config: Callable[..., Config], image: str, **notify: Any) -> Config:
    """Two slots, re-checks on at the default share (one at a time)."""
    config = sim_config(image=image, max_concurrent=2)
    config = attrs.evolve(config, recheck=RecheckConfig(enabled=True))
    if notify:
        config = attrs.evolve(config, notify=NotifyConfig(**notify))
    return config


async def _upload_doc(api: Api, upload_id: str) -> dict[str, Any]:
    r = await api.client.get(f"/api/v1/uploads/{upload_id}")
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


async def _settled(api: Api, run_ids: list[str]) -> None:
    for run_id in run_ids:
        assert (await api.wait(run_id, 120))["Status"] in ("completed", "failed"), run_id


def _rechecks_of(events: list[RecordedEvent]) -> dict[str, str]:
    """Each re-check run queued, by the run it re-checks."""
    return {
        e.recheck_of: e.run_id
        for r in events
        if isinstance(e := r.event, RunQueued) and e.reason == "recheck"
    }


async def test_a_new_image_under_the_same_tag_rechecks_within_the_share_behind_user_runs(
    start_app: StartApp,
    sim_config: Callable[..., Config],
    same_tag: tuple[str, Rebuild],
) -> None:
    """Three uploads passed on the old image. Once a user's run starts on the rebuilt image,
    each is re-checked on it: `recheck.planned` then `run.queued` with reason `recheck`, no
    re-check starting while a user's run waits, never two running at once on two slots; same
    verdicts say `rechecked-same`; a scan and a replay then plan nothing more."""
    name, rebuild = same_tag
    api = await start_app(_config(sim_config, name))
    old_id = await _image_id(name)
    uploads = [await api.upload(gds("chip_top"), f"chip{i}.gds") for i in range(3)]
    old = [(await api.create(u, die_id="ABCD1234"))["Id"] for u in uploads]
    await _settled(api, old)
    assert {(await api.get(r))["Image"] for r in old} == {old_id}
    for run_id in old:
        assert (await api.get(run_id))["Recheck"] is None, "no newer image yet"
    assert not await api.events("recheck.planned")

    new_id = await rebuild()
    assert new_id != old_id
    mine = await api.upload(gds("chip_top", "sleep=1"), "mine.gds")
    users = [(await api.create(mine, die_id="ABCD1234"))["Id"] for _ in range(4)]
    await _settled(api, users)

    events = await api.events()
    planned = {r.position: e for r in events if isinstance(e := r.event, RecheckPlanned)}
    assert sorted(e.upload_id for e in planned.values()) == sorted(uploads)
    assert {e.image_ref for e in planned.values()} == {new_id}
    assert {e.run_id for e in planned.values()} == set(old)
    rechecks = _rechecks_of(events)
    assert set(rechecks) == set(old)
    queued = {r.position: e for r in events if isinstance(e := r.event, RunQueued)}
    for position, plan in planned.items():  # the plan and its run in one append, plan first
        assert queued[position + 1].recheck_of == plan.run_id
    await _settled(api, list(rechecks.values()))

    # Lowest priority and the share, read back from the log.
    events = await api.events()
    starts = {e.run_id: r.position for r in events if isinstance(e := r.event, RunStarted)}
    first_recheck = min(starts[run_id] for run_id in rechecks.values())
    assert all(starts[run_id] < first_recheck for run_id in users)
    running: set[str] = set()
    for r in events:
        if isinstance(r.event, RunStarted) and r.event.run_id in rechecks.values():
            running.add(r.event.run_id)
            assert len(running) <= 1, "max(1, floor(0.25 * 2)) re-checks at once"
        elif r.type == "run.exited":
            running.discard(getattr(r.event, "run_id", ""))

    for upload_id, run_id in zip(uploads, old, strict=True):
        again = await api.get(rechecks[run_id])
        assert again["State"]["Status"] == "completed"
        assert again["Reason"] == "recheck" and again["RecheckOf"] == run_id
        assert again["Image"] == new_id
        assert again["Recheck"]["State"] == "rechecked-same"
        assert (await api.get(run_id))["Recheck"] == again["Recheck"]
        doc = await _upload_doc(api, upload_id)
        assert doc["Recheck"] == {
            "State": "rechecked-same",
            "Of": run_id,
            "Run": rechecks[run_id],
            "Image": new_id,
            "Before": "passed",
            "Verdict": "passed",
        }
    for run_id in users:
        assert (await api.get(run_id))["Reason"] == ""

    # Once per (upload, image): a scan finds the same image and plans nothing; a replay of
    # the log knows what was planned.
    answer = await api.client.post("/api/v1/rechecks/scan")
    assert answer.status == 200, await answer.text()
    scanned = await answer.json()
    assert scanned["Ref"] == new_id and scanned["Planned"] == []
    assert scanned["Engines"] == [{"Name": "local", "Ref": new_id, "Error": None}]
    assert len(await api.events("recheck.planned")) == 3
    replayed = await Projections.replay(api.store)
    assert replayed.rechecks.planned == api.app[keys.PROJECTIONS].rechecks.planned


async def test_a_changed_verdict_is_told_and_a_scan_finds_the_new_image(
    start_app: StartApp,
    sim_config: Callable[..., Config],
    same_tag: tuple[str, Rebuild],
) -> None:
    """An idle server learns of the rebuilt image from a scan. The newer image fails the layout
    the older one passed: `verdict-changed`, told to the re-checked run's webhook; the re-check
    of a layout whose verdict stays the same tells nobody."""
    name, rebuild = same_tag
    receiver = await start_receiver()
    try:
        notify = {"allowed_hosts": ("127.0.0.1",), "webhook_secret": SECRET}
        api = await start_app(_config(sim_config, name, **notify))
        hook = [{"webhook": receiver.url}]
        passing = await api.upload(gds("chip_top"), "passing.gds")
        failing = await api.upload(gds("chip_top", "fail=KLayout.CheckSize"), "failing.gds")
        first = (await api.create(passing, die_id="ABCD1234", notify=hook))["Id"]
        second = (await api.create(failing, die_id="ABCD1234", notify=hook))["Id"]
        await _settled(api, [first, second])
        await receiver.wait(2)

        new_id = await rebuild('PRECHECK_SIM_DIRECTIVES="fail=KLayout.CheckSize"')
        assert not await api.events("recheck.planned"), "nothing started on it yet"
        r = await api.client.post("/api/v1/rechecks/scan")
        assert r.status == 200, await r.text()
        scanned = await r.json()
        assert scanned["Ref"] == new_id
        assert sorted(p["Upload"] for p in scanned["Planned"]) == sorted([passing, failing])
        rechecks = {p["Of"]: p["Run"] for p in scanned["Planned"]}
        await _settled(api, list(rechecks.values()))

        changed = await api.get(rechecks[first])
        assert changed["Recheck"]["State"] == "verdict-changed"
        assert changed["Recheck"]["Before"] == "passed"
        assert changed["Recheck"]["Verdict"] == "failed at KLayout.CheckSize"
        assert changed["Notify"] == [{"Kind": "webhook", "Target": receiver.url}]
        same = await api.get(rechecks[second])
        assert same["Recheck"]["State"] == "rechecked-same"
        assert (await _upload_doc(api, passing))["Recheck"]["State"] == "verdict-changed"

        await receiver.wait(3)
        told_of = [json.loads(g.body)["data"] for g in receiver.got[2:]]
        assert [(d["id"], d["reason"], d["recheck_of"]) for d in told_of] == [
            (rechecks[first], "recheck", first)
        ]
        assert receiver.got[2].verified
        sent = await api.events("notification.sent")
        assert sorted(getattr(r.event, "run_id", "") for r in sent) == sorted(
            [first, second, rechecks[first]]
        )
        told = await api.client.get(f"/api/v1/prechecks/{rechecks[second]}/notifications")
        assert told.status == 200
        assert [(d["Status"], d["Attempts"]) for d in await told.json()] == [("not-needed", [])]
    finally:
        await receiver.server.close()


async def test_a_scan_with_rechecks_off_is_409(start_app: StartApp) -> None:
    """Re-checks are opt-in: with them off a scan is refused, with a message, and nothing is
    recorded."""
    api = await start_app()
    before = len(await api.events())
    r = await api.client.post("/api/v1/rechecks/scan")
    assert r.status == 409
    assert "recheck" in (await r.json())["message"]
    assert len(await api.events()) == before


async def test_the_cli_scan_without_a_server_plans_once_as_cli(
    aiohttp_client: AiohttpClient,
    tmp_path: Path,
    same_tag: tuple[str, Rebuild],
    docker_instances: set[str],
) -> None:
    """With no server on the folder, `precheck-server recheck --scan` resolves the image on the
    engine, appends the plan and the re-check's queuing itself (actor `cli`) and says what it
    queued; a second scan queues nothing; with re-checks off it fails with a message."""
    name, rebuild = same_tag
    config_file = tmp_path / "config.toml"
    tables = simulator_tables(tmp_path / "data", name) | {"recheck": {"enabled": True}}
    config_file.write_text(toml_text(tables), encoding="utf-8")
    client = await aiohttp_client(create_app(load_config(config_file)))
    docker_instances.add(str(client.app[keys.PROJECTIONS].instance_id))
    api = Api(client)
    upload = await api.upload(gds("chip_top"), "chip.gds")
    first = (await api.create(upload, die_id="ABCD1234"))["Id"]
    await _settled(api, [first])
    await client.close()

    new_id = await rebuild()
    scan = [sys.executable, "-m", "precheck", "recheck", "--scan", "--config", str(config_file)]
    done = await _run(*scan, "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["Ref"] == new_id and found["Engines"][0]["Ref"] == new_id
    assert [(p["Upload"], p["Of"]) for p in found["Planned"]] == [(upload, first)]
    store = await EventStore.open(tmp_path / "data" / "precheck.db")
    try:
        rows = [r async for r in store.read_all() if r.type in ("recheck.planned", "run.queued")]
    finally:
        await store.close()
    assert [r.type for r in rows] == ["run.queued", "recheck.planned", "run.queued"]
    assert {r.metadata.actor for r in rows[1:]} == {"cli"}

    again = await _run(*scan)
    assert again.returncode == 0, again.stderr
    assert f"0 re-check(s) queued for {new_id}" in again.stdout

    config_file.write_text(toml_text(simulator_tables(tmp_path / "data", name)), "utf-8")
    off = await _run(*scan)
    assert off.returncode == 1 and "[recheck] enabled = true" in off.stderr
    assert off.stderr.count("\n") == 1


async def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    """A command, run without blocking the loop; its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode or 0, out.decode(), err.decode())


async def test_the_run_page_says_what_the_newer_image_found(
    browser: Browser,
    start_app: StartApp,
    sim_config: Callable[..., Config],
    same_tag: tuple[str, Rebuild],
) -> None:
    """A run re-checked on the rebuilt image says so on its page, as its re-check's page does:
    the same verdict, on which image."""
    name, rebuild = same_tag
    api = await start_app(_config(sim_config, name))
    run_id = await api.run(gds("chip_top"), "chip_top.gds", die_id="ABCD1234")
    await _settled(api, [run_id])
    new_id = await rebuild()
    answer = await api.client.post("/api/v1/rechecks/scan")
    assert answer.status == 200, await answer.text()
    again = (await answer.json())["Planned"][0]["Run"]
    await _settled(api, [again])
    browser.point_at(api.client)

    def look(run: str) -> Callable[[], dict[str, str]]:
        def steps() -> dict[str, str]:
            browser.open(f"#/runs/{run}")
            browser.until_visible("recheck-state")
            shown = browser.find("recheck-state")
            return {"text": shown.text, "state": str(shown.get_attribute("data-state"))}

        return steps

    expected = f"Re-checked on a newer image ({new_id}): same verdict, passed."
    for run in (run_id, again):
        seen = await browser.drive(look(run), 60)
        assert seen == {"text": expected, "state": "rechecked-same"}
