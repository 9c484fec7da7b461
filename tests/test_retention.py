"""Retention on a real server with a set clock: the files of final runs past their days go,
each removal a `run.files-pruned` event; the events, record and verdict stay (an earlier
`as_of` answers as before); the document's `Pruned` and the downloads (410) say what went and
when; a run whose files another reuses is kept until that run is pruned; a pass cut between
the removal and its event is healed; `precheck-server prune --retention [--dry-run]`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.cli import main
from precheck.config import Config
from precheck.events.types import RunFilesPruned
from precheck.ops.backup import backup
from precheck.ops.writes import open_log, read_state
from precheck.web import keys
from tests.browser import Browser
from tests.docker_fixtures import Api
from tests.layouts import gds

pytestmark = pytest.mark.docker

ALL_KINDS = ["outputs", "reports", "render", "run_folder", "logs"]


class SetClock:
    """A clock the test sets, from now on (a run's end is Docker's time of its exit)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def _serve(
    aiohttp_client: AiohttpClient, config: Config, clock: SetClock, instances: set[str]
) -> Api:
    client = await aiohttp_client(create_app(config, clock))
    instances.add(str(client.app[keys.PROJECTIONS].instance_id))
    return Api(client)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


async def _status(api: Api, path: str) -> tuple[int, dict[str, Any] | None]:
    r = await api.client.get(path)
    body = await r.json() if r.content_type == "application/json" else None
    return r.status, body


def _verdict(doc: dict[str, Any]) -> dict[str, Any]:
    """A document's `Result` but for the reuse this test sets by hand (not in the log)."""
    return {k: v for k, v in doc["Result"].items() if k not in ("Reused", "ReusedFrom")}


