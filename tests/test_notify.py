"""Notifications through the API on real sockets and a real log: subscriptions checked at the
edge, signed webhooks to real receivers on loopback, retries, refusals, redelivery, restarts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.events.types import (
    NotificationFailed,
    NotificationRedeliveryRequested,
    NotificationSent,
    RunQueued,
    Subscription,
)
from precheck.web import keys
from tests.layouts import gds
from tests.notify_receivers import (
    SECRET,
    Receiver,
    end_run,
    logged,
    start_receiver,
    until_logged,
)

Client = TestClient[web.Request, web.Application]

FAST = {"retry_first_seconds": 0.2, "retry_max_seconds": 1, "timeout_seconds": 2}


@pytest.fixture
def notify_config(make_config: Callable[..., Config]) -> Callable[..., Config]:
    """Factory: a config with webhooks allowed to 127.0.0.1 and quick retries."""

    def make(**notify: Any) -> Config:
        table = {"allowed_hosts": ["127.0.0.1"], "webhook_secret": SECRET, **FAST, **notify}
        return make_config(notify=table)

    return make


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback."""
    r = await start_receiver()
    yield r
    await r.server.close()


async def queue(client: Client, notify: Any = None, **body: Any) -> aiohttp.ClientResponse:
    """Upload a layout and queue a run of it with `notify`."""
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    r = await client.post("/api/v1/uploads", data=form)
    assert r.status == 200, await r.text()
    upload_id = (await r.json())["Id"]
    create = {"upload_id": upload_id, "top_cell": "chip_top", **body}
    if notify is not None:
        create["notify"] = notify
    return await client.post("/api/v1/prechecks", json=create)


async def test_subscriptions_are_recorded_and_shown_redacted(
    aiohttp_client: AiohttpClient, notify_config: Callable[..., Config]
) -> None:
    """`notify` lands whole in `run.queued`; the document's `Notify` shows it without user info
    or query string."""
    config = notify_config(smtp={"host": "127.0.0.1"})
    client = await aiohttp_client(create_app(config, run_containers=False))
    url = "https://user:pw@127.0.0.1:8443/hook?token=s3cret#x"
    r = await queue(client, [{"webhook": url}, {"email": "dev@example.org"}])
    assert r.status == 200, await r.text()
    doc = await r.json()
    assert doc["Notify"] == [
        {"Kind": "webhook", "Target": "https://127.0.0.1:8443/hook"},
        {"Kind": "email", "Target": "dev@example.org"},
    ]
    assert "s3cret" not in json.dumps(doc)
    (queued,) = await logged(client.app, "run.queued")
    assert isinstance(queued, RunQueued)
    assert queued.notify == (Subscription("webhook", url), Subscription("email", "dev@example.org"))
    listed = await (await client.get(f"/api/v1/prechecks/{doc['Id']}/notifications")).json()
    assert [(n["Number"], n["Status"], n["Attempts"]) for n in listed] == [
        (1, "pending", []),
        (2, "pending", []),
    ]


@pytest.mark.parametrize(
    ("notify", "message"),
    [
        ({"webhook": "x"}, "notify must be a list"),
        ([{"webhook": "not a url"}], "no spaces"),
        ([{"webhook": "ftp://127.0.0.1/x"}], "http:// or https://"),
        ([{"webhook": "http://127.0.0.1:99999/x"}], "not a valid URL"),
        ([{"email": "no-at-sign"}], "not an email address"),
        ([{"pager": "123"}], "unknown kind"),
        ([{"webhook": "http://127.0.0.1/", "email": "a@b.c"}], "one key"),
        ([{"webhook": 5}], "must be a string"),
    ],
)
async def test_malformed_targets_are_400_and_queue_nothing(
    aiohttp_client: AiohttpClient,
    notify_config: Callable[..., Config],
    notify: Any,
    message: str,
) -> None:
    """A target that is not a URL or an address is refused with 400 and a JSON message."""
    client = await aiohttp_client(create_app(notify_config(), run_containers=False))
    r = await queue(client, notify)
    assert r.status == 400
    assert message in (await r.json())["message"]
    assert client.app[keys.PROJECTIONS].runs.by_id == {}


