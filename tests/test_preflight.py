"""Pre-flight on real servers with real layouts made by the layout library: each upload is read
in a child process, and a run of a layout the precheck's first steps would fail is refused."""

from __future__ import annotations

import asyncio
import gzip
import os
import pwd
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import SLOTS, Config
from precheck.domain.commands import RecordInspection
from precheck.domain.preflight import SLOT_SIZES
from precheck.events.types import UploadInspected
from precheck.layout.reading import Limits, ReadFailed, read_layout
from precheck.service.layout_inspector import SERVER
from precheck.web import keys
from tests.layouts import gds
from tests.real_layouts import die, write_big_gds, write_big_oasis

Client = TestClient[web.Request, web.Application]
ON = {"enabled": True}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, make_config: Callable[..., Config]) -> Client:
    """A server that reads every upload for pre-flight (and starts no containers)."""
    return await aiohttp_client(create_app(make_config(preflight=ON), run_containers=False))


async def upload(client: Client, body: bytes, name: str = "chip.gds") -> str:
    """Upload `body`; its id."""
    form = aiohttp.FormData()
    form.add_field("file", body, filename=name)
    r = await client.post("/api/v1/uploads", data=form)
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return str(doc["Id"])


async def read_upload(client: Client, upload_id: str, seconds: float = 30) -> dict[str, Any]:
    """The upload's document once its layout is no longer `pending`."""
    deadline = time.monotonic() + seconds
    while True:
        doc: dict[str, Any] = await (await client.get(f"/api/v1/uploads/{upload_id}")).json()
        if doc["Layout"]["Status"] != "pending" or time.monotonic() > deadline:
            return doc
        await asyncio.sleep(0.02)


async def queue(client: Client, upload_id: str, **fields: object) -> aiohttp.ClientResponse:
    """POST /api/v1/prechecks for `upload_id` (top cell chip_top unless given)."""
    return await client.post(
        "/api/v1/prechecks", json={"upload_id": upload_id, "top_cell": "chip_top", **fields}
    )


async def refused_codes(client: Client, layout: bytes, **fields: object) -> list[str]:
    """The codes of the checks a run of `layout` is refused for (422), once it was read."""
    upload_id = await upload(client, layout)
    assert (await read_upload(client, upload_id))["Layout"]["Status"] == "done"
    r = await queue(client, upload_id, **fields)
    body = await r.json()
    assert r.status == 422, body
    assert body["message"] == body["detail"] and "pre-flight" in body["message"]
    assert all(set(c) == {"code", "message", "expected", "found"} for c in body["checks"])
    assert client.app[keys.PROJECTIONS].runs.by_id == {}  # nothing was queued
    return [c["code"] for c in body["checks"]]


# A die of the right size, in every format and slot -----------------------------------------------


@pytest.mark.parametrize("fmt", ["gds", "gds.gz", "oas"])
@pytest.mark.parametrize("slot", SLOTS)
async def test_a_slot_sized_die_is_read_and_queued(client: Client, slot: str, fmt: str) -> None:
    """A die exactly the slot's size at the origin is read (format, dbu, top cell and its box in
    µm, layers, cells, the slot it fits) and a run of it queues with pre-flight passed."""
    upload_id = await upload(client, die(slot, fmt=fmt), f"chip.{fmt}")
    layout = (await read_upload(client, upload_id))["Layout"]
    width, height = SLOT_SIZES[slot]
    assert layout == {
        "Status": "done",
        "Format": fmt,
        "Dbu": 0.001,
        "TopCells": [
            {
                "Name": "chip_top",
                "BBox": {"Left": 0, "Bottom": 0, "Right": width, "Top": height},
            }
        ],
        "TopCellCount": 1,
        "Layers": [[1, 0], [2, 0], [3, 5]],
        "Cells": 2,
        "Slot": slot,
        "Error": "",
    }
    r = await queue(client, upload_id, slot=slot)
    assert r.status == 200, await r.text()
    run = await r.json()
    assert run["Preflight"] == {
        "Status": "passed",
        "Mode": "enforce",
        "Passed": True,
        "Checks": [],
        "Reason": "",
    }