async def test_final_runs_files_go_after_their_days_and_the_log_says_so(
    aiohttp_client: AiohttpClient,
    sim_config: Callable[..., Config],
    docker_instances: set[str],
) -> None:
    """Two completed runs, `b` reusing `a`'s files: six days on (of five), a dry run lists only
    `b`; the pass removes `b`'s files and lines and records it; `b`'s downloads answer 410 with
    when, its document says `Pruned`, its verdict and events are as they were, an earlier
    `as_of` answers as before; `a` stays while `b` refers to it and goes at the next pass."""
    days = {f"{k}_days": 5 for k in ("outputs", "reports", "render", "run_folder")}
    config = attrs.evolve(
        sim_config(),
        retention=attrs.evolve(sim_config().retention, log_days=5, **days),
    )
    clock = SetClock()
    api = await _serve(aiohttp_client, config, clock, docker_instances)
    a = await api.run(gds("chip_top", "lines=50"))
    b = await api.run(gds("chip_top", "lines=50"))
    for run in (a, b):
        assert (await api.wait(run, 60))["Status"] == "completed"
    before = await api.get(b)
    runs = api.app[keys.PROJECTIONS].runs
    # As `run.reused` folds it in, set by hand here so that `b` keeps its own files and lines
    # (the real result cache's reuse: the last test): `b` refers to `a`.
    runs.by_id[b] = attrs.evolve(runs.by_id[b], reused_from=a)
    settled = api.store.head
    storage = api.app[keys.STORAGE]
    assert _files(storage.run_dir(b)), "the run stored no files"
    run_events = len(await api.events(run_id=b))
    assert (await api.logs(b))["lines"]

    clock.now += timedelta(days=4)
    r = await api.client.post("/api/v1/retention/prune", json={"dry_run": True})
    assert (await r.json())["Removals"] == []
    clock.now += timedelta(days=2)
    r = await api.client.post("/api/v1/retention/prune", json={"dry_run": True})
    [listed] = (await r.json())["Removals"]
    assert (listed["Id"], listed["What"], listed["Reason"]) == (b, ALL_KINDS, "age")
    assert api.store.head == settled  # a dry run records nothing
    assert _files(storage.run_dir(b))

    r = await api.client.post("/api/v1/retention/prune", json={})
    assert r.status == 200, await r.text()
    [done] = (await r.json())["Removals"]
    assert done["Id"] == b and done["Bytes"] > 0
    assert _files(storage.run_dir(b)) == []
    assert await api.app[keys.OUTPUT_LINES].read(b) == ([], False)
    assert _files(storage.run_dir(a)), "a run another reuses was pruned"
    [event] = await api.events("run.files-pruned")
    assert isinstance(event.event, RunFilesPruned)
    assert event.event.kinds == tuple(ALL_KINDS) and event.event.bytes_freed == done["Bytes"]
    assert event.metadata.actor == "anonymous"  # who asked (auth is off)

    after = await api.get(b)
    [pruned] = after["Pruned"]
    assert pruned["What"] == ALL_KINDS and pruned["Reason"] == "age"
    assert datetime.fromisoformat(pruned["At"]) == clock.now
    assert pruned["Files"] > 0 and pruned["BytesFreed"] == done["Bytes"]
    assert _verdict(after) == _verdict(before) and after["State"] == before["State"]
    assert after["Output"]["Available"] is False
    assert after["Output"]["Checksums"] == before["Output"]["Checksums"]
    then = await _status(api, f"/api/v1/prechecks/{b}?as_of={settled}")
    assert then[0] == 200 and then[1] is not None
    assert _verdict(then[1]) == _verdict(before) and then[1]["Pruned"] is None
    assert then[1]["State"] == before["State"]

    for path in (
        f"/api/v1/prechecks/{b}/output",
        f"/api/v1/prechecks/{b}/render",
        f"/api/v1/prechecks/{b}/reports",
        f"/api/v1/prechecks/{b}/findings",
        f"/api/v1/prechecks/{b}/logs",
        f"/api/v1/prechecks/{b}/logs?format=text",
        f"/api/v1/debug/prechecks/{b}",
    ):
        status, body = await _status(api, path)
        assert status == 410, path
        assert body is not None and "was removed on" in body["message"], path
    report = (await (await api.client.get(f"/api/v1/prechecks/{a}/reports")).json())[0]["Path"]
    status, body = await _status(api, f"/api/v1/prechecks/{b}/reports/{report}")
    assert status == 410 and body is not None and b in body["message"]
    events = await (await api.client.get(f"/api/v1/prechecks/{b}/events")).json()
    assert [e["type"] for e in events][-1] == "run.files-pruned"
    assert len(events) == run_events + 1
    assert (await _status(api, f"/api/v1/prechecks/{a}/output"))[0] == 200

    # `b` is pruned, so it no longer holds `a`: the next pass takes `a`.
    r = await api.client.post("/api/v1/retention/prune", json={})
    assert [x["Id"] for x in (await r.json())["Removals"]] == [a]
    assert _files(storage.run_dir(a)) == []
    assert (await _status(api, f"/api/v1/prechecks/{a}/output"))[0] == 410
    r = await api.client.post("/api/v1/retention/prune", json={})
    assert (await r.json())["Removals"] == []  # nothing is pruned twice


