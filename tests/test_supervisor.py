"""The supervisor on a real Docker engine: runs of the simulator image driven through the API.

Every test starts a real server (`start_app`), uploads a layout whose `PRECHECK_SIM` texts
choose the simulator's behaviour, and waits on events (`/wait`, the event store, Docker's
event stream), never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import tarfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from precheck.config import Config
from precheck.domain.flow import STEPS as FLOW_STEPS
from precheck.events.types import (
    RunProgressed,
    RunQueued,
    RunStarted,
    RunTimedOut,
    StrayContainerRemoved,
)
from precheck.projections import Projections
from precheck.web import keys
from tests.docker_fixtures import Api, StartApp, docker, docker_inspect
from tests.layouts import gds

pytestmark = [pytest.mark.docker, pytest.mark.timeout(60)]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The flow's steps without the chip-on-board pad check, as the simulator runs them.
STEPS = [s for s in FLOW_STEPS if s != "KLayout.CheckPadMask"]
COB_STEPS = [*STEPS[:3], "KLayout.CheckPadMask", *STEPS[3:]]
# Each report in its step's folder, as the real flow (and the simulator) writes them.
REPORTS = [
    "06-klayout-density/density.klayout.json",
    "06-klayout-density/density.klayout.lyrdb",
    "08-klayout-zeroareapolygons/density.klayout.json",
    "08-klayout-zeroareapolygons/density.klayout.lyrdb",
    "10-klayout-antenna/antenna.klayout.json",
    "10-klayout-antenna/antenna.klayout.lyrdb",
    "12-magic-drc/drc.magic.lyrdb",
    "12-magic-drc/drc.magic.rpt",
    "14-klayout-drc/drc.klayout.json",
    "14-klayout-drc/drc.klayout.lyrdb",
]
DOCKER_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z ")
# Events after which a run no longer holds a slot (its container has stopped).
ENDED = ("run.exited", "run.finished", "run.cancelled", "run.failed-to-start")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def wait_gone(container_id: str, within: float = 20) -> None:
    """Return once the container no longer exists, woken by Docker's `destroy` event."""
    since = f"{time.time() - 60:.3f}"  # replays a destroy that came before we subscribed
    proc = await asyncio.create_subprocess_exec(
        "docker",
        "events",
        "--since",
        since,
        "--format",
        "{{.Action}}",
        "--filter",
        f"container={container_id}",
        "--filter",
        "event=destroy",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        if await docker_inspect(container_id) is None:
            return
        assert proc.stdout is not None
        async with asyncio.timeout(within):
            line = await proc.stdout.readline()
        assert line.strip() == b"destroy", line
        assert await docker_inspect(container_id) is None
    finally:
        proc.kill()
        await proc.wait()


async def progress_steps(api: Api, run_id: str) -> list[tuple[int, int, str]]:
    return [
        (r.event.step, r.event.total, r.event.name)
        for r in await api.events("run.progressed", run_id)
        if isinstance(r.event, RunProgressed)
    ]


HANG_STEP = 14  # KLayout.DRC: where `hang` hangs, after which no progress event comes


async def cancel_hanging(api: Api, run_id: str) -> dict[str, Any]:
    """Cancel a `hang` run once it hangs; assert it is answered as cancelled.

    It waits for the hang first: a cancel racing the run's `run.progressed` appends can be
    refused with 409 (the command handler retries a version conflict on read models that do
    not yet hold the event that won; see the report), which these tests are not about.
    """
    await api.wait_step(run_id, HANG_STEP)
    status, body = await api.cancel(run_id)
    assert (status, body.get("Status")) == (200, "cancelled"), body
    return body


# 1 ---------------------------------------------------------------------------------------------


async def test_pass_serves_every_result_and_removes_the_container(start_app: StartApp) -> None:
    """A clean layout passes; output, render, reports, metrics, debug tar served; container gone."""
    api = await start_app()
    layout = gds("chip_top")
    digest = sha256(layout)
    run_id = await api.run(layout)

    ended = await api.wait(run_id)
    assert ended == {"StatusCode": 0, "Status": "completed", "Error": None}
    doc = await api.get(run_id)
    assert doc["State"]["Status"] == "completed"
    assert doc["State"]["ExitCode"] == 0
    assert doc["State"]["Error"] == ""
    assert doc["State"]["OOMKilled"] is False
    assert doc["Result"]["Passed"] is True
    assert doc["Result"]["FailedStep"] is None
    assert doc["Result"]["Classification"] is None
    assert doc["Result"]["DeferredErrors"] == {}
    assert doc["Result"]["Metrics"]["klayout__drc_error__count"] == 0
    assert doc["Progress"] == {"Step": 16, "Total": 16, "Name": "KLayout.WriteLayout"}
    assert doc["Image"].startswith("sha256:")
    output = doc["Output"]
    assert output["Available"] is True
    assert output["Filename"] == "chip_top.gds"
    assert output["Size"] == len(layout)
    assert output["Checksums"] == {"sha256": digest}

    base = f"/api/v1/prechecks/{run_id}"
    r = await api.client.get(f"{base}/output")
    assert r.status == 200
    body = await r.read()
    assert body == layout  # the simulator writes the layout it read
    assert sha256(body) == digest
    assert r.headers["ETag"] == f'"{digest}"'
    assert r.headers["X-Precheck-Passed"] == "true"

    r = await api.client.get(f"{base}/output", headers={"Range": "bytes=0-9"})
    assert r.status == 206
    assert await r.read() == layout[:10]
    assert r.headers["Content-Range"] == f"bytes 0-9/{len(layout)}"

    r = await api.client.get(f"{base}/output", headers={"If-None-Match": f'"{digest}"'})
    assert r.status == 304
    assert await r.read() == b""

    r = await api.client.get(f"{base}/render")
    assert r.status == 200
    assert (await r.read()).startswith(PNG_MAGIC)

    r = await api.client.get(f"{base}/reports")
    assert r.status == 200
    reports = await r.json()
    # Each step folder's reports (the real flow's) under their step, the flow's logs, metrics.
    assert sorted(x["Path"] for x in reports if x["Path"] in REPORTS) == sorted(REPORTS)
    paths = {x["Path"]: x["Step"] for x in reports}
    assert {"flow.log", "warning.log", "error.log", "final/metrics.csv"} <= set(paths)
    assert paths["14-klayout-drc/drc.klayout.json"] == "KLayout.DRC"
    drc = next(x for x in reports if x["Name"] == "drc.klayout.json")
    r = await api.client.get(f"{base}/reports/14-klayout-drc/drc.klayout.json")
    assert r.status == 200
    report = await r.read()
    assert json.loads(report)["total"] == 0  # and a count per rule, as the real flow writes
    assert (len(report), sha256(report)) == (drc["Size"], drc["Checksums"]["sha256"])

    r = await api.client.get(f"/api/v1/debug/prechecks/{run_id}")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(await r.read()), mode="r:gz") as tar:
        names = set(tar.getnames())
        root = f"precheck-{run_id}"
        assert f"{root}/output/chip_top.gds" in names
        in_steps = {f"{root}/run/{n.replace('/', '/reports/', 1)}" for n in REPORTS}
        assert in_steps <= names, sorted(names)
        assert f"{root}/run/final/metrics.json" in names
        member = tar.extractfile(f"{root}/output/chip_top.gds")
        assert member is not None and member.read() == layout

    assert doc["ContainerId"]
    await wait_gone(doc["ContainerId"])


