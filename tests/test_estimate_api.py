"""A run document's `Estimate` on a real socket: none without a past run, then exact times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.domain.estimate import flow_phases
from precheck.events.codec import iso
from precheck.events.types import Event, RunProgressed
from precheck.ops.audit import _difference
from precheck.web import keys
from precheck.web.render import run_document
from tests.factories import SUPERVISOR, given, run_exited, run_queued, run_started
from tests.layouts import gds
from tests.sse_client import sse

Client = TestClient[web.Request, web.Application]
T0 = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
STEPS = flow_phases(cob=False)[1:]


class Clock:
    """A clock that stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def queue(client: Client) -> str:
    """Upload a layout and queue a run of it; its id."""
    form = aiohttp.FormData()
    form.add_field("file", gds(), filename="chip.gds")
    up = await (await client.post("/api/v1/uploads", data=form)).json()
    r = await client.post("/api/v1/prechecks", json={"upload_id": up["Id"], "top_cell": "chip_top"})
    assert r.status == 200, await r.text()
    return str((await r.json())["Id"])


async def record(client: Client, *events: Event) -> None:
    """Record events as the supervisor would."""
    for e in events:
        await client.app[keys.STORE].append([e], SUPERVISOR)


async def estimate(client: Client, run_id: str) -> Any:
    r = await client.get(f"/api/v1/prechecks/{run_id}")
    assert r.status == 200
    return (await r.json())["Estimate"]


def a_minute_a_step(run_id: str, start: datetime) -> list[Event]:
    """A run that started at `start` and took a minute per phase (17 minutes), then passed."""
    steps: list[Event] = [
        RunProgressed(run_id, n, 16, name, start + n * MIN) for n, name in enumerate(STEPS, 1)
    ]
    return [run_started(run_id, at=start), *steps, run_exited(run_id, finished_at=start + 17 * MIN)]


async def test_estimates_follow_the_past_runs_and_the_queue(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    """One slot. No estimate before a run passed; then a queued run starts after the one ahead
    of it, and a running run's end moves with its progress."""
    clock = Clock()
    client = await aiohttp_client(create_app(config, clock, run_containers=False))
    first = await queue(client)
    assert await estimate(client, first) is None  # nothing to rest on yet
    await record(client, *a_minute_a_step(first, T0))
    assert await estimate(client, first) is None  # ended: no estimate

    clock.now = T0 + 60 * MIN
    second, third = await queue(client), await queue(client)
    now = clock.now
    assert await estimate(client, second) == {
        "StartAt": iso(now),
        "EndAt": iso(now + 17 * MIN),
        "Basis": 1,
    }
    assert (await estimate(client, third))["StartAt"] == iso(now + 17 * MIN)

    # The second starts, and is half a minute into its first step.
    await record(client, run_started(second, at=now), RunProgressed(second, 1, 16, STEPS[0], now))
    clock.now = now + timedelta(seconds=30)
    ends = now + 16 * MIN  # half a minute left of step 1, then 15 one-minute steps
    assert await estimate(client, second) == {"StartAt": iso(now), "EndAt": iso(ends), "Basis": 1}
    assert await estimate(client, third) == {
        "StartAt": iso(ends),
        "EndAt": iso(ends + 17 * MIN),
        "Basis": 1,
    }
    listed = await (await client.get("/api/v1/prechecks")).json()
    assert {d["Id"]: d["Estimate"] for d in listed}[third]["StartAt"] == iso(ends)

    # A past state has no estimate: an estimate is of now.
    position = client.app[keys.PROJECTIONS].position
    past = await (await client.get(f"/api/v1/prechecks/{third}?as_of={position}")).json()
    assert past["Estimate"] is None

    # A stream's documents have none (a resumed stream sends the same documents); asked
    # for, `estimate` messages with no id say it, and say it again when it moves.
    follow = {"follow": "1", "estimates": "1"}
    async with sse(client, f"/api/v1/prechecks/{third}/events", params=follow) as s:
        status, said = await s.take(2)
        assert json.loads(status.data)["Estimate"] is None
        assert (said.event, said.id) == ("estimate", None)
        assert json.loads(said.data) == {
            "Status": "queued",
            "Estimate": {"StartAt": iso(ends), "EndAt": iso(ends + 17 * MIN), "Basis": 1},
        }
        # The second reaches step 10 now: 1 min of it, then 6 steps, are left.
        await record(client, RunProgressed(second, 10, 16, STEPS[9], clock.now))
        (moved,) = await s.take(1)
        sooner = clock.now + 7 * MIN
        assert json.loads(moved.data)["Estimate"]["StartAt"] == iso(sooner)
        # Its own place has not changed: no status message, only the estimate.
        assert moved.event == "estimate"
        # It starts (the slot's limit is the supervisor's, not the read model's): its status
        # message, then its estimate as a running run's.
        await record(client, run_started(third, at=clock.now))
        status, said = await s.take(2)
        assert (status.event, said.event) == ("status", "estimate")
        assert json.loads(said.data) == {
            "Status": "running",
            "Estimate": {
                "StartAt": iso(clock.now),
                "EndAt": iso(clock.now + 17 * MIN),
                "Basis": 1,
            },
        }


def test_verify_s_comparison_leaves_the_estimate_out(config: Config) -> None:
    """`verify` against a running server compares its documents with a replay's: the served
    `Estimate` is of the instant it answered, so it is not a difference."""
    state = given(run_queued("r1"), *a_minute_a_step("r1", T0), run_queued("r2"))
    served = [run_document(r, state, config, now=T0 + 60 * MIN) for r in state.runs.by_id.values()]
    assert served[1]["Estimate"] is not None
    assert _difference(state, config, served, []) == ""