# Each rule, broken alone -------------------------------------------------------------------------


async def test_one_micron_too_wide_is_refused(client: Client) -> None:
    """A die 1 µm wider than its slot is refused with the size check, saying both sizes."""
    upload_id = await upload(client, die("0p5x1", grow=(1, 0)))
    await read_upload(client, upload_id)
    r = await queue(client, upload_id, slot="0p5x1")
    assert r.status == 422
    [check] = (await r.json())["checks"]
    assert check["code"] == "size"
    assert (check["expected"], check["found"]) == ("1936 x 5122", "1937 x 5122")
    assert "1937 x 5122" in check["message"]


async def test_a_die_off_the_origin_is_refused(client: Client) -> None:
    """A die of the right size whose lower left corner is not (0, 0) fails the origin check."""
    codes = await refused_codes(client, die("1x1", origin=(-5, 12.5)))
    assert codes == ["origin"]


async def test_two_top_cells_are_refused(client: Client) -> None:
    """A second top cell fails the one-top-cell check, though the named one is a good die."""
    upload_id = await upload(client, die("1x1", other_tops=("stray",)))
    layout = (await read_upload(client, upload_id))["Layout"]
    assert [c["Name"] for c in layout["TopCells"]] == ["chip_top", "stray"]
    assert layout["Slot"] is None  # no single die to match a slot
    r = await queue(client, upload_id)
    checks = (await r.json())["checks"]
    assert r.status == 422
    assert [(c["code"], c["found"]) for c in checks] == [("single_top_cell", "2")]


async def test_a_dbu_of_half_a_nanometre_is_refused(client: Client) -> None:
    """A database unit of 0.0005 µm fails the dbu check (the die is still the right size)."""
    upload_id = await upload(client, die("1x1", dbu=0.0005))
    assert (await read_upload(client, upload_id))["Layout"]["Dbu"] == 0.0005
    r = await queue(client, upload_id)
    [check] = (await r.json())["checks"]
    assert (check["code"], check["expected"], check["found"]) == ("dbu", "0.001", "0.0005")


async def test_a_wrong_top_cell_name_and_slot_are_refused_together(client: Client) -> None:
    """Every failed check is listed: no top cell of that name, and the only die's size."""
    codes = await refused_codes(client, die("1x1"), top_cell="other_top", slot="0p5x0p5")
    assert codes == ["top_cell", "size"]


async def test_warn_queues_and_records_the_failures(client: Client) -> None:
    """With `"preflight": "warn"` a failing layout queues; the run keeps what failed, and a
    re-run of it is queued the same way."""
    upload_id = await upload(client, die("1x1", grow=(0, 1)))
    await read_upload(client, upload_id)
    r = await queue(client, upload_id, preflight="warn")
    assert r.status == 200, await r.text()
    run = await r.json()
    assert run["Preflight"]["Status"] == "failed"
    assert run["Preflight"]["Mode"] == "warn"
    assert run["Preflight"]["Passed"] is False
    assert [c["code"] for c in run["Preflight"]["Checks"]] == ["size"]
    again = await client.post(f"/api/v1/prechecks/{run['Id']}/rerun")
    assert again.status == 200, await again.text()
    assert (await again.json())["Preflight"]["Mode"] == "warn"
    assert (await queue(client, upload_id, preflight="never")).status == 400


# Layouts that cannot be read, or not yet ---------------------------------------------------------