async def test_a_cut_pass_is_healed_and_the_cli_prunes_by_the_config(
    aiohttp_client: AiohttpClient,
    sim_config: Callable[..., Config],
    docker_instances: set[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A pass that removed a run's lines and files but stopped before its event: the CLI's
    `prune --retention --dry-run` (no server now; a second kept, a second gone) lists the run
    and changes nothing; `prune --retention` records the removal, with the bytes it found
    (none), and the events of the run are all there."""
    config = attrs.evolve(
        sim_config(), retention=attrs.evolve(sim_config().retention, log_days=1 / 86400)
    )
    clock = SetClock()
    api = await _serve(aiohttp_client, config, clock, docker_instances)
    run = await api.run(gds("chip_top", "lines=20"))
    assert (await api.wait(run, 60))["Status"] == "completed"
    storage = api.app[keys.STORAGE]
    # What a pass cut short did: the files and lines went, no event followed.
    storage.remove_run_files(run, lambda p: p.startswith("output/"))
    await api.app[keys.OUTPUT_LINES].delete_run(run)
    events = len(await api.events(run_id=run))
    await api.client.close()

    path = tmp_path / "config.toml"
    path.write_text(
        f'[server]\nstorage_path = "{config.server.storage_path}"\n'
        f"[retention]\nlog_days = {1 / 86400}\noutputs_days = {1 / 86400}\n"
    )
    await asyncio.sleep(1.1)
    assert await cli("prune", "--retention", "--dry-run", "--config", str(path)) == 0
    out = capsys.readouterr().out
    assert "Would remove:" in out and run in out and "outputs, logs" in out
    state, _ = await read_state(config)
    assert state.runs.by_id[run].pruned == ()

    assert await cli("prune", "--retention", "--config", str(path)) == 0
    assert "Removed the files of 1 run(s)" in capsys.readouterr().out
    state, _ = await read_state(config)
    [pruning] = state.runs.by_id[run].pruned
    assert pruning.kinds == ("outputs", "logs") and pruning.files == 0
    assert pruning.bytes_freed == 0 and pruning.reason == "age"
    # A backup copies what the log still promises: not the pruned output, which is gone.
    copied = await backup(config, tmp_path / "backup")
    assert not list((tmp_path / "backup" / "runs" / run).rglob("output/*"))
    assert copied.lines()
    assert await cli("prune", "--retention", "--config", str(path)) == 0
    assert "Nothing is due" in capsys.readouterr().out
    assert await cli("prune", "--config", str(path)) == 2  # say what to prune
    assert "--retention" in capsys.readouterr().err
    async with open_log(config) as store:
        kept = await store.read(0, 100000, stream=f"run-{run}")
    assert len(kept) == events + 1 and kept[-1].type == "run.files-pruned"
    assert kept[-1].metadata.actor == "cli"


async def cli(*argv: str) -> int:
    """`precheck-server ARGV` in this process (its own event loop, in a thread)."""
    return await asyncio.to_thread(main, list(argv))


async def test_past_the_budget_a_run_that_ends_takes_the_oldest_runs_files(
    aiohttp_client: AiohttpClient,
    sim_config: Callable[..., Config],
    docker_instances: set[str],
) -> None:
    """With a budget smaller than one run's files, each run's end wakes the pass (its reaction)
    and the oldest final run's files go, recorded with reason `budget`; its verdict stays."""
    config = attrs.evolve(
        sim_config(), retention=attrs.evolve(sim_config().retention, max_storage_gb=1e-9)
    )
    api = await _serve(aiohttp_client, config, SetClock(), docker_instances)
    run = await api.run(gds("chip_top", "lines=20"))
    assert (await api.wait(run, 60))["Status"] == "completed"
    recorded = await api.wait_event("run.files-pruned", run, within=20)
    assert isinstance(recorded.event, RunFilesPruned)
    assert recorded.event.reason == "budget" and recorded.metadata.actor == "server"
    assert set(recorded.event.kinds) == set(ALL_KINDS)
    assert _files(api.app[keys.STORAGE].run_dir(run)) == []
    doc = await api.get(run)
    assert doc["State"]["Status"] == "completed" and doc["Result"]["Passed"] is True
    assert doc["Pruned"][0]["Reason"] == "budget"


async def test_the_run_page_says_what_retention_removed_and_when(
    aiohttp_client: AiohttpClient,
    sim_config: Callable[..., Config],
    docker_instances: set[str],
    browser: Browser,
) -> None:
    """A run whose output and run folder went: its page keeps the verdict, says what went and
    when, and offers neither the output nor the debug tarball; the reports are still there."""
    policy = attrs.evolve(sim_config().retention, outputs_days=1, run_folder_days=1)
    config = attrs.evolve(sim_config(), retention=policy)
    clock = SetClock()
    api = await _serve(aiohttp_client, config, clock, docker_instances)
    run = await api.run(gds("chip_top"), "chip_top.gds")
    assert (await api.wait(run, 60))["Status"] == "completed"
    clock.now += timedelta(days=2)
    [removal] = await api.app[keys.RETENTION].prune()
    assert removal.kinds == ("outputs", "run_folder")
    browser.point_at(api.client)

    def look() -> dict[str, Any]:
        browser.open(f"#/runs/{run}")
        browser.until_visible("pruned")
        browser.until(lambda _: "report" in browser.find("downloads").text)
        return {
            "pruned": browser.find("pruned").text,
            "downloads": browser.find("downloads").text,
            "verdict": browser.find("verdict-text").text,
            "shot": browser.screenshot("run-page-pruned.png"),
        }

    seen = await browser.drive(look, 60)
    assert seen["pruned"].startswith(
        "Removed the output layout, the run folder (debug tarball) on "
    ), seen["pruned"]
    assert "kept past retention" in seen["pruned"]
    assert "output layout" not in seen["downloads"] and "debug tarball" not in seen["downloads"]
    assert seen["verdict"].startswith("Passed")


async def test_the_pass_runs_on_its_timer(
    aiohttp_client: AiohttpClient,
    sim_config: Callable[..., Config],
    docker_instances: set[str],
) -> None:
    """Nobody asks: once the run is past its days, the next tick of `interval_minutes` (here
    about a second, below what a config file allows) removes its lines, as the server."""
    policy = attrs.evolve(sim_config().retention, log_days=1, interval_minutes=0.02)
    clock = SetClock()
    api = await _serve(
        aiohttp_client, attrs.evolve(sim_config(), retention=policy), clock, docker_instances
    )
    run = await api.run(gds("chip_top", "lines=20"))
    assert (await api.wait(run, 60))["Status"] == "completed"
    await asyncio.sleep(2.5)  # ticks go by: nothing is due yet
    assert await api.events("run.files-pruned") == []
    clock.now += timedelta(days=1, seconds=30)
    recorded = await api.wait_event("run.files-pruned", run, within=10)
    assert isinstance(recorded.event, RunFilesPruned)
    assert recorded.event.kinds == ("logs",) and recorded.metadata.actor == "server"
    assert recorded.event.bytes_freed > 0
    status, body = await _status(api, f"/api/v1/prechecks/{run}/logs")
    assert status == 410 and body is not None and "output lines" in body["message"]
    assert (await _status(api, f"/api/v1/prechecks/{run}/output"))[0] == 200


async def test_a_source_the_result_cache_answered_from_stays_while_its_reuser_does(
    aiohttp_client: AiohttpClient,
    sim_config: Callable[..., Config],
    docker_instances: set[str],
) -> None:
    """The same layout twice with the result cache on: the second run is answered from the
    first (`run.reused`). Past their days, the first pass takes only the reuser's files (the
    source is kept while referred to) and the source's bytes stay whole; the next pass takes
    the source."""
    base = sim_config()
    config = attrs.evolve(
        base,
        cache=attrs.evolve(base.cache, enabled=True),
        retention=attrs.evolve(base.retention, outputs_days=5, reports_days=5),
    )
    clock = SetClock()
    api = await _serve(aiohttp_client, config, clock, docker_instances)
    a = await api.run(gds("chip_top", "lines=5"))
    assert (await api.wait(a, 60))["Status"] == "completed"
    b = await api.run(gds("chip_top", "lines=5"))
    reused = await api.get(b)
    assert reused["State"]["Status"] == "completed"
    assert (reused["Result"]["Reused"], reused["Result"]["ReusedFrom"]) == (True, a)
    storage = api.app[keys.STORAGE]
    source_output = await (await api.client.get(f"/api/v1/prechecks/{a}/output")).read()

    clock.now += timedelta(days=6)
    r = await api.client.post("/api/v1/retention/prune", json={})
    assert [x["Id"] for x in (await r.json())["Removals"]] == [b]
    assert (await _status(api, f"/api/v1/prechecks/{b}/output"))[0] == 410
    r = await api.client.get(f"/api/v1/prechecks/{a}/output")
    assert r.status == 200 and await r.read() == source_output
    assert _files(storage.run_dir(a))

    r = await api.client.post("/api/v1/retention/prune", json={})
    assert [x["Id"] for x in (await r.json())["Removals"]] == [a]
    assert (await _status(api, f"/api/v1/prechecks/{a}/output"))[0] == 410