async def test_container_is_created_as_the_contract_says(
    start_app: StartApp, sim_config: Callable[..., Config], simulator_image: str
) -> None:
    """The container has production's command and workdir, no network or mounts, no
    capabilities, limits (memory, pids, CPUs, open files, its output files), labels."""
    api = await start_app(sim_config(memory_limit="128m", pids_limit=512, cpus=0.5))
    layout = gds("chip_top", "hang")
    run_id = await api.run(layout, die_id="ABCD1234", slot="0p5x1")
    container_id = await api.wait_running(run_id)

    info = await docker_inspect(container_id)
    assert info is not None, "the running container must exist"
    _, out, _ = await docker("image", "inspect", simulator_image)
    image = json.loads(out)[0]
    config, host = info["Config"], info["HostConfig"]
    assert config["Cmd"] == [
        "python3",
        "precheck.py",
        "--input",
        "/input/input.gds",
        "--output",
        "/output/chip_top.gds",
        "--top",
        "chip_top",
        "--id",
        "ABCD1234",
        "--slot",
        "0p5x1",
        "--run-tag",
        run_id,
    ]
    assert config["Entrypoint"] == ["dev-shell"]
    assert config["WorkingDir"] == image["Config"]["WorkingDir"] == "/workspace"
    assert "COLUMNS=200" in config["Env"]
    assert config.get("NetworkDisabled") is True
    assert host["NetworkMode"] == "none"
    assert host["Memory"] == 128 << 20
    assert host["PidsLimit"] == 512
    assert "no-new-privileges" in (host["SecurityOpt"] or [])
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert host["NanoCpus"] == 500_000_000
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 16384, "Hard": 16384}]
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "256m", "max-file": "4"},
    }
    assert not host.get("Binds")
    assert info["Mounts"] == []
    assert config["Labels"]["precheck.run"] == run_id
    assert config["Labels"]["precheck.instance"] == api.instance_id
    assert info["Name"] == f"/precheck-{run_id}"
    assert info["State"]["Running"] is True
    _, out, _ = await docker("exec", container_id, "sha256sum", "/input/input.gds")
    assert out.split()[0] == sha256(layout)

    await cancel_hanging(api, run_id)