async def test_a_reading_error_names_the_file_but_not_the_storage_folder(client: Client) -> None:
    """The reader's message names the upload's file without the server's storage path, in the
    upload's document and in the log."""
    whole = die("1x1")
    upload_id = await upload(client, whole[: len(whole) // 2])
    error = (await read_upload(client, upload_id))["Layout"]["Error"]
    storage = client.app[keys.STORAGE]
    assert error.startswith("not a readable layout: ") and "input.gds" in error
    folders = {str(storage.root), str(storage.root.resolve()), "uploads/", upload_id}
    assert not [f for f in folders if f in error], error
    logged = await (await client.get("/api/v1/events?type=upload.inspection-failed")).text()
    assert not [f for f in folders - {upload_id} if f in logged]


async def test_a_truncated_file_fails_reading_and_still_queues(client: Client) -> None:
    """A GDS cut short is recorded as inspection failed with the reader's reason; a run of it
    queues (the precheck itself will say more), recording that pre-flight could not run."""
    whole = die("1x1")
    upload_id = await upload(client, whole[: len(whole) // 2])
    layout = (await read_upload(client, upload_id))["Layout"]
    assert layout["Status"] == "failed"
    assert layout["Error"].startswith("not a readable layout: ")
    assert layout["TopCells"] == [] and layout["Dbu"] is None
    r = await queue(client, upload_id, preflight="warn")
    assert r.status == 200
    pre = (await r.json())["Preflight"]
    assert (pre["Status"], pre["Checks"]) == ("not-run", [])
    assert pre["Reason"].startswith("the layout could not be read: not a readable layout")
    assert (await queue(client, upload_id)).status == 200  # enforce queues it too
    types = [r.type for r in await client.app[keys.STORE].read()]
    assert "upload.inspection-failed" in types


async def test_a_layout_not_read_yet_queues(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """With reading off, an upload stays `pending` and its runs queue without pre-flight."""
    client = await aiohttp_client(create_app(make_config(), run_containers=False))
    upload_id = await upload(client, die("1x1", grow=(5, 5)))
    assert (await read_upload(client, upload_id, seconds=0.2))["Layout"]["Status"] == "pending"
    r = await queue(client, upload_id)
    assert r.status == 200
    pre = (await r.json())["Preflight"]
    assert (pre["Status"], pre["Reason"]) == ("not-run", "the layout has not been read yet")


async def test_pending_uploads_are_read_after_a_restart(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """An upload still `pending` when the server stopped is read when it starts again."""
    first = await aiohttp_client(create_app(make_config(), run_containers=False))
    upload_id = await upload(first, die("1x0p5"))
    await first.close()
    second = await aiohttp_client(create_app(make_config(preflight=ON), run_containers=False))
    layout = (await read_upload(second, upload_id))["Layout"]
    assert (layout["Status"], layout["Slot"]) == ("done", "1x0p5")


async def test_a_restart_shows_the_same_readings_without_reading_again(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """Readings are rebuilt from the log on restart: the same documents, and no reading again,
    also for a new upload of bytes read before the restart."""
    config = make_config(preflight=ON)
    first = await aiohttp_client(create_app(config, run_containers=False))
    good, bad = await upload(first, die("1x1", fmt="oas")), await upload(first, b"\0\6\0\2" * 9)
    before = [await read_upload(first, i) for i in (good, bad)]
    assert [d["Layout"]["Status"] for d in before] == ["done", "failed"]
    await first.close()
    second = await aiohttp_client(create_app(config, run_containers=False))
    assert [await read_upload(second, i) for i in (good, bad)] == before
    again = await upload(second, die("1x1", fmt="oas"))
    assert (await read_upload(second, again))["Layout"] == before[0]["Layout"]
    assert second.app[keys.INSPECTOR].reads == 0


# The preview route -------------------------------------------------------------------------------


async def test_the_preflight_route_answers_without_creating_anything(client: Client) -> None:
    """GET .../preflight lists the same failures a run would get, and appends nothing."""
    upload_id = await upload(client, die("0p5x0p5"))
    await read_upload(client, upload_id)
    head = client.app[keys.STORE].head
    url = f"/api/v1/uploads/{upload_id}/preflight"
    ok = await (await client.get(url, params={"top_cell": "chip_top", "slot": "0p5x0p5"})).json()
    assert ok == {"Status": "done", "Checks": [], "Passed": True, "Error": ""}
    bad = await (await client.get(url, params={"top_cell": "chip_top", "slot": "1x1"})).json()
    assert (bad["Passed"], [c["code"] for c in bad["Checks"]]) == (False, ["size"])
    r = await queue(client, upload_id, slot="1x1")
    assert (await r.json())["checks"] == bad["Checks"]
    assert (await client.get(url, params={"slot": "1x1"})).status == 400  # top_cell required
    assert (await client.get(url, params={"top_cell": "a", "slot": "2x2"})).status == 400
    assert (await client.get("/api/v1/uploads/nope/preflight?top_cell=a")).status == 404
    assert client.app[keys.STORE].head == head


async def test_the_preflight_route_of_an_unreadable_layout(client: Client) -> None:
    """For a layout that could not be read the route says so, with no verdict."""
    upload_id = await upload(client, gds("chip_top")[:40])
    await read_upload(client, upload_id)
    doc = await (
        await client.get(f"/api/v1/uploads/{upload_id}/preflight?top_cell=chip_top")
    ).json()
    assert (doc["Status"], doc["Passed"], doc["Checks"]) == ("failed", None, [])
    assert doc["Error"]


# Once per content --------------------------------------------------------------------------------


async def test_the_same_bytes_are_read_once(client: Client) -> None:
    """A second upload of the same bytes gets the same facts without a second reading, and the
    event names the upload whose reading it reuses."""
    layout = die("0p5x1", fmt="oas")
    first = await upload(client, layout)
    first_doc = await read_upload(client, first)
    second = await upload(client, layout, "again.oas")
    second_doc = await read_upload(client, second)
    assert second_doc["Layout"] == first_doc["Layout"]
    assert client.app[keys.INSPECTOR].reads == 1
    events = [
        r.event for r in await client.app[keys.STORE].read() if isinstance(r.event, UploadInspected)
    ]
    assert [(e.upload_id, e.reused_from) for e in events] == [(first, None), (second, first)]
    third = await upload(client, die("0p5x1", fmt="gds"))
    await read_upload(client, third)
    assert client.app[keys.INSPECTOR].reads == 2  # other bytes: read


USERS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789"}


def as_user(name: str) -> dict[str, str]:
    """The headers of a request made with `name`'s key."""
    return {"Authorization": f"Bearer {USERS[name]}"}


@pytest.fixture
async def two_users(aiohttp_client: AiohttpClient, make_config: Callable[..., Config]) -> Client:
    """A server reading layouts, with keys required: users alice and bob."""
    api_keys = [{"name": n, "key": k, "role": "user"} for n, k in USERS.items()]
    config = make_config(preflight=ON, auth={"required": True, "api_keys": api_keys})
    return await aiohttp_client(create_app(config, run_containers=False))


async def user_upload(client: Client, who: str, body: bytes) -> str:
    """Upload `body` as `who` and wait for its reading; its id."""
    form = aiohttp.FormData()
    form.add_field("file", body, filename="chip.oas")
    r = await client.post("/api/v1/uploads", data=form, headers=as_user(who))
    assert r.status == 200, await r.text()
    upload_id = str((await r.json())["Id"])
    deadline = time.monotonic() + 30
    while client.app[keys.PROJECTIONS].uploads.by_id[upload_id].layout_status == "pending":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    return upload_id


async def test_another_owners_upload_of_the_same_bytes_is_read_again(two_users: Client) -> None:
    """Bob's upload of the bytes alice uploaded is read again, and nothing bob sees (his feed, as
    a page or a stream, and his upload's document) names alice's upload; alice's own second
    upload of them reuses her reading."""
    layout = die("0p5x1", fmt="oas")
    alices = await user_upload(two_users, "alice", layout)
    bobs = await user_upload(two_users, "bob", layout)
    assert two_users.app[keys.INSPECTOR].reads == 2
    again = await user_upload(two_users, "alice", layout)
    assert two_users.app[keys.INSPECTOR].reads == 2
    events = {
        r.event.upload_id: r.event.reused_from
        for r in await two_users.app[keys.STORE].read()
        if isinstance(r.event, UploadInspected)
    }
    assert events == {alices: None, bobs: None, again: alices}
    seen = [
        await (await two_users.get("/api/v1/events", headers=as_user("bob"))).text(),
        await (await two_users.get(f"/api/v1/uploads/{bobs}", headers=as_user("bob"))).text(),
    ]
    last = max(
        r.position for r in await two_users.app[keys.STORE].read() if r.stream == f"upload-{bobs}"
    )
    async with two_users.get(f"/api/v1/events?follow=1&access_token={USERS['bob']}") as stream:
        text = ""
        while f"id: {last}\n" not in text:
            text += (await stream.content.readany()).decode()
    seen.append(text)
    assert all(bobs in s for s in seen) and not any(alices in s for s in seen)


async def test_a_users_feed_hides_an_older_rows_reuse_across_owners(
    two_users: Client,
) -> None:
    """A row written before reuse was kept within one owner (bob's upload reusing alice's
    reading) is shown to bob without alice's upload id; the row itself is unchanged."""
    alices = await user_upload(two_users, "alice", gds("chip_top")[:40])
    form = aiohttp.FormData()
    form.add_field("file", gds("chip_top")[:41], filename="chip.gds")
    app = two_users.app
    app[keys.INSPECTOR].reader = _never_read
    r = await two_users.post("/api/v1/uploads", data=form, headers=as_user("bob"))
    bobs = str((await r.json())["Id"])
    reading = UploadInspected(bobs, "gds", 0.001, (), 0, (), 0, app[keys.CLOCK](), alices)
    await app[keys.HANDLER].handle(RecordInspection(reading), SERVER)
    feed = await (await two_users.get("/api/v1/events", headers=as_user("bob"))).json()
    shown = [e["data"] for e in feed["events"] if e["type"] == "upload.inspected"]
    assert shown and shown[0]["upload_id"] == bobs and shown[0]["reused_from"] is None
    stored = [r.event for r in await app[keys.STORE].read() if r.event == reading]
    assert stored == [reading]


async def _never_read(path: Path, limits: Limits) -> Any:
    """A reader that never answers: the upload stays pending for a test to record its reading."""
    await asyncio.Event().wait()


async def test_uploads_of_the_same_bytes_at_once_are_read_once(client: Client) -> None:
    """Five uploads of the same bytes, sent together, cause one reading between them."""
    layout = die("1x1", fmt="gds.gz")
    ids = await asyncio.gather(*(upload(client, layout) for _ in range(5)))
    docs = [await read_upload(client, i) for i in ids]
    assert {d["Layout"]["Status"] for d in docs} == {"done"}
    assert client.app[keys.INSPECTOR].reads == 1


# A big layout does not hold the server up --------------------------------------------------------


async def test_a_big_layout_is_read_while_requests_answer_quickly(
    client: Client, tmp_path: Path
) -> None:
    """While a layout that takes seconds to read is read, other requests answer in under 50 ms."""
    path = tmp_path / "big.oas"
    write_big_oasis(path, 120 << 20)
    r = await client.post(
        "/api/v1/uploads?name=big.oas",
        data=path.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status == 200
    upload_id = (await r.json())["Id"]
    path.unlink()
    slowest, answered, started = 0.0, 0, time.monotonic()
    while True:
        t = time.monotonic()
        doc = await (await client.get(f"/api/v1/uploads/{upload_id}")).json()
        assert (await client.get("/api/v1/queue")).status == 200
        slowest = max(slowest, time.monotonic() - t)
        answered += 1
        if doc["Layout"]["Status"] != "pending":
            break
        await asyncio.sleep(0.01)
    took = time.monotonic() - started
    assert doc["Layout"]["Status"] == "done", doc["Layout"]
    assert doc["Layout"]["TopCells"][0]["Name"] == "chip_top"
    assert took > 1.0, f"the reading took only {took:.2f} s: not a test of concurrency"
    assert answered > 20
    assert slowest < 0.05, f"a request took {slowest * 1000:.0f} ms during the reading"


# The reader's limits, on the reader itself -------------------------------------------------------


def _reader_processes() -> list[int]:
    """The layout readers running now (children of this process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")
        )
        if ppid == os.getpid() and any(a.endswith(b"layout/inspect.py") for a in argv):
            found.append(int(entry.name))
    return found


async def test_the_reader_run_by_root_reads_as_nobody_outside_the_storage(tmp_path: Path) -> None:
    """Run by root, the child reading a layout is `nobody` with no groups, works in a folder of
    its own outside the storage folder, holds no path into it, and its folder is gone after."""
    if os.geteuid() != 0:
        why = "the reader gives up root only when run as root"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI runs as root: no test skips there
        pytest.skip(why)
    storage = tmp_path / "data" / "uploads" / "u1"
    storage.mkdir(parents=True)
    tmp_path.joinpath("data").chmod(0o700)
    path = storage / "input.gds"
    write_big_gds(path, 120 << 20)
    path.chmod(0o600)
    nobody = pwd.getpwnam("nobody")
    reading = asyncio.ensure_future(read_layout(path, Limits(max_seconds=60, max_memory_mb=4096)))
    seen: dict[str, object] = {}
    while not reading.done() and "uid" not in seen:
        for pid in _reader_processes():
            proc = Path(f"/proc/{pid}")
            try:
                status = (proc / "status").read_text()
                uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
                if uids.split()[1:] != [str(nobody.pw_uid)] * 4:
                    continue  # not yet given up (it loads the reader first), or never
                groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
                cwd = os.readlink(proc / "cwd")
                links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            except (OSError, StopIteration):
                continue
            seen.update(uid=uids, groups=groups.split()[1:], cwd=cwd, links=links)
        await asyncio.sleep(0.005)
    facts = await reading
    assert facts.top_cells[0].name == "chip_top"
    assert seen, "the reader was never seen as nobody"
    assert seen["groups"] == []
    cwd = str(seen["cwd"])
    assert not cwd.startswith(str(tmp_path)) and Path(cwd).name.startswith("precheck-reading-")
    # stdin is the open upload: the one way to it, and no path to open anything beside it
    assert [link for link in seen["links"] if str(tmp_path) in link] == [str(path)]  # type: ignore[attr-defined]
    assert not await asyncio.to_thread(Path(cwd).exists)


async def test_the_reader_is_stopped_past_its_time(tmp_path: Path) -> None:
    """A reading past max_seconds is killed and reported as such, promptly."""
    path = tmp_path / "big.gds"
    write_big_gds(path, 200 << 20)
    started = time.monotonic()
    with pytest.raises(ReadFailed, match=r"longer than 0.3 s \(preflight.max_seconds\)"):
        await read_layout(path, Limits(max_seconds=0.3, max_memory_mb=4096))
    assert time.monotonic() - started < 2


async def test_the_reader_is_held_to_its_memory(tmp_path: Path) -> None:
    """A layout needing more memory than max_memory_mb fails as past that limit."""
    path = tmp_path / "big.oas"
    write_big_oasis(path, 60 << 20)
    facts = await read_layout(path, Limits(max_seconds=60, max_memory_mb=4096))
    assert facts.max_rss_kib > 160 << 10  # it does need more than the limit below
    with pytest.raises(ReadFailed, match=r"more memory than preflight.max_memory_mb \(256 MB\)"):
        await read_layout(path, Limits(max_seconds=60, max_memory_mb=256))


async def test_the_reader_reads_gzip_by_its_content(tmp_path: Path) -> None:
    """A gzip-compressed GDS is read whatever its name, and reported as gds.gz."""
    path = tmp_path / "input.bin"
    path.write_bytes(gzip.compress(die("1x1")))
    facts = await read_layout(path, Limits())
    assert (facts.format, facts.top_cell_count, facts.cells) == ("gds.gz", 1, 2)
    assert facts.top_cells[0].bbox == (0, 0, 3932, 5122)
