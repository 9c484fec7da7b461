"""Webhooks of real runs on a real engine: told once the run is final, and at least once across
a server killed with SIGKILL, mid-attempt or with its receiver down."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from precheck.config import Config, NotifyConfig
from tests.docker_fixtures import StartApp
from tests.layouts import gds
from tests.notify_receivers import SECRET, start_receiver
from tests.simulator_config import simulator_tables, toml_text
from tests.test_crash_recovery import Http, ServerProcess

pytestmark = pytest.mark.docker

FAST = {"retry_first_seconds": 0.5, "retry_max_seconds": 2, "timeout_seconds": 30}


async def test_a_real_runs_end_is_told_once_it_is_final(
    start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    """A run failing at a step with the simulator: the receiver gets one signed POST whose
    status and verdict are the run's final ones, while the run already reads as final."""
    receiver = await start_receiver()
    try:
        notify = NotifyConfig(
            allowed_hosts=("127.0.0.1",),
            webhook_secret=SECRET,
            retry_first_seconds=FAST["retry_first_seconds"],
        )
        config = attrs.evolve(sim_config(), notify=notify)
        api = await start_app(config)
        run_id = await api.run(
            gds("chip_top", "fail=KLayout.CheckSize"), notify=[{"webhook": receiver.url}]
        )
        await receiver.wait(1, 60)
        doc = await api.get(run_id)  # read as soon as it arrived
        (got,) = receiver.got
        assert got.verified
        data = json.loads(got.body)["data"]
        assert doc["State"]["Status"] == data["status"] == "failed"
        assert data["verdict"]["failed_step"] == doc["Result"]["FailedStep"] == "KLayout.CheckSize"
        assert data["verdict"]["classification"] == "design"
        assert data["image_id"] == doc["Image"] == doc["Attempts"][-1]["Image"]
        assert data["image_id"].startswith("sha256:")
        assert data["image_digest"] == doc["ImageDigest"] is None  # built here: no registry's
        assert data["input"]["sha256"] == doc["Input"]["Checksums"]["sha256"]
        await asyncio.sleep(1)
        assert len(receiver.got) == 1
    finally:
        await receiver.server.close()


class NotifyingServer(ServerProcess):
    """The server process with webhooks allowed to 127.0.0.1 and quick retries."""

    def write_config(self, **docker: object) -> None:
        tables = simulator_tables(
            self.storage, self.image, server={"host": "127.0.0.1", "port": self.port}, docker=docker
        )
        tables["notify"] = {"allowed_hosts": ["127.0.0.1"], "webhook_secret": SECRET, **FAST}
        self.config.write_text(toml_text(tables), encoding="utf-8")


@pytest.fixture
def notifying_server(tmp_path: Path, simulator_image: str) -> Iterator[NotifyingServer]:
    """A notifying server process on a fresh storage folder; its containers go afterwards."""
    s = NotifyingServer(tmp_path, simulator_image)
    yield s
    s.stop()
    rows = _rows(s.storage, "SELECT data FROM events WHERE type = 'server.instance-created'")
    if rows:
        label = f"label=precheck.instance={json.loads(rows[0][0])['instance_id']}"
        ps = ["docker", "ps", "-aq", "--filter", label]
        ids = subprocess.run(ps, capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session without keep-alive (a pooled connection would outlive a killed server)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


def _rows(storage: Path, sql: str) -> list[tuple[Any, ...]]:
    db = storage / "precheck.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _notification_rows(storage: Path) -> list[tuple[str, dict[str, Any]]]:
    sql = "SELECT type, data FROM events WHERE type LIKE 'notification.%' ORDER BY position"
    return [(t, json.loads(d)) for t, d in _rows(storage, sql)]


async def _queue(api: Http, url: str) -> str:
    form = aiohttp.FormData()
    form.add_field("file", gds("chip_top"), filename="chip.gds")
    async with api.s.post(f"{api.base}/api/v1/uploads", data=form) as r:
        upload = await r.json()
    body = {"upload_id": upload["Id"], "top_cell": "chip_top", "notify": [{"webhook": url}]}
    async with api.s.post(f"{api.base}/api/v1/prechecks", json=body) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["Id"])


async def test_killed_mid_attempt_the_next_server_delivers_under_the_same_id(
    notifying_server: NotifyingServer, http: aiohttp.ClientSession
) -> None:
    """The receiver holds the first attempt while the server is SIGKILLed: nothing was
    recorded, so the restarted server sends it again, same webhook-id, and records one
    `notification.sent`."""
    receiver = await start_receiver()
    receiver.held = asyncio.Event()
    notifying_server.start()
    api = Http(http, notifying_server.url)
    try:
        run_id = await _queue(api, receiver.url)
        await api.wait(run_id)
        await receiver.wait(1, 30)  # taken, not answered
        notifying_server.kill()
        assert _notification_rows(notifying_server.storage) == []
        receiver.held.set()
        notifying_server.start()
        await receiver.wait(2, 30)
        await asyncio.sleep(1.5)  # a third delivery would have come by now
        assert len(receiver.got) == 2
        ids = {g.headers["webhook-id"] for g in receiver.got}
        assert ids == {f"msg_{run_id}_1"}
        assert all(g.verified for g in receiver.got)
        rows = _notification_rows(notifying_server.storage)
        assert [(k, d["attempt"]) for k, d in rows] == [("notification.sent", 1)]
    finally:
        receiver.held.set()
        await receiver.server.close()
        notifying_server.stop()


async def test_receiver_down_across_a_kill_9_is_told_once_after_the_restart(
    notifying_server: NotifyingServer, http: aiohttp.ClientSession
) -> None:
    """Receiver down when the run ends, the server SIGKILLed after a failed attempt, the
    receiver back up: the restarted server delivers once, same webhook-id, from the log."""
    receiver = await start_receiver()
    port = receiver.server.port
    await receiver.server.close()
    notifying_server.start()
    api = Http(http, notifying_server.url)
    try:
        run_id = await _queue(api, f"http://127.0.0.1:{port}/hook")
        await api.wait(run_id)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _notification_rows(notifying_server.storage):
                break
            await asyncio.sleep(0.05)  # watching another process's file: no event to await
        notifying_server.kill()
        (kind, failed), *_ = _notification_rows(notifying_server.storage)
        assert kind == "notification.failed"
        receiver = await start_receiver(port)
        notifying_server.start()
        await receiver.wait(1, 30)
        await asyncio.sleep(1.5)  # a second delivery would have come by now
        assert len(receiver.got) == 1
        (got,) = receiver.got
        assert got.verified and got.headers["webhook-id"] == failed["message_id"]
        kinds = [k for k, _ in _notification_rows(notifying_server.storage)]
        assert kinds.count("notification.sent") == 1
        assert kinds[-1] == "notification.sent"
    finally:
        await receiver.server.close()
        notifying_server.stop()