@pytest.mark.parametrize(
    ("notify", "table", "message"),
    [
        ([{"webhook": "http://127.0.0.1/h"}], {"allowed_hosts": [], "webhook_secret": ""}, "off"),
        ([{"webhook": "http://10.1.2.3/h"}], {}, "not in notify.allowed_hosts"),
        ([{"webhook": "https://hooks.example.org/h"}], {}, "not in notify.allowed_hosts"),
        ([{"email": "a@example.org"}], {}, "notify.smtp.host"),
        (
            [{"email": "a@elsewhere.org"}],
            {"smtp": {"host": "127.0.0.1"}, "allowed_email_domains": ["example.org"]},
            "not in allowed_email_domains",
        ),
    ],
)
async def test_targets_the_operator_does_not_allow_are_400(
    aiohttp_client: AiohttpClient,
    notify_config: Callable[..., Config],
    notify: Any,
    table: dict[str, Any],
    message: str,
) -> None:
    """Webhooks are off until hosts are listed; other hosts and domains are refused: 400."""
    client = await aiohttp_client(create_app(notify_config(**table), run_containers=False))
    r = await queue(client, notify)
    assert r.status == 400, await r.text()
    assert message in (await r.json())["message"]
    assert client.app[keys.PROJECTIONS].runs.by_id == {}


async def test_rerun_keeps_or_replaces_the_subscriptions(
    aiohttp_client: AiohttpClient, notify_config: Callable[..., Config]
) -> None:
    """A re-run tells whom the run told, unless its body gives another `notify`."""
    client = await aiohttp_client(create_app(notify_config(), run_containers=False))
    r = await queue(client, [{"webhook": "http://127.0.0.1:1/a"}])
    run_id = (await r.json())["Id"]
    again = await (await client.post(f"/api/v1/prechecks/{run_id}/rerun")).json()
    assert again["Notify"] == [{"Kind": "webhook", "Target": "http://127.0.0.1:1/a"}]
    body = {"notify": [{"webhook": "http://127.0.0.1:1/b"}]}
    other = await (await client.post(f"/api/v1/prechecks/{run_id}/rerun", json=body)).json()
    assert other["Notify"] == [{"Kind": "webhook", "Target": "http://127.0.0.1:1/b"}]
    bad = await client.post(f"/api/v1/prechecks/{run_id}/rerun", json={"notify": [{"x": "y"}]})
    assert bad.status == 400


async def test_a_keys_defaults_are_added(
    aiohttp_client: AiohttpClient, notify_config: Callable[..., Config]
) -> None:
    """`[[notify.defaults]]` of the caller's key join what the request asked for."""
    config = notify_config(defaults=[{"key": "anonymous", "webhook": "http://127.0.0.1:1/d"}])
    client = await aiohttp_client(create_app(config, run_containers=False))
    doc = await (await queue(client, [{"webhook": "http://127.0.0.1:1/a"}])).json()
    assert [n["Target"] for n in doc["Notify"]] == ["http://127.0.0.1:1/a", "http://127.0.0.1:1/d"]


