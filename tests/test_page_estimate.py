"""The run page says when a run should start and end, and says it anew as other runs progress.

In headless Chromium (tests/browser.py) on an app without a supervisor: the test records the
runs' events as the supervisor would, at the wall clock's times.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.clock import utcnow
from precheck.config import Config
from precheck.events.types import RunProgressed
from precheck.web import keys
from tests.browser import Browser
from tests.factories import run_started
from tests.test_estimate_api import STEPS, a_minute_a_step, queue, record

MIN = timedelta(minutes=1)


def _local_clock(t: datetime, offset_minutes: int) -> str:
    """`t` as the page shows a time of the same day: HH:MM in the browser's zone."""
    local = t - timedelta(minutes=offset_minutes)  # getTimezoneOffset: UTC minus local
    return local.strftime("%H:%M")


async def test_the_run_page_shows_and_updates_the_estimate(
    browser: Browser, aiohttp_client: AiohttpClient, config: Config
) -> None:
    """One slot, one past run of 17 one-minute phases. The queued run behind a run that just
    started starts in about 17 min; once that run is at step 10 it is about 7 min."""
    client = await aiohttp_client(create_app(config, run_containers=False))
    now = utcnow()
    first = await queue(client)
    await record(client, *a_minute_a_step(first, now - 60 * MIN))
    ahead, waiting = await queue(client), await queue(client)
    await record(client, run_started(ahead, at=now))

    async def end_of(run_id: str) -> datetime:
        doc: dict[str, Any] = await (await client.get(f"/api/v1/prechecks/{run_id}")).json()
        return datetime.fromisoformat(doc["Estimate"]["EndAt"])

    ends = await end_of(waiting)
    browser.point_at(client)

    def look_before() -> dict[str, Any]:
        browser.open(f"#/runs/{waiting}")
        browser.until_text("run-estimate", "starts in about")
        return {
            "text": browser.find("run-estimate").text,
            "offset": browser.script("return new Date().getTimezoneOffset()"),
        }

    before = await browser.drive(look_before, 60)
    offset = before["offset"]
    assert before["text"] == f"starts in about 17 min, ends about {_local_clock(ends, offset)}"

    # The run ahead reaches step 10: 1 min of it left, then 6 more.
    state = client.app[keys.PROJECTIONS]
    await record(client, RunProgressed(ahead, 10, 16, STEPS[9], utcnow()))
    assert state.step_times.phase_of(ahead) is not None
    ends = await end_of(waiting)

    def look_after() -> str:
        browser.until_text("run-estimate", "starts in about 7 min")
        text = str(browser.find("run-estimate").text)
        browser.screenshot("run-page-estimate.png")
        return text

    after = await browser.drive(look_after, 60)
    assert after == f"starts in about 7 min, ends about {_local_clock(ends, offset)}"

    def look_running() -> str:
        browser.open(f"#/runs/{ahead}")
        browser.until_text("run-estimate", "ends about")
        return str(browser.find("run-estimate").text)

    running = await browser.drive(look_running, 60)
    assert running == f"ends about {_local_clock(await end_of(ahead), offset)}"
