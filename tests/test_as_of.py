"""Point in time, for auditors: `?as_of=<position or ISO time>` answers a run's or an upload's
document as it stood then, its events up to there folded by the projection code."""

from __future__ import annotations

from collections.abc import Callable

from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.web import keys
from tests.layouts import gds


async def test_a_run_and_its_upload_as_they_stood_at_earlier_positions(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config]
) -> None:
    """Queued at one position, cancelled at the next: each position (and the time of each
    event) gives that state; the upload lists the run only from its queuing on; the live
    document is unchanged by asking."""
    client = await aiohttp_client(create_app(make_config(), run_containers=False))
    store = client.app[keys.STORE]
    up = await (await client.post("/api/v1/uploads?name=a.gds", data=gds("chip_top"))).json()
    uploaded = store.head
    body = {"upload_id": up["Id"], "top_cell": "chip_top"}
    run = (await (await client.post("/api/v1/prechecks", json=body)).json())["Id"]
    queued = store.head
    assert (await client.delete(f"/api/v1/prechecks/{run}")).status == 200
    cancelled = store.head

    async def run_at(as_of: str) -> dict[str, object]:
        r = await client.get(f"/api/v1/prechecks/{run}", params={"as_of": as_of})
        assert r.status == 200, await r.text()
        doc: dict[str, object] = await r.json()
        return doc

    then = await run_at(str(queued))
    assert then["State"]["Status"] == "queued" and then["AsOf"] == queued  # type: ignore[index]
    assert then["Queue"] == {"Position": 1, "Length": 1, "Waiting": None}
    now = await run_at(str(cancelled))
    assert now["State"]["Status"] == "cancelled"  # type: ignore[index]
    live = await (await client.get(f"/api/v1/prechecks/{run}")).json()
    assert {k: v for k, v in now.items() if k != "AsOf"} == live

    [queued_event] = await store.read(queued - 1, 1)
    by_time = await run_at(queued_event.recorded.isoformat())
    assert by_time["AsOf"] == queued and by_time["State"]["Status"] == "queued"  # type: ignore[index]

    r = await client.get(f"/api/v1/prechecks/{run}", params={"as_of": str(uploaded)})
    assert r.status == 404 and "did not exist yet" in (await r.json())["message"]
    for bad in ("yesterday", str(cancelled + 100), "2026-01-01T00:00:00"):
        r = await client.get(f"/api/v1/prechecks/{run}", params={"as_of": bad})
        assert r.status == 400, bad
        assert "as_of" in (await r.json())["message"]

    async def upload_at(position: int) -> dict[str, object]:
        r = await client.get(f"/api/v1/uploads/{up['Id']}", params={"as_of": str(position)})
        assert r.status == 200, await r.text()
        doc: dict[str, object] = await r.json()
        return doc

    assert (await upload_at(uploaded))["Runs"] == []
    assert (await upload_at(queued))["Runs"] == [run]