async def test_a_webhook_is_signed_and_delivered_once_outputs_are_stored(
    aiohttp_client: AiohttpClient, notify_config: Callable[..., Config], receiver: Receiver
) -> None:
    """On the run's end the receiver gets one POST whose signature its own implementation of
    the scheme accepts, with the verdict and links; `notification.sent` records it."""
    client = await aiohttp_client(create_app(notify_config(), run_containers=False))
    doc = await (await queue(client, [{"webhook": receiver.url + "?k=v"}])).json()
    run_id = doc["Id"]
    await asyncio.sleep(0.3)
    assert receiver.got == [], "nothing is sent before the run ends"
    await end_run(client.app, run_id)
    await receiver.wait(1)
    (got,) = receiver.got
    assert got.verified
    assert got.headers["webhook-id"] == f"msg_{run_id}_1"
    body = json.loads(got.body)
    assert body["type"] == "precheck.ended"
    data = body["data"]
    assert data["id"] == run_id
    assert data["status"] == "failed"
    assert data["verdict"] == {
        "passed": False,
        "failed_step": "KLayout.DRC",
        "classification": "design",
        "deferred_errors": {"KLayout.DRC": 3},
    }
    assert data["input"]["name"] == "chip.gds"
    # A row from before `image_id` held the id of an image without a repo digest here.
    assert (data["image_id"], data["image_digest"]) == ("sha256:" + "ab" * 32, None)
    assert data["links"]["page"].endswith(f"/#/runs/{run_id}")
    assert data["links"]["log"].endswith(f"/api/v1/prechecks/{run_id}/logs")
    await asyncio.sleep(0.3)
    (sent,) = await logged(client.app)
    assert isinstance(sent, NotificationSent)
    assert (sent.delivery, sent.attempt, sent.status_code, sent.kind) == (1, 1, 200, "webhook")
    assert sent.target == receiver.url  # no query string
    assert len(receiver.got) == 1
    listed = await (await client.get(f"/api/v1/prechecks/{run_id}/notifications")).json()
    assert listed[0]["Status"] == "delivered"
    assert listed[0]["Attempts"][0]["StatusCode"] == 200


async def test_a_500_is_retried_and_the_retry_delivers(
    aiohttp_client: AiohttpClient, notify_config: Callable[..., Config], receiver: Receiver
) -> None:
    """A receiver answering 500 then 200: two attempts, same webhook-id, two events."""
    receiver.answers = [500]
    client = await aiohttp_client(create_app(notify_config(), run_containers=False))
    run_id = (await (await queue(client, [{"webhook": receiver.url}])).json())["Id"]
    await end_run(client.app, run_id, "completed")
    await receiver.wait(2)
    await asyncio.sleep(0.2)
    assert [g.headers["webhook-id"] for g in receiver.got] == [f"msg_{run_id}_1"] * 2
    assert all(g.verified for g in receiver.got)
    failed, sent = await logged(client.app)
    assert isinstance(failed, NotificationFailed) and isinstance(sent, NotificationSent)
    assert (failed.attempt, failed.status_code, failed.gave_up) == (1, 500, False)
    assert "500" in failed.error
    assert sent.attempt == 2
    assert (sent.at - failed.at).total_seconds() >= 0.2


async def test_a_redirect_is_not_followed(
    aiohttp_client: AiohttpClient, notify_config: Callable[..., Config], receiver: Receiver
) -> None:
    """A 302 is a failed attempt; its Location is never asked for."""
    receiver.answers = [302]
    client = await aiohttp_client(create_app(notify_config(), run_containers=False))
    run_id = (await (await queue(client, [{"webhook": receiver.url}])).json())["Id"]
    await end_run(client.app, run_id)
    await receiver.wait(2)  # the retry
    failed = (await logged(client.app))[0]
    assert isinstance(failed, NotificationFailed)
    assert failed.status_code == 302 and "redirect" in failed.error


async def test_a_name_resolving_to_loopback_is_refused_then_given_up(
    aiohttp_client: AiohttpClient, notify_config: Callable[..., Config], receiver: Receiver
) -> None:
    """A listed name that resolves to a loopback address not listed as an IP is refused at
    connect time; past `give_up_hours` the last failure gives up and nothing more is tried."""
    config = notify_config(allowed_hosts=["localhost"], give_up_hours=0.0002)  # 0.72 s
    client = await aiohttp_client(create_app(config, run_containers=False))
    url = f"http://localhost:{receiver.server.port}/hook"
    run_id = (await (await queue(client, [{"webhook": url}])).json())["Id"]
    await end_run(client.app, run_id)
    events = await until_logged(client.app, lambda es: any(e.gave_up for e in es))
    assert all(isinstance(e, NotificationFailed) for e in events)
    assert "refused" in events[0].error and "127.0.0.1" in events[0].error
    assert receiver.got == []
    count = len(events)
    await asyncio.sleep(1.5)
    assert len(await logged(client.app)) == count
    listed = await (await client.get(f"/api/v1/prechecks/{run_id}/notifications")).json()
    assert listed[0]["Status"] == "given-up"


