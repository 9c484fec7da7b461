"""The run page's charts in headless Chromium: the resource timeline drawn live from
`/resources` (its points are the API's samples) and the steps' durations as bars (one per step
the list shows, the same durations), under the page's Content-Security-Policy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from precheck.config import Config
from tests.browser import Browser
from tests.docker_fixtures import StartApp
from tests.layouts import gds

pytestmark = pytest.mark.docker

CHART_JS = "return document.getElementById(arguments[0]).uplot?.data ?? null"
STEP_TIMES_JS = (
    "return Array.from(document.querySelectorAll('#steps li'))"
    ".map(li => [Number(li.dataset.step), li.querySelector('.time').textContent]);"
)


def _points(browser: Browser, element_id: str) -> list[list[float]] | None:
    data: list[list[float]] | None = browser.script(CHART_JS, element_id)
    return data


def _count(browser: Browser, element_id: str) -> int:
    return len((_points(browser, element_id) or [[]])[0])


def _watch_charts(browser: Browser, run_id: str, samples: Callable[[], int]) -> dict[str, Any]:
    """Open the run's page while it runs; what its charts hold live and at the end. Blocking."""
    seen: dict[str, Any] = {}
    browser.open(f"#/runs/{run_id}")
    # Live: the chart is there with the samples so far, and grows as the run goes on.
    browser.until(lambda _: _count(browser, "resource-chart"))
    seen["live_points"] = _count(browser, "resource-chart")
    seen["live_canvas"] = bool(browser.css_all("#resource-chart canvas"))
    browser.until(lambda _: _count(browser, "resource-chart") > seen["live_points"])
    seen["live_status"] = browser.find("run-state").text
    browser.until_text("run-state", "completed")
    browser.until(lambda _: _count(browser, "resource-chart") == samples())
    seen["resources"] = _points(browser, "resource-chart")
    browser.until(lambda _: _count(browser, "step-chart") == 16)
    browser.until(lambda _: all(t for _, t in browser.script(STEP_TIMES_JS)))
    seen["steps"] = _points(browser, "step-chart")
    seen["step_times"] = browser.script(STEP_TIMES_JS)
    seen["summary"] = browser.find("resources-summary").text
    browser.css(".charts-card").location_once_scrolled_into_view  # noqa: B018
    browser.screenshot("run-page-charts.png")
    seen["console"] = [m["message"] for m in browser.driver.get_log("browser")]  # type: ignore[no-untyped-call]
    return seen


async def test_run_page_draws_the_resource_timeline_and_the_step_times(
    browser: Browser, start_app: StartApp, sim_config: Callable[..., Config]
) -> None:
    api = await start_app(sim_config(stats_seconds=1))
    run_id = await api.run(gds("chip_top", "step_sleep=0.6"))  # about 10 s
    await api.wait_running(run_id)
    browser.point_at(api.client)
    counted: list[int] = [0]

    def samples() -> int:
        return counted[0]

    async def count_samples() -> None:
        while True:
            r = await api.client.get(f"/api/v1/prechecks/{run_id}/resources")
            counted[0] = len((await r.json())["Samples"])
            await asyncio.sleep(0.5)

    counter = asyncio.create_task(count_samples())
    try:
        seen = await browser.drive(lambda: _watch_charts(browser, run_id, samples), 120)
    finally:
        counter.cancel()
    assert seen["live_canvas"] and seen["live_points"] >= 1, seen
    assert seen["live_status"] == "running", seen

    r = await api.client.get(f"/api/v1/prechecks/{run_id}/resources")
    body = await r.json()
    xs, memory, limit, cpu = seen["resources"]
    assert xs == [
        datetime.fromisoformat(s["At"].replace("Z", "+00:00")).timestamp() for s in body["Samples"]
    ]
    assert memory == [s["MemoryBytes"] for s in body["Samples"]]
    assert limit == [s["MemoryLimitBytes"] for s in body["Samples"]]
    assert cpu == [s["CpuPercent"] for s in body["Samples"]]
    assert "peak" in seen["summary"], seen["summary"]

    # One bar per step, its height the duration the steps list shows for it.
    steps, seconds = seen["steps"]
    assert steps == list(range(1, 17))
    shown = dict(seen["step_times"])
    assert [f"{s:.1f}s" for s in seconds] == [shown[n] for n in steps]
    assert all(s > 0 for s in seconds)

    refused = [m for m in seen["console"] if "Content Security Policy" in m]
    assert refused == [], refused