# 2 ---------------------------------------------------------------------------------------------


async def test_cob_runs_seventeen_steps(start_app: StartApp) -> None:
    """With `cob: true` the container gets `--cob` and the run passes 17 steps."""
    api = await start_app()
    run_id = await api.run(gds("chip_top", "sleep=1"), cob=True)
    container_id = await api.wait_running(run_id)
    info = await docker_inspect(container_id)
    assert info is not None
    assert "--cob" in info["Config"]["Cmd"]
    assert info["Config"]["Cmd"][-2:] == ["--run-tag", run_id]

    ended = await api.wait(run_id)
    assert ended["StatusCode"] == 0
    doc = await api.get(run_id)
    assert doc["State"]["Status"] == "completed"
    assert doc["Result"]["Passed"] is True
    assert doc["Progress"] == {"Step": 17, "Total": 17, "Name": "KLayout.WriteLayout"}
    assert doc["Config"]["Labels"]["cob"] == "true"
    assert await progress_steps(api, run_id) == [
        (n, 17, name) for n, name in enumerate(COB_STEPS, 1)
    ]


# 3 ---------------------------------------------------------------------------------------------


async def test_immediate_failure_names_the_step(start_app: StartApp) -> None:
    """A failure at KLayout.CheckSize is a design failure at that step, exit 1, no output."""
    api = await start_app()
    run_id = await api.run(gds("chip_top", "fail=KLayout.CheckSize"))
    ended = await api.wait(run_id)
    assert ended["StatusCode"] == 1
    assert ended["Status"] == "failed"
    doc = await api.get(run_id)
    assert doc["State"]["Status"] == "failed"
    assert doc["State"]["ExitCode"] == 1
    assert "the precheck failed" in doc["State"]["Error"]
    assert "slot size 1x1" in doc["State"]["Error"]  # the tool's line the flow repeats
    assert doc["Result"]["Passed"] is False
    assert doc["Result"]["Classification"] == "design"
    assert doc["Result"]["FailedStep"] == "KLayout.CheckSize"
    assert doc["Progress"]["Step"] == 3
    assert doc["Output"]["Available"] is False

    r = await api.client.get(f"/api/v1/prechecks/{run_id}/output")
    assert r.status == 404
    assert r.content_type == "application/json"
    assert "no output" in (await r.json())["message"]


# 4 ---------------------------------------------------------------------------------------------