async def test_redeliver_sends_again_under_the_same_id_for_the_owner_only(
    aiohttp_client: AiohttpClient, make_config: Callable[..., Config], receiver: Receiver
) -> None:
    """The owner (or an admin) asks again: one more POST with the same webhook-id; another
    user meets 404; a run not ended yet is 409."""
    api_keys = [
        {"name": "alice", "key": "key-alice-0123456789", "role": "user"},
        {"name": "bob", "key": "key-bob-0123456789", "role": "user"},
    ]
    notify = {"allowed_hosts": ["127.0.0.1"], "webhook_secret": SECRET, **FAST}
    config = make_config(auth={"required": True, "api_keys": api_keys}, notify=notify)
    app = create_app(config, run_containers=False)
    alice = await aiohttp_client(app, headers={"X-API-Key": "key-alice-0123456789"})
    bob = await aiohttp_client(app, headers={"X-API-Key": "key-bob-0123456789"})
    run_id = (await (await queue(alice, [{"webhook": receiver.url}])).json())["Id"]
    path = f"/api/v1/prechecks/{run_id}/notifications"
    assert (await alice.post(f"{path}/1/redeliver")).status == 409
    await end_run(app, run_id)
    await receiver.wait(1)
    assert (await bob.get(path)).status == 404
    assert (await bob.post(f"{path}/1/redeliver")).status == 404
    assert (await alice.post(f"{path}/2/redeliver")).status == 404
    assert (await alice.post(f"{path}/x/redeliver")).status == 400
    r = await alice.post(f"{path}/1/redeliver")
    assert r.status == 202, await r.text()
    await receiver.wait(2)
    assert [g.headers["webhook-id"] for g in receiver.got] == [f"msg_{run_id}_1"] * 2
    await asyncio.sleep(0.2)
    kinds = [type(e) for e in await logged(app)]
    assert kinds == [NotificationSent, NotificationRedeliveryRequested, NotificationSent]
    listed = await (await alice.get(path)).json()
    assert [a["Attempt"] for a in listed[0]["Attempts"]] == [1, 2]


async def test_what_is_owed_is_delivered_by_the_next_server(
    aiohttp_client: AiohttpClient, notify_config: Callable[..., Config]
) -> None:
    """With the receiver down, an ended run's delivery stays owed across a restart; the next
    server, reading the log, delivers it once under the same id."""
    receiver = await start_receiver()
    port = receiver.server.port
    await receiver.server.close()
    config = notify_config(retry_first_seconds=30, retry_max_seconds=30)
    first = await aiohttp_client(create_app(config, run_containers=False))
    url = f"http://127.0.0.1:{port}/hook"
    run_id = (await (await queue(first, [{"webhook": url}])).json())["Id"]
    await end_run(first.app, run_id)
    await until_logged(first.app, bool)
    await first.close()
    receiver = await start_receiver(port)
    try:
        # The retry is due 30 s after the failure; a fresh server keeps that schedule, so
        # owe it now with a shorter one.
        second = await aiohttp_client(create_app(notify_config(), run_containers=False))
        await receiver.wait(1)
        assert receiver.got[0].headers["webhook-id"] == f"msg_{run_id}_1"
        await asyncio.sleep(0.5)
        assert len(receiver.got) == 1
        failed, sent = await logged(second.app)
        assert isinstance(failed, NotificationFailed) and isinstance(sent, NotificationSent)
        assert sent.attempt == 2
    finally:
        await receiver.server.close()
