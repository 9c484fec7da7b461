"""`/api/v1/prechecks` and `/api/v1/queue` on a real socket: queue, list, refuse, cancel."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.clock import Clock, utcnow
from precheck.config import Config
from precheck.events.types import Metadata, OutputFile, RunExited, RunOutputsStored, RunStarted
from precheck.runner.copy_out import RUN_FOLDER
from precheck.storage.output_lines import OutputLine, blocks_of
from precheck.web import keys
from tests.layouts import gds, oasis

Client = TestClient[web.Request, web.Application]


def api_app(config: Config, clock: Clock = utcnow) -> web.Application:
    """The app without a supervisor: these tests are about the API, so runs stay queued."""
    return create_app(config, clock, run_containers=False)


ZERO = "0001-01-01T00:00:00Z"
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """A clock that moves one second each time it is read, so every record has its own time."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, config: Config) -> Client:
    return await aiohttp_client(api_app(config, clock=FakeClock()))


async def upload(
    client: Client, body: bytes | None = None, name: str = "chip.gds"
) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("file", body or gds(), filename=name)
    r = await client.post("/api/v1/uploads", data=form)
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


async def create(client: Client, upload_id: str, **fields: object) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/prechecks", json={"upload_id": upload_id, "top_cell": "chip_top", **fields}
    )
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


async def test_create_run_has_docker_like_shape(client: Client) -> None:
    """A new run answers 200 in the Docker-like shape, queued, with the upload's checksum."""
    up = await upload(client, oasis("my_top"), "my.oas")
    r = await client.post(
        "/api/v1/prechecks",
        json={
            "upload_id": up["Id"],
            "top_cell": "my_top",
            "die_id": "ABCD1234",
            "slot": "0p5x1",
            "cob": True,
        },
    )
    assert r.status == 200, await r.text()
    run = await r.json()
    assert isinstance(run["Id"], str) and run["Id"]
    assert run["Name"] == f"precheck-{run['Id']}"
    assert datetime.fromisoformat(run["Created"]).tzinfo is not None
    state = run["State"]
    assert state["Status"] == "queued"
    assert state["Running"] is False
    assert state["ExitCode"] == 0
    assert state["Error"] == ""
    assert state["StartedAt"] == ZERO
    assert state["FinishedAt"] == ZERO
    assert run["Config"]["Labels"] == {
        "upload_id": up["Id"],
        "top_cell": "my_top",
        "die_id": "ABCD1234",
        "slot": "0p5x1",
        "cob": "true",
    }
    cmd = run["Config"]["Cmd"]
    i = cmd.index("--run-tag")
    assert cmd[i + 1] == run["Id"]
    assert cmd[cmd.index("--top") + 1] == "my_top"
    assert cmd[cmd.index("--id") + 1] == "ABCD1234"
    assert cmd[cmd.index("--slot") + 1] == "0p5x1"
    assert "--cob" in cmd
    assert run["Queue"] == {"Position": 1, "Length": 1, "Waiting": None}
    assert run["Input"]["Checksums"]["sha256"] == up["Checksums"]["sha256"]
    assert run["Input"]["Checksums"]["sha256"] == hashlib.sha256(oasis("my_top")).hexdigest()
    assert run["Input"]["Size"] == up["Size"]
    assert run["Output"]["Available"] is False
    # The same document comes back on a read, and the upload lists the run.
    assert await (await client.get(f"/api/v1/prechecks/{run['Id']}")).json() == run
    assert (await (await client.get(f"/api/v1/uploads/{up['Id']}")).json())["Runs"] == [run["Id"]]