async def test_deferred_errors_fail_but_keep_the_output(start_app: StartApp) -> None:
    """deferred=3 fails as design with 3 KLayout DRC errors, yet its output is kept and served."""
    api = await start_app()
    layout = gds("chip_top", "deferred=3")
    run_id = await api.run(layout)
    ended = await api.wait(run_id)
    assert (ended["StatusCode"], ended["Status"]) == (1, "failed")
    doc = await api.get(run_id)
    assert doc["State"]["Status"] == "failed"
    assert doc["Result"]["Passed"] is False
    assert doc["Result"]["Classification"] == "design"
    assert doc["Result"]["DeferredErrors"] == {"KLayout DRC": 3}
    assert doc["Result"]["FailedStep"] == "Checker.KLayoutDRC"
    assert doc["Result"]["Metrics"]["klayout__drc_error__count"] == 3
    assert doc["Output"]["Available"] is True
    assert doc["Output"]["Checksums"] == {"sha256": sha256(layout)}

    r = await api.client.get(f"/api/v1/prechecks/{run_id}/output")
    assert r.status == 200
    assert r.headers["X-Precheck-Passed"] == "false"
    assert await r.read() == layout

    # The step folders' report databases were read at copy-out (not the run-level copies).
    found = {f["Path"]: (f["Step"], f["Count"]) for f in doc["Result"]["Findings"]}
    assert found == {
        "06-klayout-density/density.klayout.lyrdb": ("KLayout.Density", 0),
        "08-klayout-zeroareapolygons/density.klayout.lyrdb": ("KLayout.ZeroAreaPolygons", 0),
        "10-klayout-antenna/antenna.klayout.lyrdb": ("KLayout.Antenna", 0),
        "12-magic-drc/drc.magic.lyrdb": ("Magic.DRC", 0),
        "14-klayout-drc/drc.klayout.lyrdb": ("KLayout.DRC", 3),
    }
    r = await api.client.get(f"/api/v1/prechecks/{run_id}/findings", params={"limit": "2"})
    assert r.status == 200
    [drc] = [x for x in (await r.json())["Reports"] if x["Count"]]
    # The simulator fires DE.2 and DE.4 as the real drc case does; each rule's markers paged.
    rules = drc["Rules"]
    assert sum(r["Count"] for r in rules) == 3 and [r["Rule"] for r in rules] == ["DE.2", "DE.4"]
    assert all(r["Kept"] == r["Count"] and len(r["Markers"]) <= 2 for r in rules)


async def test_a_passed_run_with_magic_drc_errors_says_so(start_app: StartApp) -> None:
    """magic=2 passes (Magic DRC counts warn, never fail), and the run says so: its warning
    line, and the Magic report's findings."""
    api = await start_app()
    run_id = await api.run(gds("chip_top", "magic=2"))
    assert (await api.wait(run_id))["Status"] == "completed"
    result = (await api.get(run_id))["Result"]
    assert result["Passed"] is True
    # As the real flow: the checker's warning, then the flow's summary of its warnings.
    warnings = result["Warnings"]
    assert (warnings["Count"], warnings["Lines"]) == (
        3,
        [
            "2 Magic DRC errors found.",
            "The following warnings were generated by the flow:",
            "[Checker.MagicDRC] 2 Magic DRC errors found.",
        ],
    )
    # The flow's own warning.log holds the checker's record; its error.log is empty: none.
    assert result["Errors"] == {"Count": 0, "Lines": [], "File": None}
    assert warnings["File"]["Path"] == "warning.log"
    r = await api.client.get(f"/api/v1/prechecks/{run_id}/reports/warning.log")
    assert (await r.text()) == "2 Magic DRC errors found.\n"
    assert warnings["File"]["Size"] == len("2 Magic DRC errors found.\n")
    found = {f["Path"]: f["Count"] for f in result["Findings"]}
    assert found["12-magic-drc/drc.magic.lyrdb"] == 2


# 5 ---------------------------------------------------------------------------------------------


