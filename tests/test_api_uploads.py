"""`/api/v1/uploads` over a real socket: storing, checking, listing, deleting and expiring."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.clock import Clock, utcnow
from precheck.config import Config
from precheck.events.store import RecordedEvent
from precheck.events.types import UploadExpired
from precheck.web import keys
from tests.layouts import gds, gds_gz, oasis

Client = TestClient[web.Request, web.Application]


def api_app(config: Config, clock: Clock = utcnow) -> web.Application:
    """The app without a supervisor: these tests are about the API, so runs stay queued."""
    return create_app(config, clock, run_containers=False)


START = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def multipart(body: bytes, filename: str, field: str = "file") -> aiohttp.FormData:
    # Unquoted, so the server sees the file name byte for byte as a plain client would send it.
    form = aiohttp.FormData(quote_fields=False)
    form.add_field(field, body, filename=filename, content_type="application/octet-stream")
    return form


def files_under(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def storage_of(client: Client) -> Path:
    return client.app[keys.CONFIG].server.storage_path


async def upload(client: Client, body: bytes = b"", filename: str = "chip.gds") -> dict[str, Any]:
    r = await client.post("/api/v1/uploads", data=multipart(body or gds(), filename))
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


async def event_types(client: Client) -> list[str]:
    """Upload and run events in the log (the server also records its own start)."""
    records = await client.app[keys.STORE].read(limit=100_000)
    return [r.type for r in records if not r.type.startswith("server.")]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, config: Config, clock: FakeClock) -> Client:
    return await aiohttp_client(api_app(config, clock=clock))


@pytest.mark.parametrize(
    ("make", "filename", "fmt", "stored"),
    [
        (gds, "chip.gds", "gds", "input.gds"),
        (gds_gz, "chip.gds.gz", "gds.gz", "input.gds.gz"),
        (oasis, "chip.oas", "oas", "input.oas"),
    ],
)
async def test_multipart_upload_of_each_format(
    client: Client,
    clock: FakeClock,
    make: Callable[[str], bytes],
    filename: str,
    fmt: str,
    stored: str,
) -> None:
    """Multipart GDS, GDS.gz or OASIS answers 200 with its name, size, sha256 and expiry."""
    body = make("chip_top")
    r = await client.post("/api/v1/uploads", data=multipart(body, filename))
    assert r.status == 200, await r.text()
    doc = await r.json()
    assert doc["Name"] == filename
    assert doc["Size"] == len(body)
    assert doc["Format"] == fmt
    assert doc["Checksums"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert datetime.fromisoformat(doc["Created"]) == clock.now
    assert datetime.fromisoformat(doc["ExpiresAt"]) == clock.now + timedelta(minutes=15)
    assert doc["State"] == {"Status": "available", "Expired": False}
    assert doc["Runs"] == []
    kept = storage_of(client) / "uploads" / doc["Id"] / stored
    assert kept.read_bytes() == body
    assert await event_types(client) == ["upload.received"]


async def test_raw_octet_stream_upload_takes_name_from_query(client: Client) -> None:
    """A raw application/octet-stream body is stored and named by `?name=`."""
    body = gds("raw_top")
    r = await client.post(
        "/api/v1/uploads",
        params={"name": "raw.gds"},
        data=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status == 200, await r.text()
    doc = await r.json()
    assert doc["Name"] == "raw.gds"
    assert doc["Size"] == len(body)
    assert doc["Checksums"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert (storage_of(client) / "uploads" / doc["Id"] / "input.gds").read_bytes() == body


@pytest.mark.parametrize("filename", ["../../etc/passwd", "a/b.gds", "..\\..\\evil.gds"])
async def test_client_file_name_is_never_a_path(client: Client, filename: str) -> None:
    """Whatever the client calls its file, it lands as uploads/<id>/input.gds and nowhere else."""
    doc = await upload(client, gds(), filename)
    assert "/" not in doc["Name"] and "\\" not in doc["Name"] and ".." != doc["Name"]
    root = storage_of(client)
    assert files_under(root / "uploads") == [Path(doc["Id"]) / "input.gds"]
    assert files_under(root / "tmp") == []
    # Nothing escaped the storage folder either.
    assert not (root.parent / "etc").exists()
    assert not list(root.parent.glob("*.gds"))


async def test_raw_upload_name_with_path_is_only_a_label(client: Client) -> None:
    """A `?name=` holding a path becomes its last part; the stored file keeps the server's name."""
    r = await client.post(
        "/api/v1/uploads",
        params={"name": "../../etc/passwd"},
        data=gds(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status == 200, await r.text()
    doc = await r.json()
    assert doc["Name"] == "passwd"
    assert files_under(storage_of(client) / "uploads") == [Path(doc["Id"]) / "input.gds"]


@pytest.mark.parametrize(
    "body",
    [
        b"hello, this is not a layout",
        b"",
        b"\x1f\x8b" + b"\x00" * 100,  # gzip magic, broken stream
        b"%SEMI-OASIS",  # OASIS magic cut short
        b"\x00\x06\x00\x03" + b"\x00" * 600,  # almost a GDS header
    ],
)
async def test_non_layout_body_is_refused_without_trace(client: Client, body: bytes) -> None:
    """Bytes that are no layout get 400 with a JSON message; no file and no event remain."""
    head = client.app[keys.STORE].head
    r = await client.post("/api/v1/uploads", data=multipart(body, "x.gds"))
    assert r.status == 400
    assert "not a layout" in (await r.json())["message"]
    root = storage_of(client)
    assert files_under(root / "uploads") == []
    assert files_under(root / "tmp") == []
    assert list((root / "uploads").iterdir()) == []
    assert client.app[keys.STORE].head == head


async def test_non_layout_raw_body_is_refused(client: Client) -> None:
    """A raw body that is no layout is refused the same way as a multipart one."""
    head = client.app[keys.STORE].head
    r = await client.post(
        "/api/v1/uploads",
        data=b"plain text " * 100,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status == 400
    assert "message" in await r.json()
    assert client.app[keys.STORE].head == head


@pytest.mark.parametrize("raw", [False, True])
async def test_upload_over_the_size_limit_is_413_and_leaves_nothing(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config], raw: bool
) -> None:
    """Past `max_upload_mb` the answer is 413; no partial file and no event remain."""
    app = api_app(make_config(server={"max_upload_mb": 1}))
    client = await aiohttp_client(app)
    head = app[keys.STORE].head
    body = gds() + b"\x00" * (3 << 20)
    if raw:
        r = await client.post(
            "/api/v1/uploads", data=body, headers={"Content-Type": "application/octet-stream"}
        )
    else:
        r = await client.post("/api/v1/uploads", data=multipart(body, "big.gds"))
    assert r.status == 413
    assert "limit" in (await r.json())["message"]
    root = storage_of(client)
    assert files_under(root / "uploads") == []
    assert files_under(root / "tmp") == []
    assert app[keys.STORE].head == head
    # The server is still fine for the next, smaller upload.
    assert (await upload(client, gds()))["Size"] == len(gds())


async def test_upload_just_under_the_size_limit_is_accepted(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """A file of exactly `max_upload_mb` is not refused."""
    client = await aiohttp_client(api_app(make_config(server={"max_upload_mb": 1})))
    header = gds()
    body = header + b"\x00" * ((1 << 20) - len(header))
    doc = await upload(client, body, "edge.gds")
    assert doc["Size"] == 1 << 20


async def test_multipart_without_file_field_is_400(client: Client) -> None:
    """A multipart body with no `file` field is refused with a JSON message and no event."""
    form = aiohttp.FormData()
    form.add_field("layout", gds(), filename="chip.gds")
    form.add_field("note", "hello")
    head = client.app[keys.STORE].head
    r = await client.post("/api/v1/uploads", data=form)
    assert r.status == 400
    assert "file" in (await r.json())["message"]
    assert client.app[keys.STORE].head == head


async def test_other_content_type_is_400(client: Client) -> None:
    """A JSON body is not an upload."""
    head = client.app[keys.STORE].head
    r = await client.post("/api/v1/uploads", json={"file": "chip.gds"})
    assert r.status == 400
    assert "message" in await r.json()
    assert client.app[keys.STORE].head == head


async def test_list_and_get(client: Client, clock: FakeClock) -> None:
    """Uploads are listed newest first, each one readable by id with the same document."""
    first = await upload(client, gds("a"), "a.gds")
    clock.advance(seconds=1)
    second = await upload(client, oasis("b"), "b.oas")
    r = await client.get("/api/v1/uploads")
    assert r.status == 200
    listed = await r.json()
    assert [u["Id"] for u in listed] == [second["Id"], first["Id"]]
    for doc in (first, second):
        r = await client.get(f"/api/v1/uploads/{doc['Id']}")
        assert r.status == 200
        assert await r.json() == doc
    assert listed == [second, first]


async def test_get_unknown_upload_is_404(client: Client) -> None:
    """An unknown id answers 404 with the plan's message."""
    r = await client.get("/api/v1/uploads/nope123")
    assert r.status == 404
    assert await r.json() == {
        "message": "No such upload: nope123",
        "detail": "No such upload: nope123",
    }


async def test_delete_removes_files_then_404(client: Client) -> None:
    """Deleting answers 200, removes the folder and records it; the upload is then gone."""
    doc = await upload(client)
    folder = storage_of(client) / "uploads" / doc["Id"]
    assert folder.is_dir()
    r = await client.delete(f"/api/v1/uploads/{doc['Id']}")
    assert r.status == 200
    assert (await r.json())["Id"] == doc["Id"]
    assert not folder.exists()
    assert await event_types(client) == ["upload.received", "upload.deleted"]
    r = await client.get(f"/api/v1/uploads/{doc['Id']}")
    assert r.status == 404
    r = await client.delete(f"/api/v1/uploads/{doc['Id']}")
    assert r.status == 404
    assert await r.json() == {
        "message": f"No such upload: {doc['Id']}",
        "detail": f"No such upload: {doc['Id']}",
    }
    assert (await (await client.get("/api/v1/uploads")).json()) == []


async def test_delete_upload_of_queued_run_is_409(client: Client) -> None:
    """An upload a queued run needs cannot be deleted; nothing changes."""
    doc = await upload(client)
    r = await client.post(
        "/api/v1/prechecks", json={"upload_id": doc["Id"], "top_cell": "chip_top"}
    )
    assert r.status == 200, await r.text()
    run_id = (await r.json())["Id"]
    head = client.app[keys.STORE].head
    r = await client.delete(f"/api/v1/uploads/{doc['Id']}")
    assert r.status == 409
    assert run_id in (await r.json())["message"]
    assert client.app[keys.STORE].head == head
    assert (storage_of(client) / "uploads" / doc["Id"] / "input.gds").is_file()
    after = await (await client.get(f"/api/v1/uploads/{doc['Id']}")).json()
    assert after["Runs"] == [run_id]
    assert after["State"]["Status"] == "available"


async def test_delete_upload_after_its_run_is_cancelled(client: Client) -> None:
    """Once its only run is cancelled, the upload can be deleted."""
    doc = await upload(client)
    r = await client.post(
        "/api/v1/prechecks", json={"upload_id": doc["Id"], "top_cell": "chip_top"}
    )
    run_id = (await r.json())["Id"]
    assert (await client.delete(f"/api/v1/prechecks/{run_id}")).status == 200
    r = await client.delete(f"/api/v1/uploads/{doc['Id']}")
    assert r.status == 200
    assert not (storage_of(client) / "uploads" / doc["Id"]).exists()


async def test_expiry_retires_unused_upload_and_marks_used_one(
    client: Client, clock: FakeClock
) -> None:
    """Past its expiry an unused upload is retired with its files; one with a run stays, expired."""
    lone = await upload(client, gds("lone"), "lone.gds")
    used = await upload(client, gds("used"), "used.gds")
    r = await client.post("/api/v1/prechecks", json={"upload_id": used["Id"], "top_cell": "used"})
    assert r.status == 200
    run_id = (await r.json())["Id"]
    uploads = storage_of(client) / "uploads"

    # Not yet due: a poke changes nothing.
    clock.advance(minutes=14, seconds=59)
    client.app[keys.EXPIRY].poke()
    await asyncio.sleep(0.05)
    assert "upload.expired" not in await event_types(client)
    assert (await client.get(f"/api/v1/uploads/{lone['Id']}")).status == 200

    expired_ids: list[str] = []
    both_expired = asyncio.Event()

    def watch(r: RecordedEvent) -> None:
        if isinstance(r.event, UploadExpired):
            expired_ids.append(r.event.upload_id)
            if len(expired_ids) == 2:
                both_expired.set()

    client.app[keys.STORE].add_listener(watch)
    clock.advance(seconds=2)
    client.app[keys.EXPIRY].poke()
    async with asyncio.timeout(5):
        await both_expired.wait()
    assert sorted(expired_ids) == sorted([lone["Id"], used["Id"]])
    r = await client.get(f"/api/v1/uploads/{lone['Id']}")
    assert r.status == 404
    assert await r.json() == {
        "message": f"No such upload: {lone['Id']}",
        "detail": f"No such upload: {lone['Id']}",
    }
    # The folder goes after the event, in a thread; no event says when, so watch the disk.
    async with asyncio.timeout(5):
        while (uploads / lone["Id"]).exists():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    r = await client.get(f"/api/v1/uploads/{used['Id']}")
    assert r.status == 200
    doc = await r.json()
    assert doc["State"] == {"Status": "expired", "Expired": True}
    assert doc["Runs"] == [run_id]
    # Its run still needs the layout.
    assert (uploads / used["Id"] / "input.gds").is_file()
    listed = await (await client.get("/api/v1/uploads")).json()
    assert [u["Id"] for u in listed] == [used["Id"]]

    head = client.app[keys.STORE].head
    r = await client.post("/api/v1/prechecks", json={"upload_id": used["Id"], "top_cell": "used"})
    assert r.status == 400
    assert "expired" in (await r.json())["message"]
    assert client.app[keys.STORE].head == head

    # The expiry events record the server as their cause.
    expired = [r for r in await client.app[keys.STORE].read() if r.type == "upload.expired"]
    ids = {r.event.upload_id for r in expired if isinstance(r.event, UploadExpired)}
    assert ids == {lone["Id"], used["Id"]}
    assert {r.metadata.actor for r in expired} == {"server"}


async def test_expire_due_reports_time_to_next_expiry(client: Client, clock: FakeClock) -> None:
    """`expire_due()` expires nothing early and says how long until the next upload is due."""
    await upload(client)
    clock.advance(minutes=10)
    delay = await client.app[keys.EXPIRY].expire_due()
    assert delay == pytest.approx(300, abs=1)
    assert "upload.expired" not in await event_types(client)
    clock.advance(minutes=5)
    assert await client.app[keys.EXPIRY].expire_due() is None
    assert (await event_types(client)).count("upload.expired") == 1