async def test_defaults_for_die_id_and_slot(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """Without die_id and slot a run gets FFFFFFFF and the configured default slot."""
    client = await aiohttp_client(api_app(make_config(defaults={"slot": "0p5x0p5"})))
    up = await upload(client)
    run = await create(client, up["Id"])
    labels = run["Config"]["Labels"]
    assert labels["die_id"] == "FFFFFFFF"
    assert labels["slot"] == "0p5x0p5"
    assert labels["cob"] == "false"
    assert "--cob" not in run["Config"]["Cmd"]


async def test_default_slot_without_config_is_1x1(client: Client) -> None:
    """With no `[defaults]` table the slot is 1x1."""
    up = await upload(client)
    run = await create(client, up["Id"])
    assert run["Config"]["Labels"]["slot"] == "1x1"
    assert run["Config"]["Cmd"][run["Config"]["Cmd"].index("--slot") + 1] == "1x1"


async def positions(client: Client, ids: list[str]) -> list[dict[str, Any]]:
    return [(await (await client.get(f"/api/v1/prechecks/{i}")).json())["Queue"] for i in ids]


async def test_fifo_positions_and_cancel_of_the_first(client: Client) -> None:
    """Three runs take places 1, 2, 3; cancelling the first moves the others up."""
    up = await upload(client)
    runs = [await create(client, up["Id"]) for _ in range(3)]
    ids = [r["Id"] for r in runs]
    assert [r["Queue"]["Position"] for r in runs] == [1, 2, 3]
    assert await positions(client, ids) == [
        {"Position": p, "Length": 3, "Waiting": None} for p in (1, 2, 3)
    ]
    q = await (await client.get("/api/v1/queue")).json()
    assert q["queued"] == 3
    assert q["order"] == ids

    r = await client.delete(f"/api/v1/prechecks/{ids[0]}")
    assert r.status == 200
    assert await positions(client, ids) == [
        {"Position": None, "Length": 2, "Waiting": None},
        {"Position": 1, "Length": 2, "Waiting": None},
        {"Position": 2, "Length": 2, "Waiting": None},
    ]
    q = await (await client.get("/api/v1/queue")).json()
    assert q["order"] == ids[1:]

    # A new run joins the end, behind the earlier ones.
    late = await create(client, up["Id"])
    assert late["Queue"] == {"Position": 3, "Length": 3, "Waiting": None}


async def test_queue_endpoint(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """`GET /api/v1/queue` gives queued, running and max_concurrent."""
    client = await aiohttp_client(api_app(make_config(server={"max_concurrent": 3})))
    r = await client.get("/api/v1/queue")
    assert r.status == 200
    assert await r.json() == {"queued": 0, "running": 0, "max_concurrent": 3, "order": []}
    up = await upload(client)
    await create(client, up["Id"])
    await create(client, up["Id"])
    q = await (await client.get("/api/v1/queue")).json()
    assert (q["queued"], q["running"], q["max_concurrent"]) == (2, 0, 3)


async def test_list_with_status_filter(client: Client) -> None:
    """The list is newest first; repeated `status` values filter by any of them."""
    up = await upload(client)
    a, b, c = [await create(client, up["Id"]) for _ in range(3)]
    assert (await client.delete(f"/api/v1/prechecks/{b['Id']}")).status == 200

    async def listed(query: str = "") -> list[str]:
        r = await client.get(f"/api/v1/prechecks{query}")
        assert r.status == 200
        return [run["Id"] for run in await r.json()]

    assert await listed() == [c["Id"], b["Id"], a["Id"]]
    assert await listed("?status=queued") == [c["Id"], a["Id"]]
    assert await listed("?status=cancelled") == [b["Id"]]
    assert await listed("?status=queued&status=cancelled") == [c["Id"], b["Id"], a["Id"]]
    assert await listed("?status=running") == []
    assert await listed("?status=completed&status=failed") == []
    full = await (await client.get("/api/v1/prechecks")).json()
    assert full[0] == await (await client.get(f"/api/v1/prechecks/{c['Id']}")).json()


async def test_list_with_unknown_status_is_400(client: Client) -> None:
    """An unknown status value is refused, naming it."""
    r = await client.get("/api/v1/prechecks?status=queued&status=sleeping")
    assert r.status == 400
    assert "sleeping" in (await r.json())["message"]


def bad_bodies(upload_id: str) -> list[tuple[str, object, int]]:
    """(why, body, status); a body of bytes is sent as it is."""
    ok = {"upload_id": upload_id, "top_cell": "chip_top"}
    return [
        ("upload_id not a string", {"upload_id": 1, "top_cell": "chip_top"}, 400),
        ("top_cell not a string", {**ok, "top_cell": ["chip_top"]}, 400),
        ("cob not a bool", {**ok, "cob": "yes"}, 400),
        ("cob as a number", {**ok, "cob": 1}, 400),
        ("die_id as a number", {**ok, "die_id": 12345678}, 400),
        ("slot as null", {**ok, "slot": None}, 200),  # null means: use the default
        ("missing upload_id", {"top_cell": "chip_top"}, 400),
        ("missing top_cell", {"upload_id": upload_id}, 400),
        ("unknown field", {**ok, "priority": 1}, 400),
        ("not JSON", b"{upload_id: ", 400),
        ("not UTF-8", b"\xff\xfe\x00", 400),
        ("empty body", b"", 400),
        ("a list", [ok], 400),
        ("a string", "chip_top", 400),
        ("null", None, 400),
        ("die_id too short", {**ok, "die_id": "ABC"}, 400),
        ("die_id too long", {**ok, "die_id": "ABCDEF123"}, 400),
        ("die_id not alphanumeric", {**ok, "die_id": "ABCD-123"}, 400),
        ("slot unknown", {**ok, "slot": "2x2"}, 400),
        ("top_cell a path", {**ok, "top_cell": "../chip"}, 400),
        ("top_cell with a space", {**ok, "top_cell": "chip top"}, 400),
        ("top_cell empty", {**ok, "top_cell": ""}, 400),
        ("top_cell starting with a digit", {**ok, "top_cell": "1chip"}, 400),
        ("top_cell too long", {**ok, "top_cell": "a" * 129}, 400),
        ("unknown upload", {**ok, "upload_id": "no-such-upload"}, 404),
    ]


async def test_bad_create_requests_are_refused_without_events(client: Client) -> None:
    """Every malformed or impossible run request gets a 4xx JSON message and appends nothing."""
    up = await upload(client)
    store = client.app[keys.STORE]
    for why, body, status in bad_bodies(up["Id"]):
        head = store.head
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await client.post(
            "/api/v1/prechecks", data=data, headers={"Content-Type": "application/json"}
        )
        assert r.status == status, f"{why}: {r.status} {await r.text()}"
        doc = await r.json()
        if status == 200:
            assert doc["Config"]["Labels"]["slot"] == "1x1"
            continue
        assert isinstance(doc.get("message"), str) and doc["message"], why
        assert store.head == head, why
    r = await client.post("/api/v1/prechecks", json={"upload_id": "gone", "top_cell": "x"})
    assert await r.json() == {"message": "No such upload: gone", "detail": "No such upload: gone"}


async def test_type_errors_name_the_field(client: Client) -> None:
    """A wrongly typed field is named in the message."""
    up = await upload(client)
    r = await client.post(
        "/api/v1/prechecks", json={"upload_id": up["Id"], "top_cell": "t", "cob": "yes"}
    )
    assert "cob" in (await r.json())["message"]
    r = await client.post("/api/v1/prechecks", json={"upload_id": 1, "top_cell": "t"})
    assert "upload_id" in (await r.json())["message"]
    r = await client.post("/api/v1/prechecks", json={"upload_id": up["Id"]})
    assert "top_cell" in (await r.json())["message"]
    r = await client.post(
        "/api/v1/prechecks", json={"upload_id": up["Id"], "top_cell": "t", "x": 1}
    )
    assert "x" in (await r.json())["message"]


async def test_body_over_one_megabyte_is_413(client: Client) -> None:
    """A JSON body far larger than any run request is refused as too large."""
    up = await upload(client)
    body = json.dumps({"upload_id": up["Id"], "top_cell": "t", "pad": "x" * (2 << 20)})
    r = await client.post(
        "/api/v1/prechecks", data=body, headers={"Content-Type": "application/json"}
    )
    assert r.status == 413
    assert "message" in await r.json()


async def test_get_unknown_run_is_404(client: Client) -> None:
    """An unknown run id answers 404 with the plan's message."""
    r = await client.get("/api/v1/prechecks/nope")
    assert r.status == 404
    assert await r.json() == {
        "message": "No such precheck: nope",
        "detail": "No such precheck: nope",
    }


async def test_cancel_queued_run(client: Client) -> None:
    """Cancelling a queued run answers 200 and marks it cancelled; again is 409; unknown is 404."""
    up = await upload(client)
    run = await create(client, up["Id"])
    r = await client.delete(f"/api/v1/prechecks/{run['Id']}")
    assert r.status == 200
    body = await r.json()
    assert body["Status"] == "cancelled"
    assert body["Id"] == run["Id"]
    assert "message" in body
    doc = await (await client.get(f"/api/v1/prechecks/{run['Id']}")).json()
    assert doc["State"]["Status"] == "cancelled"
    assert doc["State"]["Running"] is False
    assert doc["State"]["FinishedAt"] != ZERO
    assert doc["Queue"] == {"Position": None, "Length": 0, "Waiting": None}

    head = client.app[keys.STORE].head
    r = await client.delete(f"/api/v1/prechecks/{run['Id']}")
    assert r.status == 409
    assert "cancelled" in (await r.json())["message"]
    assert client.app[keys.STORE].head == head

    r = await client.delete("/api/v1/prechecks/unknown-run")
    assert r.status == 404
    assert await r.json() == {
        "message": "No such precheck: unknown-run",
        "detail": "No such precheck: unknown-run",
    }
    assert client.app[keys.STORE].head == head
    # The server's own start event aside, the log holds exactly what the requests did.
    types = [
        e.type for e in await client.app[keys.STORE].read() if not e.type.startswith("server.")
    ]
    assert types == ["upload.received", "run.queued", "run.cancelled"]


async def test_wrong_method_is_405_json_with_allow(client: Client) -> None:
    """A method a route does not take gets 405, a JSON message and the `Allow` header."""
    r = await client.put("/api/v1/queue")
    assert r.status == 405
    assert "message" in await r.json()
    assert "GET" in r.headers["Allow"]


@pytest.mark.parametrize(
    "body", [{"status": {}}, {"status": "completed"}, {"status": []}, {"status": ["running"]}]
)
async def test_prune_refuses_a_malformed_status_and_deletes_nothing(
    client: Client, body: dict[str, object]
) -> None:
    """A prune whose `status` is not a list of ended statuses is a 400 that deletes no run."""
    up = await upload(client)
    run = await create(client, up["Id"])
    await client.delete(f"/api/v1/prechecks/{run['Id']}")  # cancelled: a prunable run
    head = client.app[keys.STORE].head
    r = await client.post("/api/v1/prechecks/prune", json=body)
    assert r.status == 400
    assert "message" in await r.json()
    assert client.app[keys.STORE].head == head
    assert (await client.get(f"/api/v1/prechecks/{run['Id']}")).status == 200


async def test_rerun_queues_the_same_upload_and_parameters_again(client: Client) -> None:
    """`/rerun` makes a new run with the same upload, top cell, die id, slot and cob; once the
    upload is gone it answers 404."""
    up = await upload(client)
    first = await create(client, up["Id"], die_id="AB12CD34", slot="0p5x1", cob=True)
    r = await client.post(f"/api/v1/prechecks/{first['Id']}/rerun")
    assert r.status == 200, await r.text()
    again = await r.json()
    assert again["Id"] != first["Id"]
    assert again["State"]["Status"] == "queued"
    assert again["Config"]["Labels"] == first["Config"]["Labels"]
    assert again["Config"]["Cmd"][-1] == again["Id"]  # its own run tag
    assert again["Queue"]["Position"] == 2
    for run in (first, again):
        assert (await client.delete(f"/api/v1/prechecks/{run['Id']}")).status == 200
    assert (await client.delete(f"/api/v1/uploads/{up['Id']}")).status == 200
    r = await client.post(f"/api/v1/prechecks/{first['Id']}/rerun")
    assert r.status == 404, await r.text()
    assert "upload" in (await r.json())["message"]
    missing = await client.post("/api/v1/prechecks/0123456789abcdef/rerun")
    assert missing.status == 404


async def test_the_raw_log_is_a_text_download(client: Client) -> None:
    """`/logs?format=text` streams every stored line as text, with timestamps on request."""
    run = await create(client, (await upload(client))["Id"])
    store = client.app[keys.OUTPUT_LINES]
    lines = [
        OutputLine(i, f"2026-11-26T12:00:{i % 60:02d}.000000001Z", "stdout", f"line {i} é")
        for i in range(1, 25001)
    ]
    await store.append(run["Id"], blocks_of(lines))
    r = await client.get(f"/api/v1/prechecks/{run['Id']}/logs", params={"format": "text"})
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert f'filename="precheck-{run["Id"]}.log"' in r.headers["Content-Disposition"]
    assert await r.text() == "".join(f"line {i} é\n" for i in range(1, 25001))
    r = await client.get(
        f"/api/v1/prechecks/{run['Id']}/logs", params={"format": "text", "timestamps": "1"}
    )
    assert (await r.text()).splitlines()[1] == "2026-11-26T12:00:02.000000001Z line 2 é"
    bad = await client.get(f"/api/v1/prechecks/{run['Id']}/logs", params={"format": "xml"})
    assert bad.status == 400


async def test_text_that_cannot_be_stored_and_deep_nesting_are_refused(client: Client) -> None:
    """A lone surrogate in a JSON string and a body nested 100,000 deep answer 400, and no event
    is appended."""
    head = client.app[keys.STORE].head
    json_type = {"Content-Type": "application/json"}
    r = await client.post(
        "/api/v1/prechecks/prune", data=b'{"reason": "\\ud800"}', headers=json_type
    )
    assert r.status == 400, await r.text()
    assert "not valid Unicode" in (await r.json())["message"]
    deep = b"[" * 100_000 + b"]" * 100_000
    r = await client.post("/api/v1/prechecks", data=deep, headers=json_type)
    assert r.status == 400, await r.text()
    assert client.app[keys.STORE].head == head


async def test_the_events_head_is_the_last_position_and_its_hash(client: Client) -> None:
    """`/api/v1/events/head` names the last event and its chain hash, as the feed has them."""
    await create(client, (await upload(client))["Id"])
    head = await (await client.get("/api/v1/events/head")).json()
    feed = await (await client.get("/api/v1/events", params={"after": "0"})).json()
    assert head["Position"] == feed["events"][-1]["position"] == client.app[keys.STORE].head
    [last] = await client.app[keys.STORE].read(head["Position"] - 1, 1)
    assert head["Hash"] == last.hash and len(head["Hash"]) == 64


REPORT_NAMES = ['a"b;c=d.lyrdb', "line\nbreak.lyrdb", "déjà vu.lyrdb", "back\\slash.txt"]


@pytest.mark.parametrize("name", REPORT_NAMES)
async def test_a_report_name_from_the_container_is_escaped_in_its_download(
    client: Client, name: str
) -> None:
    """A report whose name holds quotes, `;`, a line break or letters beyond ASCII downloads with
    its exact name in `filename*` (RFC 6266) and a plain ASCII `filename` fallback."""
    run = await create(client, (await upload(client))["Id"])
    run_id, body = run["Id"], b"<report/>"
    path = f"{RUN_FOLDER}/reports/{name}"
    folder = client.app[keys.STORAGE].run_dir(run_id) / RUN_FOLDER / "reports"
    folder.mkdir(parents=True)
    (folder / name).write_bytes(body)
    report = OutputFile(path, len(body), hashlib.sha256(body).hexdigest())
    at = datetime.now(UTC)
    await client.app[keys.STORE].append(
        [
            RunStarted(run_id, "c" * 64, "sim", "sha256:x", at),
            RunExited(run_id, "completed", 0, "", None, {}, False, at, at),
            RunOutputsStored(run_id, None, (report,), {}, None, at),
        ],
        Metadata("supervisor"),
    )
    r = await client.get(f"/api/v1/prechecks/{run_id}/reports/{quote(name)}")
    assert r.status == 200, await r.text()
    assert await r.read() == body
    header = r.headers["Content-Disposition"]
    assert "\n" not in header and "\r" not in header
    kind, params = parse_content_disposition(header)
    assert kind == "attachment"
    assert content_disposition_filename(params, "filename") == name
    fallback = params["filename"]
    assert fallback.isascii() and not set(fallback) & set('"\\;\n/')