async def test_out_of_memory_is_a_system_failure(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """A run past its 64m memory limit is OOM-killed: failed, system, OOMKilled; exit 1, as
    the real flow exits when the kernel kills a step's process."""
    api = await start_app(sim_config(memory_limit="64m"))
    run_id = await api.run(gds("chip_top", "oom=256"))
    ended = await api.wait(run_id)
    assert (ended["StatusCode"], ended["Status"]) == (1, "failed")
    doc = await api.get(run_id)
    assert doc["State"]["Status"] == "failed"
    assert doc["State"]["OOMKilled"] is True
    assert doc["State"]["ExitCode"] == 1
    assert "memory" in doc["State"]["Error"]
    assert doc["Result"]["Classification"] == "system"
    assert doc["Result"]["Passed"] is False


# 6 ---------------------------------------------------------------------------------------------


async def test_timeout_kills_the_run(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """A hanging run is killed after `timeout_minutes` (3 s): failed, system, `run.timed-out`."""
    api = await start_app(sim_config(timeout_minutes=0.05))
    run_id = await api.run(gds("chip_top", "hang"))
    ended = await api.wait(run_id, timeout=20)
    assert ended["Status"] == "failed"
    doc = await api.get(run_id)
    assert doc["State"]["Status"] == "failed"
    assert "timeout" in doc["State"]["Error"]
    assert doc["Result"]["Classification"] == "system"
    assert doc["State"]["OOMKilled"] is False
    timed_out = await api.events("run.timed-out", run_id)
    assert len(timed_out) == 1
    assert isinstance(timed_out[0].event, RunTimedOut)
    assert timed_out[0].event.minutes == 0.05
    started = datetime.fromisoformat(doc["State"]["StartedAt"])
    finished = datetime.fromisoformat(doc["State"]["FinishedAt"])
    assert 2.9 <= (finished - started).total_seconds() < 15
    await wait_gone(doc["ContainerId"])


# 7 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pull", ["never", "missing"])
async def test_missing_image_fails_the_run(
    start_app: StartApp, sim_config: Callable[..., Config], pull: str
) -> None:
    """An absent, unpullable image fails the run at once with an error naming it, not queued."""
    image = f"precheck-missing-{uuid.uuid4().hex[:12]}:none"
    api = await start_app(sim_config(image=image, pull=pull))
    began = time.monotonic()
    run_id = await api.run(gds("chip_top"))
    ended = await api.wait(run_id, timeout=20)
    assert time.monotonic() - began < 10
    assert ended["Status"] == "failed"
    doc = await api.get(run_id)
    assert doc["State"]["Status"] == "failed"
    assert doc["Queue"]["Position"] is None
    assert doc["ContainerId"] is None
    assert image.split(":")[0] in doc["State"]["Error"]
    assert doc["Result"]["Classification"] == "system"
    assert await api.events("run.started", run_id) == []
    assert [r.type for r in await api.events("run.failed-to-start", run_id)] == [
        "run.failed-to-start"
    ]


# 8 ---------------------------------------------------------------------------------------------


async def test_cancel_queued_then_running(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """A cancelled queued run never starts; a cancelled running one is killed, its log kept."""
    api = await start_app(sim_config(max_concurrent=1))
    first = await api.run(gds("chip_top", "hang"))
    second = await api.run(gds("chip_top"))
    container_id = await api.wait_running(first)
    await api.wait_step(first, HANG_STEP)  # see cancel_hanging
    doc = await api.get(second)
    assert doc["State"]["Status"] == "queued"
    assert doc["Queue"]["Position"] == 1

    status, body = await api.cancel(second)
    assert (status, body.get("Status")) == (200, "cancelled"), body
    doc = await api.get(second)
    assert doc["State"]["Status"] == "cancelled"
    assert doc["ContainerId"] is None
    assert doc["State"]["StartedAt"] == "0001-01-01T00:00:00Z"
    assert await api.events("run.started", second) == []

    status, body = await api.cancel(first)
    assert (status, body.get("Status")) == (200, "cancelled"), body
    doc = await api.get(first)
    assert doc["State"]["Status"] == "cancelled"
    assert doc["State"]["ExitCode"] == 137
    await wait_gone(container_id)
    logs = await api.logs(first)
    assert "Running 'KLayout.DRC' at" in "\n".join(logs["lines"])
    assert logs["lines"][0] == "None" and logs["lines"][1].startswith("PDK_ROOT = ")
    assert await api.events("run.started", second) == []


# 9 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_concurrent", [1, 2])
async def test_runs_start_first_in_first_out_within_the_limit(
    start_app: StartApp, sim_config: Callable[..., Config], max_concurrent: int
) -> None:
    """Four queued runs start in queue order and never more than `max_concurrent` run at once."""
    api = await start_app(sim_config(max_concurrent=max_concurrent))
    ids = [await api.run(gds("chip_top", "step_sleep=0.05")) for _ in range(4)]
    for run_id in ids:
        assert (await api.wait(run_id))["Status"] == "completed"

    events = await api.events()
    queued = [r.event.run_id for r in events if isinstance(r.event, RunQueued)]
    started = [r.event.run_id for r in events if isinstance(r.event, RunStarted)]
    assert queued == ids
    assert started == ids
    running: set[str | None] = set()
    most = 0
    for r in events:
        event_run_id = getattr(r.event, "run_id", None)
        if r.type == "run.started":
            running.add(event_run_id)
            most = max(most, len(running))
            assert len(running) <= max_concurrent, f"{running} at position {r.position}"
        elif r.type in ENDED:
            running.discard(event_run_id)
    assert most == max_concurrent


# 10 --------------------------------------------------------------------------------------------


async def test_logs_outlive_the_container_and_page_in_order(start_app: StartApp) -> None:
    """A 5000-line log pages back whole, in order, after the container is gone; stamps, tail."""
    api = await start_app()
    run_id = await api.run(gds("chip_top", "lines=5000"))
    assert (await api.wait(run_id))["Status"] == "completed"
    await wait_gone((await api.get(run_id))["ContainerId"])

    lines: list[str] = []
    after, pages = 0, 0
    while True:
        page = await api.logs(run_id, after_line=after, limit=1000)
        pages += 1
        if page["lines"]:
            assert page["first_line"] == after + 1
            assert page["last_line"] == after + len(page["lines"])
        lines += page["lines"]
        if not page["has_more"]:
            break
        after = page["last_line"]
    assert pages >= 5
    assert lines[0] == "None" and lines[1].startswith("PDK_ROOT = ")
    assert lines[-1] == "Precheck successfully completed."
    noise = [line for line in lines if line.startswith("noise ")]
    assert noise == [f"noise {i}" for i in range(1, 5001)]

    stamped = (await api.logs(run_id, timestamps=1, limit=5))["lines"]
    assert len(stamped) == 5
    for got, plain in zip(stamped, lines[:5], strict=True):
        assert DOCKER_STAMP.match(got), got
        assert got.split(" ", 1)[1] == plain

    tail = await api.logs(run_id, tail=3)
    assert tail["lines"] == lines[-3:]
    assert tail["last_line"] == len(lines)


# 11 --------------------------------------------------------------------------------------------


async def test_progress_events_follow_the_steps(start_app: StartApp) -> None:
    """A passing run records `run.progressed` for steps 1..16, in order, each once."""
    api = await start_app()
    run_id = await api.run(gds("chip_top"))
    assert (await api.wait(run_id))["Status"] == "completed"
    assert await progress_steps(api, run_id) == [(n, 16, name) for n, name in enumerate(STEPS, 1)]


# 12 --------------------------------------------------------------------------------------------


async def test_wait_answers_when_the_run_ends_or_times_out(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """`/wait` answers when the run ends, with its exit code; a timeout on a hang is 408 JSON."""
    api = await start_app(sim_config(max_concurrent=2))
    run_id = await api.run(gds("chip_top", "sleep=1"))
    await api.wait_running(run_id)
    assert (await api.get(run_id))["State"]["Status"] == "running"
    ended = await api.wait(run_id, timeout=30)
    answered = datetime.now(UTC)
    assert ended == {"StatusCode": 0, "Status": "completed", "Error": None}
    (finished,) = await api.events("run.outputs-stored", run_id)
    assert 0 <= (answered - finished.recorded).total_seconds() < 2.0

    hanging = await api.run(gds("chip_top", "hang"))
    await api.wait_running(hanging)
    began = time.monotonic()
    r = await api.client.post(f"/api/v1/prechecks/{hanging}/wait", params={"timeout": "0.2"})
    assert r.status == 408
    assert r.content_type == "application/json"
    assert "did not end" in (await r.json())["message"]
    assert 0.2 <= time.monotonic() - began < 5
    await cancel_hanging(api, hanging)


# 13 --------------------------------------------------------------------------------------------


async def test_stats_of_running_and_finished_runs(start_app: StartApp) -> None:
    """`/stats` gives Docker's stats of a running run's container, 409 once it has ended."""
    api = await start_app()
    run_id = await api.run(gds("chip_top", "hang"))
    await api.wait_running(run_id)
    r = await api.client.get(f"/api/v1/prechecks/{run_id}/stats")
    assert r.status == 200, await r.text()
    stats = await r.json()
    assert "memory_stats" in stats
    assert stats["memory_stats"]["limit"] == 256 << 20
    assert "pids_stats" in stats

    await cancel_hanging(api, run_id)
    r = await api.client.get(f"/api/v1/prechecks/{run_id}/stats")
    assert r.status == 409
    assert "not running" in (await r.json())["message"]


# 14 --------------------------------------------------------------------------------------------


async def test_stray_container_is_removed_at_start(
    start_app: StartApp, sim_config: Callable[..., Config], simulator_image: str
) -> None:
    """At start, a container labelled as ours with no live run is removed and recorded."""
    config = sim_config()
    first = await start_app(config)
    instance = first.instance_id
    await first.client.close()

    _, out, _ = await docker(
        "create",
        "--network",
        "none",
        "--label",
        f"precheck.instance={instance}",
        "--label",
        "precheck.run=nosuchrun",
        simulator_image,
        "python3",
        "precheck.py",
        "--help",
    )
    stray = out.strip()
    assert await docker_inspect(stray) is not None

    api = await start_app(config)
    assert api.instance_id == instance
    removed = await api.wait_event("server.stray-container-removed")
    assert isinstance(removed.event, StrayContainerRemoved)
    assert removed.event.container_id == stray
    assert await docker_inspect(stray) is None


# 15 --------------------------------------------------------------------------------------------


async def test_replay_equals_the_live_projections(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """After pass, failure, cancel and timeout, a replay of the log equals the live read models."""
    # The timeout (12 s) must leave the passing run time to pass with four containers at once
    # on a busy machine; the hanging one still meets it.
    api = await start_app(sim_config(max_concurrent=4, timeout_minutes=0.2))
    passed = await api.run(gds("chip_top"))
    failed = await api.run(gds("chip_top", "fail=KLayout.CheckSize"))
    cancelled = await api.run(gds("chip_top", "hang"))
    timed_out = await api.run(gds("chip_top", "hang"))
    await cancel_hanging(api, cancelled)
    results = {r: (await api.wait(r, timeout=40))["Status"] for r in (passed, failed, timed_out)}
    assert results == {passed: "completed", failed: "failed", timed_out: "failed"}
    assert await api.events("run.timed-out", timed_out)

    live = api.app[keys.PROJECTIONS]
    replayed = await Projections.replay(api.store)
    assert replayed.position == live.position == api.store.head
    assert replayed.instance_id == live.instance_id
    assert list(replayed.runs.by_id) == list(live.runs.by_id)
    assert replayed.runs.by_id == live.runs.by_id
    assert replayed.uploads.by_id == live.uploads.by_id
    assert replayed.queue.queued() == live.queue.queued() == []
    assert replayed.queue.running == live.queue.running == set()
    statuses = {r.id: r.status for r in live.runs.by_id.values()}
    assert statuses[cancelled] == "cancelled"
