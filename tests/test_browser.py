"""The web page in headless Chromium: key, upload, start a run, follow it live, see the verdict.

On an app that requires an API key and runs the simulator image, through the `browser` fixture
(tests/browser.py). Screenshots are saved under `artifacts/`.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import ApiKey, AuthConfig, Config
from precheck.events.types import Metadata, OutputFile, RunExited, RunOutputsStored, RunStarted
from precheck.runner.findings_file import store_findings
from precheck.storage.output_lines import OutputLine, blocks_of
from precheck.web import keys
from tests.browser import Browser
from tests.docker_fixtures import StartApp
from tests.layouts import gds
from tests.real_layouts import die
from tests.renders import drawn_bounds, render_like_the_flow

KEY = "k1"


_LOGGER = re.compile(
    r"(?:(\[\d\d:\d\d:\d\d\]) )?(DEBUG|VERBOSE|INFO|WARNING|ERROR|CRITICAL)(?: {2,}|$)"
)


def _as_shown(line: str) -> str:
    """A plain (uncoloured) line as the page's log shows it: a rule line as its title, a logger
    line as time, level, message and source reference one space apart."""
    trimmed = line.strip()
    if trimmed.startswith("───") and trimmed.endswith("───") and trimmed.strip("─ "):
        return trimmed.strip("─ ")
    m = _LOGGER.match(line)
    if m is None:
        return line
    rest = line[m.end() :].rstrip()
    head, _, last = rest.rpartition(" ")
    said = [head.rstrip(), last] if head and re.fullmatch(r"[\w.-]+\.py:\d+", last) else [rest]
    return " ".join(part for part in (m[1], m[2], *said) if part)


def _drive(browser: Browser, layout: Path) -> dict[str, Any]:
    """Do what a user does on the page; what was seen. Blocking: run in a thread."""
    seen: dict[str, Any] = {}
    browser.open()

    # The API wants a key: the page asks for it; a wrong one is refused in other words.
    browser.until_visible("key-form")
    seen["asked"] = browser.find("key-why").text
    browser.find("key").send_keys("not-the-key")
    browser.css("#key-form button[type=submit]").click()
    browser.until_text("key-why", "refused")
    browser.find("key").send_keys(KEY)
    browser.css("#key-form button[type=submit]").click()
    browser.until_hidden("key-form")

    seen["status_after_good_key"] = browser.find("upload-status").text

    # Upload through the file input; the status line reports it.
    browser.find("file").send_keys(str(layout))
    browser.css("#upload-form button[type=submit]").click()
    browser.until_text("upload-status", "uploaded")
    seen["upload_status"] = browser.find("upload-status").text
    seen["upload_error"] = "error" in (browser.find("upload-status").get_attribute("class") or "")
    browser.until(lambda _: browser.find("upload-id").get_attribute("value"))
    seen["upload_id"] = browser.find("upload-id").get_attribute("value")

    # Start a run: top cell, then Start; the page goes to the run's own page.
    top = browser.find("top-cell")
    top.clear()
    top.send_keys("chip_top")
    browser.css("#run-form button[type=submit]").click()
    browser.until(lambda d: "#/runs/" in d.current_url)
    seen["run_id"] = browser.driver.current_url.rsplit("/", 1)[1]
    browser.until_visible("run-page")

    # Log lines arrive live, before the verdict is there.
    browser.until(lambda _: (browser.find("log").get_attribute("textContent") or "").strip())
    seen["verdict_shown_with_first_lines"] = browser.find("verdict").is_displayed()

    # Then the verdict and the downloads.
    browser.until_visible("verdict")
    browser.until_text("verdict-text", "Passed")
    browser.until(lambda _: len(browser.css_all("#downloads li")) >= 3)
    browser.until(lambda _: browser.find("render").is_displayed())
    seen["verdict"] = browser.find("verdict-text").text
    seen["state"] = browser.find("run-state").text
    seen["step"] = browser.find("run-step").text
    seen["downloads"] = [li.text for li in browser.css_all("#downloads li")]
    seen["log"] = browser.find("log").get_attribute("textContent")
    seen["url"] = browser.driver.current_url

    # With a key, a download link is fetched with it and saved: the raw log, whole.
    browser.script(
        "window.saved = []; const make = URL.createObjectURL;"
        "URL.createObjectURL = (b) => { window.saved.push(b.size); return make(b); };"
    )
    browser.find("raw-log").click()
    browser.until(lambda _: browser.script("return window.saved.length"))
    seen["raw_log_saved"] = browser.script("return window.saved")
    seen["raw_log_status"] = browser.find("run-action-status").text
    seen["url_after_download"] = browser.driver.current_url
    seen["shot"] = browser.screenshot("browser-run.png")
    return seen


async def test_page_follows_a_run_live(
    browser: Browser,
    start_app: StartApp,
    sim_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    """With auth required the page takes the key, uploads, runs, streams the log, shows verdict."""
    config = sim_config()
    config = attrs.evolve(
        config, auth=AuthConfig(required=True, api_keys=(ApiKey(name="web", key=KEY),))
    )
    api = await start_app(config)
    headers = {"X-API-Key": KEY}
    layout = tmp_path / "chip_top.gds"
    layout.write_bytes(gds("chip_top", "step_sleep=0.1", "lines=20"))
    browser.point_at(api.client)

    seen = await browser.drive(lambda: _drive(browser, layout), 60)

    assert seen["asked"] == "an API key is needed"
    assert seen["status_after_good_key"] == "", "a message asking for a key outlives the key"
    assert seen["upload_status"].startswith("uploaded chip_top.gds"), seen["upload_status"]
    assert not seen["upload_error"]
    run_id = seen["run_id"]
    r = await api.client.get(f"/api/v1/prechecks/{run_id}", headers=headers)
    assert r.status == 200, await r.text()
    run = await r.json()
    assert run["Config"]["Labels"]["upload_id"] == seen["upload_id"]
    assert run["Config"]["Labels"]["top_cell"] == "chip_top"
    assert run["State"]["Status"] == "completed"
    assert seen["state"] == "completed"
    assert seen["verdict_shown_with_first_lines"] is False, "the log should stream before the end"
    assert seen["verdict"].startswith("Passed"), seen["verdict"]
    assert seen["step"].startswith("step 16 of 16"), seen["step"]
    assert any(d.startswith("output layout chip_top") for d in seen["downloads"]), seen["downloads"]
    assert "debug tarball" in seen["downloads"], seen["downloads"]
    assert any(d.startswith("report ") for d in seen["downloads"]), seen["downloads"]

    # The page's log is the captured log as the flow prints it: every line once, in order.
    r = await api.client.get(f"/api/v1/prechecks/{run_id}/logs", headers=headers)
    lines = (await r.json())["lines"]
    assert [f"noise {i}" for i in range(1, 21)] == [x for x in lines if x.startswith("noise ")]
    assert seen["log"] == "".join(_as_shown(line) + "\n" for line in lines)
    raw = "".join(line + "\n" for line in lines)  # the raw log keeps the lines as stored
    assert seen["raw_log_saved"] == [len(raw.encode())], seen["raw_log_saved"]
    assert seen["raw_log_status"] == ""
    assert seen["url_after_download"] == seen["url"]

    assert seen["shot"].stat().st_size > 1000
    assert seen["shot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _watch_home(browser: Browser, start_runs: Callable[[], str]) -> dict[str, Any]:
    """Keep the home page open while runs are started; the statuses one row showed, in order,
    then open an unknown run id. Blocking: run in a thread."""
    import time

    seen: dict[str, Any] = {"statuses": []}
    browser.open()
    browser.until_text("conn", "live")
    # The browser itself checks the top cell's pattern (an invalid pattern is ignored).
    seen["pattern_checks"] = browser.script(
        "const i = document.getElementById('top-cell'); i.value = '9bad';"
        "const bad = i.validity.patternMismatch; i.value = 'chip_top';"
        "return [bad, i.validity.patternMismatch];"
    )
    run_id = start_runs()
    # Read in one script: the list is rebuilt as events arrive.
    read = "const b = document.querySelector(arguments[0]); return b ? b.textContent : null;"
    row = f"#runs tr[data-id='{run_id}']"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = browser.script(read, f"{row} .badge")
        if status and (not seen["statuses"] or seen["statuses"][-1] != status):
            seen["statuses"].append(status)
        if status in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.05)
    time.sleep(0.5)  # the list is refreshed once more after the last event
    seen["summary"] = browser.script(read, "#queue-summary")
    seen["failure_cell"] = browser.script(read, f"{row} td:nth-child(6)")

    # A run page, then an id that is no run: "not found", nothing of the previous run.
    browser.open(f"#/runs/{run_id}")
    browser.until_text("run-summary", "chip_top")
    browser.open("#/runs/0123456789abcdef")
    browser.until_text("run-state", "not found")
    seen["missing"] = {
        "id": browser.find("run-id").text,
        "summary": browser.find("run-summary").text,
        "conn": browser.find("conn").text,
    }
    return seen


async def test_home_page_stays_true_through_a_runs_life(
    browser: Browser,
    start_app: StartApp,
    sim_config: Callable[..., Config],
) -> None:
    """Without a reload the row goes queued -> running -> failed with its reason; an unknown
    run id shows "not found"; the page's patterns are valid."""
    api = await start_app(sim_config())
    loop = asyncio.get_running_loop()

    async def start_two() -> str:
        await api.run(gds("chip_top", "step_sleep=0.3"))
        return await api.run(gds("chip_top", "step_sleep=0.2", "fail=KLayout.CheckSize"))

    def start_runs() -> str:
        return asyncio.run_coroutine_threadsafe(start_two(), loop).result(30)

    browser.point_at(api.client)
    seen = await browser.drive(lambda: _watch_home(browser, start_runs), 120)
    assert seen["pattern_checks"] == [True, False]
    # `finishing` shows when the list is refreshed between the exit and the stored outputs.
    assert seen["statuses"] in (
        ["queued", "running", "failed"],
        ["queued", "running", "finishing", "failed"],
    ), seen["statuses"]
    assert seen["failure_cell"].startswith("design: "), seen["failure_cell"]
    assert seen["failure_cell"].endswith("(KLayout.CheckSize)"), seen["failure_cell"]
    assert seen["summary"].startswith("0 queued, 0 running"), seen["summary"]
    assert seen["missing"]["id"] == "0123456789abcdef"
    assert "chip_top" not in seen["missing"]["summary"]
    assert "No such precheck" in seen["missing"]["summary"]
    assert seen["missing"]["conn"] == "not found"


# The run page: steps, times, log viewer, actions -------------------------------------------------

STEPS_JS = (
    "return Array.from(document.querySelectorAll('#steps li')).map(li => ["
    "li.querySelector('.name').textContent, li.dataset.state, li.querySelector('.time').textContent"
    "]);"
)
# The highlighted line (`.target` for the address's line, `.current` for the search's): its
# number, text, and whether it is inside the log's visible area.
LINE_JS = (
    "const el = document.querySelector(arguments[0]); if (!el) return null;"
    "const log = document.getElementById('log').getBoundingClientRect();"
    "const r = el.getBoundingClientRect();"
    "return [Number(el.querySelector('.ln').dataset.n), el.textContent,"
    " r.top >= log.top && r.bottom <= log.bottom];"
)


def _states(browser: Browser) -> list[str]:
    """The state of each step the run page lists, in order."""
    return [state for _, state, _ in browser.script(STEPS_JS)]


def _use_run_page(browser: Browser, run_id: str) -> dict[str, Any]:
    """Watch a run that passes on its page, then use its log viewer. Blocking: run in a thread."""
    seen: dict[str, Any] = {}
    page = f"#/runs/{run_id}"
    browser.open(page)

    # While it runs: a step running, the others waiting, the clock ticking, Cancel offered.
    browser.until(lambda _: "running" in _states(browser))
    seen["running_states"] = set(_states(browser))
    seen["cancel_while_running"] = browser.find("cancel-run").is_displayed()
    seen["rerun_while_running"] = browser.find("rerun").is_displayed()
    before = browser.find("run-elapsed").text
    browser.until(lambda _: browser.find("run-elapsed").text != before)
    seen["elapsed"] = [before, browser.find("run-elapsed").text]

    # At the end: every step done, each with its time; the times of the run.
    browser.until_text("run-state", "completed")
    browser.until(lambda _: _states(browser) == ["done"] * 16)
    browser.until_visible("verdict")
    seen["steps"] = browser.script(STEPS_JS)
    seen["times"] = {
        k: browser.find(f"run-{k}").text for k in ("created", "started", "finished", "elapsed")
    }
    seen["cancel_at_end"] = browser.find("cancel-run").is_displayed()
    seen["rerun_at_end"] = browser.find("rerun").is_displayed()
    seen["raw_log"] = {
        "href": browser.find("raw-log").get_attribute("href"),
        "download": browser.find("raw-log").get_attribute("download"),
    }
    browser.until(lambda _: len(browser.css_all("#downloads a")) >= 3)
    seen["downloads"] = [
        (a.get_attribute("href"), a.get_attribute("download"))
        for a in browser.css_all("#downloads a")
    ]
    seen["log_lines"] = browser.script("return document.querySelectorAll('#log .line').length")

    # Search: matches are counted and highlighted; Enter goes to the next one.
    box = browser.find("log-search")
    box.send_keys("noise 7")
    browser.until_text("search-count", "of")
    seen["search_count"] = browser.find("search-count").text
    seen["search_line"] = browser.script(LINE_JS, "#log .line.current")
    seen["search_marks"] = browser.script(
        "return Array.from(document.querySelectorAll('#log mark')).map(m => m.textContent)"
    )
    seen["follow_after_search"] = browser.find("autoscroll").is_selected()
    browser.script("window.scrollTo(0, 0)")
    browser.screenshot("run-page.png")
    box.clear()
    box.send_keys("noise")
    browser.until_text("search-count", "of 20")
    box.send_keys("\n")
    browser.until_text("search-count", "2 of 20")
    seen["search_next"] = browser.script(LINE_JS, "#log .line.current")
    browser.find("search-prev").click()
    browser.find("search-prev").click()
    browser.until_text("search-count", "20 of 20")
    seen["search_wrapped"] = browser.script(LINE_JS, "#log .line.current")
    box.clear()
    box.send_keys("\n")
    browser.until(lambda _: not browser.css_all("#log mark"))

    # Folding the Magic DRC step hides its lines, not its own line.
    section = "#log .sec[data-step='12']"
    noise = browser.xpath("//div[@id='log']//div[contains(@class,'line')][.='noise 3\n']")
    browser.css(f"{section} .fold").click()
    seen["folded"] = [
        noise.is_displayed(),
        browser.css(f"{section} .head").is_displayed(),
    ]
    browser.css(f"{section} .fold").click()
    seen["unfolded"] = noise.is_displayed()

    # A line number is a link: clicking it puts the line in the address and marks it.
    browser.css("#log .ln[data-n='3']").click()
    browser.until(lambda d: d.current_url.endswith("/L3"))
    seen["clicked_line"] = browser.script(LINE_JS, "#log .line.target")

    # Opening an address with a line marks that line and scrolls it into sight.
    browser.open(f"{page}/L5")
    browser.driver.refresh()
    browser.until(lambda _: browser.script(LINE_JS, "#log .line.target"))
    seen["opened_line"] = browser.script(LINE_JS, "#log .line.target")
    seen["follow_with_line"] = browser.find("autoscroll").is_selected()

    # A narrow screen: nothing wider than the window.
    browser.driver.set_window_size(400, 1000)
    browser.until(lambda _: browser.script("return window.innerWidth") <= 400)
    seen["narrow_overflow"] = browser.script(
        "return document.documentElement.scrollWidth - window.innerWidth"
    )
    browser.script("window.scrollTo(0, 0)")
    browser.screenshot("run-page-narrow.png")
    return seen


async def test_run_page_shows_steps_times_and_a_log_to_search_and_link(
    browser: Browser,
    start_app: StartApp,
    sim_config: Callable[..., Config],
) -> None:
    """A passing run's page: steps as they go, then 16 done with times; the elapsed time
    ticks; search, fold, line links and the raw log link work."""
    api = await start_app(sim_config())
    run_id = await api.run(gds("chip_top", "step_sleep=0.4", "lines=20"))
    browser.point_at(api.client)
    seen = await browser.drive(lambda: _use_run_page(browser, run_id), 120)
    assert "running" in seen["running_states"] and "waiting" in seen["running_states"], seen
    assert seen["cancel_while_running"] and not seen["rerun_while_running"]
    assert seen["elapsed"][0] != seen["elapsed"][1]

    run = await api.get(run_id)
    lines = (await api.logs(run_id))["lines"]
    steps = [line.split("'")[1] for line in lines if "VERBOSE  Running '" in line]
    assert [name for name, _, _ in seen["steps"]] == steps
    assert all(time.endswith("s") for _, _, time in seen["steps"]), seen["steps"]
    assert all(seen["times"][k] != "\u2013" for k in seen["times"]), seen["times"]
    assert run["State"]["Status"] == "completed"
    assert not seen["cancel_at_end"] and seen["rerun_at_end"]
    assert seen["log_lines"] == len(lines)

    # The raw log is a link to the whole log as text; every download is a real link.
    assert seen["raw_log"]["href"].endswith(f"/api/v1/prechecks/{run_id}/logs?format=text")
    assert seen["raw_log"]["download"] == f"precheck-{run_id}.log"
    r = await api.client.get(f"/api/v1/prechecks/{run_id}/logs", params={"format": "text"})
    assert await r.text() == "".join(line + "\n" for line in lines)
    for href, name in seen["downloads"]:
        assert "/api/v1/" in href and name, seen["downloads"]

    number = lines.index("noise 7") + 1
    assert seen["search_count"] == "1 of 1"
    assert seen["search_line"] == [number, "noise 7\n", True]
    assert seen["search_marks"] == ["noise 7"]
    assert seen["follow_after_search"] is False, "looking at a match stops following the end"
    assert seen["search_next"][:2] == [lines.index("noise 2") + 1, "noise 2\n"]
    assert seen["search_wrapped"][:2] == [lines.index("noise 20") + 1, "noise 20\n"]

    assert seen["folded"] == [False, True]
    assert seen["unfolded"] is True

    assert seen["clicked_line"][:2] == [3, lines[2] + "\n"]
    assert seen["opened_line"] == [5, lines[4] + "\n", True]
    assert seen["follow_with_line"] is False
    assert seen["narrow_overflow"] <= 0, "the narrow page scrolls sideways"


def _fail_and_rerun(
    browser: Browser, run_id: str, delete_upload: Callable[[], None]
) -> dict[str, Any]:
    """A run failing at its third step; re-run it, then re-run once its upload is gone.
    Blocking: run in a thread."""
    seen: dict[str, Any] = {}
    browser.open(f"#/runs/{run_id}")
    browser.until_text("run-state", "failed")
    browser.until(lambda _: "failed" in _states(browser))
    browser.until_visible("rerun")
    seen["steps"] = browser.script(STEPS_JS)
    browser.screenshot("run-page-failed.png")

    browser.find("rerun").click()
    browser.until(lambda d: not d.current_url.endswith(run_id))
    seen["new_id"] = browser.driver.current_url.rsplit("/", 1)[1]
    browser.until_text("run-summary", "chip_top")
    seen["new_run_id_shown"] = browser.find("run-id").text
    browser.until_text("run-state", "failed")
    browser.until(lambda _: "failed" in _states(browser))
    seen["new_steps"] = _states(browser)

    # With the upload gone a re-run cannot be: the page says so and stays.
    delete_upload()
    browser.until_visible("rerun")
    browser.find("rerun").click()
    browser.until_text("run-action-status", "re-run")
    status = browser.find("run-action-status")
    seen["rerun_refused"] = [status.text, "error" in (status.get_attribute("class") or "")]
    seen["url_after_refusal"] = browser.driver.current_url
    return seen


async def test_run_page_shows_the_failed_step_and_re_runs(
    browser: Browser,
    start_app: StartApp,
    sim_config: Callable[..., Config],
) -> None:
    """Steps 1-2 done, 3 failed, the rest not reached; Re-run opens the new run's page with the
    same parameters; with the upload deleted Re-run says why it cannot."""
    api = await start_app(sim_config())
    body = gds("chip_top", "step_sleep=0.05", "fail=KLayout.CheckSize")
    upload_id = await api.upload(body, "chip_top.gds")
    run = await api.create(upload_id, die_id="ABCD1234", slot="0p5x1")
    loop = asyncio.get_running_loop()

    async def delete() -> None:
        r = await api.client.delete(f"/api/v1/uploads/{upload_id}")
        assert r.status == 200, await r.text()

    def delete_upload() -> None:
        asyncio.run_coroutine_threadsafe(delete(), loop).result(30)

    browser.point_at(api.client)
    seen = await browser.drive(lambda: _fail_and_rerun(browser, run["Id"], delete_upload), 120)
    assert [s[1] for s in seen["steps"]] == ["done", "done", "failed"] + ["not-reached"] * 13
    assert seen["steps"][2][0] == "KLayout.CheckSize"
    assert seen["steps"][3][0] == "KLayout.GenerateID", "steps not reached are named too"
    assert seen["new_id"] != run["Id"]
    assert seen["new_run_id_shown"] == seen["new_id"]
    new = await api.get(seen["new_id"])
    assert new["Config"]["Labels"] == run["Config"]["Labels"]
    assert seen["new_steps"][:3] == ["done", "done", "failed"]
    text, is_error = seen["rerun_refused"]
    assert text.startswith("could not re-run: ") and "Upload the layout again" in text, text
    assert is_error
    assert seen["url_after_refusal"].endswith(seen["new_id"])


def _cancel(browser: Browser, run_id: str) -> dict[str, Any]:
    """Cancel a running run from its page: once changing one's mind, then for real."""
    seen: dict[str, Any] = {}
    browser.open(f"#/runs/{run_id}")
    # Some step is running (which one depends on how fast the browser came up).
    browser.until(lambda _: "running" in _states(browser))
    browser.screenshot("run-page-running.png")
    browser.find("cancel-run").click()
    question = browser.until_alert()
    seen["question"] = question.text
    question.dismiss()
    seen["after_dismiss"] = browser.find("run-state").text
    browser.find("cancel-run").click()
    browser.until_alert().accept()
    browser.until_text("run-state", "cancelled")
    browser.until(lambda _: "cancelled" in _states(browser))
    browser.until_visible("rerun")
    seen["steps"] = _states(browser)
    seen["cancel_shown"] = browser.find("cancel-run").is_displayed()
    seen["verdict"] = browser.find("verdict-text").text
    return seen


async def test_run_page_cancels_a_running_run(
    browser: Browser,
    start_app: StartApp,
    sim_config: Callable[..., Config],
) -> None:
    """Cancel asks first; confirmed, the run is cancelled and its step shows it."""
    api = await start_app(sim_config())
    run_id = await api.run(gds("chip_top", "step_sleep=1"))
    browser.point_at(api.client)
    seen = await browser.drive(lambda: _cancel(browser, run_id), 120)
    assert run_id[:12] in seen["question"]
    assert seen["after_dismiss"] == "running"
    assert (await api.get(run_id))["State"]["Status"] == "cancelled"
    states = seen["steps"]
    assert states.count("cancelled") == 1, states
    assert set(states[: states.index("cancelled")]) <= {"done"}, states
    assert set(states[states.index("cancelled") + 1 :]) == {"not-reached"}, states
    assert not seen["cancel_shown"]
    assert seen["verdict"] == "Cancelled."


def _big_log(browser: Browser, run_id: str, total: int) -> dict[str, Any]:
    """Open the page of a run with a long log; how long the page took. Blocking: in a thread."""
    import time

    seen: dict[str, Any] = {}
    start = time.monotonic()
    browser.open(f"#/runs/{run_id}")
    browser.until_text("log-count", f"{total} lines", 60)
    seen["load_seconds"] = time.monotonic() - start
    # The page answers at once: a script run now is not stuck behind the log.
    start = time.monotonic()
    browser.script("return 1")
    seen["script_seconds"] = time.monotonic() - start
    seen["at_end"] = browser.script(
        "const l = document.getElementById('log');"
        "return l.scrollHeight - l.scrollTop - l.clientHeight < 30"
    )
    start = time.monotonic()
    browser.find("log-search").send_keys("noise 99999\n")
    browser.until_text("search-count", "of 1", 60)
    seen["search_seconds"] = time.monotonic() - start
    seen["search_line"] = browser.script(LINE_JS, "#log .line.current")
    seen["states"] = _states(browser)
    return seen


async def test_run_page_keeps_up_with_a_long_log(
    browser: Browser,
    start_app: StartApp,
    sim_config: Callable[..., Config],
) -> None:
    """100,000 lines come in batches: all shown, the end followed, search quick."""
    api = await start_app(sim_config())
    run_id = await api.run(gds("chip_top", "lines=100000"))
    await api.wait(run_id, 120)
    total = (await api.logs(run_id, tail=1))["last_line"]
    assert total > 100000
    browser.point_at(api.client)
    seen = await browser.drive(lambda: _big_log(browser, run_id, total), 150)
    assert seen["states"] == ["done"] * 16
    assert seen["at_end"], "the log does not follow its end"
    assert seen["search_line"][1] == "noise 99999\n" and seen["search_line"][2]
    assert seen["load_seconds"] < 30, seen
    assert seen["search_seconds"] < 5, seen


def _preflight(browser: Browser, layout: Path) -> dict[str, Any]:
    """Upload a die and use the pre-flight hints: what was seen. Blocking: run in a thread."""
    seen: dict[str, Any] = {}

    def codes() -> list[str]:
        # In one script: the list is redrawn as answers come, elements found may go stale.
        found: list[str] = browser.script(
            "return [...document.querySelectorAll('#preflight-checks li')]"
            ".map((li) => li.dataset.code)"
        )
        return found

    browser.open()
    browser.until_clickable("file")
    browser.find("file").send_keys(str(layout))
    browser.css("#upload-form button[type=submit]").click()
    browser.until_text("upload-status", "uploaded")

    # Once the layout is read: its top cells offered, its slot chosen, the checks passed.
    browser.until_text("preflight-status", "passed")
    seen["offered"] = browser.script(
        "return [...document.querySelectorAll('#top-cells option')].map((o) => o.value)"
    )
    seen["top_cell"] = browser.find("top-cell").get_attribute("value")
    seen["slot"] = browser.select("slot").first_selected_option.text
    seen["passed_class"] = browser.find("preflight").get_attribute("class")

    # Another slot: the die no longer fits, and the page says so before Start.
    browser.select("slot").select_by_visible_text("1x1")
    browser.until(lambda _: codes() == ["size"])
    seen["size_message"] = browser.script(
        "return document.querySelector('#preflight-checks li').textContent"
    )
    # A top cell the layout lacks as well: both checks listed.
    top = browser.find("top-cell")
    top.clear()
    top.send_keys("no_such_top")
    browser.until(lambda _: codes() == ["top_cell", "size"])
    seen["both"] = codes()

    # Start is refused (422): the page stays and lists the checks.
    browser.css("#run-form button[type=submit]").click()
    browser.until_text("run-status", "not started")
    seen["refused_url"] = browser.driver.current_url
    seen["refused_codes"] = codes()
    seen["shot"] = browser.screenshot("browser-preflight.png")

    # Ticked "start even if pre-flight fails": the run is queued and shown.
    browser.find("preflight-warn").click()
    browser.css("#run-form button[type=submit]").click()
    browser.until(lambda d: "#/runs/" in d.current_url)
    seen["run_id"] = browser.driver.current_url.rsplit("/", 1)[1]
    return seen


async def test_page_shows_pre_flight_before_start(
    browser: Browser,
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    """After an upload the page offers the layout's top cells, picks the slot its die fits,
    shows failed checks as top cell and slot change, and refuses Start until told to warn."""
    config = make_config(preflight={"enabled": True})
    client = await aiohttp_client(create_app(config, run_containers=False))
    layout = tmp_path / "design.gds"
    layout.write_bytes(die("0p5x1"))
    browser.point_at(client)

    seen = await browser.drive(lambda: _preflight(browser, layout), 60)

    assert seen["offered"] == ["chip_top"]
    assert seen["top_cell"] == "chip_top"  # the only top cell, not the file's name
    assert seen["slot"] == "0p5x1"
    assert "passed" in seen["passed_class"]
    assert "3932 x 5122" in seen["size_message"] and "1936 x 5122" in seen["size_message"]
    assert seen["both"] == ["top_cell", "size"]
    assert "#/runs/" not in seen["refused_url"]
    assert seen["refused_codes"] == ["top_cell", "size"]
    run = await (await client.get(f"/api/v1/prechecks/{seen['run_id']}")).json()
    assert run["Config"]["Labels"]["top_cell"] == "no_such_top"
    assert (run["Preflight"]["Mode"], run["Preflight"]["Status"]) == ("warn", "failed")
    assert seen["shot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


REAL_REPORTS = Path(__file__).parent / "fixtures" / "real_runs" / "reports"


async def _ended_like_the_drc_case(client: Any, case: str = "drc") -> str:
    """A run of a 0p5x0p5 die ended as the real `case` did: its real reports (and the flow's
    warning.log and error.log) kept and read, a render of the die made the way the flow's
    render step makes it, 968 x 1265 px, and a warning."""
    layout = die("0p5x0p5")
    form = aiohttp.FormData()
    form.add_field("file", layout, filename="chip_top.gds")
    upload = await (await client.post("/api/v1/uploads", data=form)).json()
    for _ in range(200):  # the layout is read in a child process
        doc = await (await client.get(f"/api/v1/uploads/{upload['Id']}")).json()
        if doc["Layout"]["Status"] != "pending":
            break
        await asyncio.sleep(0.05)
    assert doc["Layout"]["Status"] == "done", doc["Layout"]
    body = {"upload_id": upload["Id"], "top_cell": "chip_top", "slot": "0p5x0p5"}
    run = await (await client.post("/api/v1/prechecks", json=body)).json()
    run_id: str = run["Id"]
    run_dir = client.app[keys.STORAGE].run_dir(run_id)
    files = []
    for src in sorted((REAL_REPORTS / case).rglob("*.*")):
        inner = src.relative_to(REAL_REPORTS / case)
        rel = f"run/{inner.parent}/reports/{src.name}" if inner.parent.name else f"run/{src.name}"
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, run_dir / rel)
        files.append(OutputFile(rel, src.stat().st_size, "0" * 64))
    png = run_dir / "run/final/render/chip_top.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(render_like_the_flow(layout, 968))
    files.append(OutputFile("run/final/render/chip_top.png", png.stat().st_size, "1" * 64))
    found = store_findings(run_dir, files)
    at = datetime.now(UTC)
    exited = RunExited(
        run_id, "failed", 1, "deferred errors: 3 KLayout DRC", "design", {"KLayout DRC": 3},
        False, at, at, warnings=("3 Magic DRC errors found.",), warning_count=1,
        errors=("3 KLayout DRC errors found. - deferred",), error_count=1,
    )  # fmt: skip
    await client.app[keys.STORE].append(
        [
            RunStarted(run_id, "c" * 64, "sim", "sha256:x", at),
            exited,
            RunOutputsStored(run_id, None, tuple(files), {}, None, at, findings=found),
        ],
        Metadata("supervisor"),
    )
    return run_id


def _findings(browser: Browser, run_id: str) -> dict[str, Any]:
    """Open the run, read its warnings and findings, choose DE.2: what was seen."""
    seen: dict[str, Any] = {}
    browser.open(f"#/runs/{run_id}")
    browser.until_visible("notes")
    browser.until_visible("findings-card")
    browser.until(lambda _: browser.css_all("#findings tr[data-rule]"))
    seen["warnings"] = [li.text for li in browser.css_all("#warnings li")]
    seen["errors"] = [li.text for li in browser.css_all("#errors li")]
    seen["notes_above_log"] = browser.script(
        "return !!(document.getElementById('notes').compareDocumentPosition("
        "document.getElementById('log')) & Node.DOCUMENT_POSITION_FOLLOWING)"
    )
    seen["checks"] = [h.text for h in browser.css_all("#findings h4")]
    seen["clear"] = [p.text for p in browser.css_all("#findings .clear")]
    seen["rules"] = [
        [td.text for td in tr.find_elements("css selector", "td")][:3]
        for tr in browser.css_all("#findings tr[data-rule]")
    ]
    browser.css("#findings tr[data-rule='DE.2'] button").click()
    browser.until(lambda _: len(browser.css_all("#marker-list li")) == 2)
    browser.until(lambda _: browser.find("findings-render").get_attribute("naturalWidth") != "0")
    seen["title"] = browser.find("marker-title").text
    seen["markers"] = [li.text for li in browser.css_all("#marker-list li")]
    seen["viewbox"] = browser.script(
        "return document.getElementById('markers').getAttribute('viewBox')"
    )
    seen["shapes"] = browser.script(
        "return [...document.querySelectorAll('#markers .shape')]"
        ".map((s) => s.getAttribute('points'))"
    )
    seen["rings"] = len(browser.css_all("#markers .spot"))
    # A marker's line zooms in on it: its ring ends up in the middle of the frame.
    browser.css("#marker-list li").click()
    browser.until(
        lambda _: "scale(16)" in (browser.find("render-box").get_attribute("style") or "")
    )
    seen["off_centre"] = browser.script(
        "const f = document.getElementById('render-frame').getBoundingClientRect();"
        "const r = document.querySelector('#markers .spot').getBoundingClientRect();"
        "return [r.x + r.width / 2 - (f.x + f.width / 2),"
        " r.y + r.height / 2 - (f.y + f.height / 2)]"
    )
    # The flow's error.log, whole, when its line is opened.
    browser.css("#errors-file summary").click()
    browser.until(lambda _: browser.find("errors-file-text").text)
    seen["error_log"] = browser.find("errors-file-text").text
    seen["error_log_size"] = browser.find("errors-file-size").text
    seen["warning_log_shown"] = browser.find("warnings-file").is_displayed()
    seen["shot"] = browser.screenshot("run-page-findings.png")
    return seen


async def test_run_page_shows_warnings_findings_and_draws_a_rules_markers(
    browser: Browser,
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
) -> None:
    """The real drc case's reports: warnings and errors above the log, a panel per check (the
    clean Magic report says so), and DE.2's two edge pairs listed as KLayout writes them and
    drawn over the render where the die box puts them."""
    config = make_config(preflight={"enabled": True})
    client = await aiohttp_client(create_app(config, run_containers=False))
    run_id = await _ended_like_the_drc_case(client)
    browser.point_at(client)

    seen = await browser.drive(lambda: _findings(browser, run_id), 60)

    assert seen["warnings"] == ["3 Magic DRC errors found."]
    assert seen["errors"] == ["3 KLayout DRC errors found. - deferred"]
    assert seen["notes_above_log"]
    assert seen["checks"] == [
        "Magic.DRC: 12-magic-drc/drc.magic.lyrdb",
        "KLayout.DRC: 14-klayout-drc/drc.klayout.lyrdb",
    ]
    assert seen["clear"] == ["clear: no rule fired"]
    assert [r[:2] for r in seen["rules"]] == [["DE.2", "2"], ["DE.4", "1"]]
    assert seen["rules"][0][2].startswith("DE.2 :")
    assert seen["title"].startswith("DE.2: 2 markers")
    assert seen["markers"][0] == "edge-pair: (30,100;30,100.5)|(30.5,100.5;30.5,100)"
    assert seen["viewbox"] == "0 0 968 1265"
    # (30 µm, 100 µm) of the 1936 x 2531 µm die, where the render drew the die (its margins
    # measured on the render itself).
    left, top, right, bottom = drawn_bounds(render_like_the_flow(die("0p5x0p5"), 968))
    first = [tuple(float(c) for c in p.split(",")) for p in seen["shapes"][0].split()]
    at = (left + 30 / 1936 * (right - left), bottom - 100 / 2531 * (bottom - top))
    assert first[0] == pytest.approx(at, abs=1.5)
    assert seen["rings"] == 2
    # Within a few screen pixels at 16 times: a fraction of a pixel of the render.
    assert all(abs(d) < 4 for d in seen["off_centre"]), seen["off_centre"]
    # The flow's own error.log is there to read whole; its warning.log was empty: not offered.
    error_log = (REAL_REPORTS / "drc" / "error.log").read_text()
    assert seen["error_log"] == error_log.strip()
    assert seen["error_log_size"] == f"({len(error_log.encode())} bytes)"
    assert not seen["warning_log_shown"]


def _density_marker(browser: Browser, run_id: str) -> str:
    """Open the run, choose the density rule M1.4: its marker's points."""
    browser.open(f"#/runs/{run_id}")
    browser.until_visible("findings-card")
    browser.until(lambda _: browser.css_all("#findings tr[data-rule='M1.4']"))
    browser.css("#findings tr[data-rule='M1.4'] button").click()
    browser.until(lambda _: browser.css_all("#markers .shape"))
    browser.until(lambda _: browser.find("findings-render").get_attribute("naturalWidth") != "0")
    points: str = browser.script(
        "return document.querySelector('#markers .shape').getAttribute('points')"
    )
    return points


async def test_a_marker_lies_where_the_flow_s_render_drew_its_place(
    browser: Browser,
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
) -> None:
    """The real density case's marker is the whole die: drawn over a render made the way the
    flow makes it, it covers what the render drew to within a pixel and a half (the render fits
    the layout with a margin, so µm do not map to the image's edges)."""
    config = make_config(preflight={"enabled": True})
    client = await aiohttp_client(create_app(config, run_containers=False))
    run_id = await _ended_like_the_drc_case(client, "density")
    browser.point_at(client)

    points = await browser.drive(lambda: _density_marker(browser, run_id), 60)

    xy = [tuple(float(c) for c in p.split(",")) for p in points.split()]
    xs, ys = [x for x, _ in xy], [y for _, y in xy]
    drawn = drawn_bounds(render_like_the_flow(die("0p5x0p5"), 968))
    assert (min(xs), min(ys), max(xs), max(ys)) == pytest.approx(drawn, abs=1.5)
    # Not the image's edges: the render's margin is some 23 px of 968.
    assert min(xs) > 20


PAD = 200  # the real flow pads its logger lines to the terminal's width
REAL_LIKE_LOG = [
    "None",
    " Check Slot Size ".center(PAD, "─"),
    "[21:24:33] VERBOSE  Running 'KLayout.CheckSize' at 'runs/RUN/03-klayout-checksize'…".ljust(
        PAD - 12
    )
    + "step.py:1138",
    "[21:24:49] INFO     Check for Magic DRC errors clear.".ljust(PAD - 14) + "checker.py:131",
    "[21:33:00] WARNING  3 Magic DRC errors found.".ljust(PAD - 14) + "checker.py:122",
    "[21:32:36] ERROR    3 KLayout DRC errors found. - deferred".ljust(PAD - 14) + "checker.py:124",
    # As an image run with `TERM` set prints a logger line: dim cyan time, blue level.
    "\x1b[2;36m[21:24:52]\x1b[0m\x1b[2;36m \x1b[0m\x1b[34mINFO    \x1b[0m Check for "
    "\x1b[1;31mKLayout DRC\x1b[0m errors clear.        \x1b[2mchecker.py\x1b[0m\x1b[2m:131\x1b[0m",
    "a tool's own line",
    # Coloured, a step line's quoted names are coloured too; it still starts step 4.
    "\x1b[2;36m[21:24:53]\x1b[0m \x1b[2mVERBOSE \x1b[0m Running \x1b[32m'KLayout.GenerateID'\x1b[0m"
    " at \x1b[32m'runs/RUN/04-klayout-generateid'\x1b[0m…     \x1b[2mstep.py:1138\x1b[0m",
]


async def _ended_with_a_real_like_log(client: Any) -> str:
    """A run (no container) whose stored log is `REAL_LIKE_LOG`, ended as passed."""
    form = aiohttp.FormData()
    form.add_field("file", gds("chip_top"), filename="chip_top.gds")
    upload = await (await client.post("/api/v1/uploads", data=form)).json()
    body = {"upload_id": upload["Id"], "top_cell": "chip_top"}
    run_id: str = (await (await client.post("/api/v1/prechecks", json=body)).json())["Id"]
    lines = [
        OutputLine(n, f"2026-11-26T12:00:{n:02d}.000000001Z", "stdout", text)
        for n, text in enumerate(REAL_LIKE_LOG, 1)
    ]
    await client.app[keys.OUTPUT_LINES].append(run_id, blocks_of(lines))
    at = datetime.now(UTC)
    await client.app[keys.STORE].append(
        [
            RunStarted(run_id, "c" * 64, "sim", "sha256:x", at),
            RunExited(run_id, "completed", 0, "", None, {}, False, at, at),
            RunOutputsStored(run_id, None, (), {}, None, at),
        ],
        Metadata("supervisor"),
    )
    return run_id


LOOK_JS = (
    "const look = (l, sel, key) => {"
    " const el = l.querySelector(sel); return el && getComputedStyle(el)[key]; };"
    "return [...document.querySelectorAll('#log .line')].map((l) => ({"
    " cls: l.className, text: l.textContent,"
    " parts: [...l.children].filter((c) => c.tagName === 'SPAN').map((c) => c.className),"
    " levelColour: look(l, '.level', 'color'), sourceFloat: look(l, '.source', 'cssFloat'),"
    " ansi: [...l.querySelectorAll('[class^=a-]')].map((a) => [a.className, a.textContent,"
    " getComputedStyle(a).color]) }))"
)


def _real_like_log(browser: Browser, run_id: str) -> dict[str, Any]:
    """Open the run and read how each log line is shown; search in the coloured one."""
    seen: dict[str, Any] = {}
    browser.open(f"#/runs/{run_id}")
    browser.until_text("log-count", f"{len(REAL_LIKE_LOG)} lines")
    seen["lines"] = browser.script(LOOK_JS)
    seen["steps"] = _states(browser)
    browser.find("log-search").send_keys("KLayout DRC errors clear\n")
    browser.until_text("search-count", "1 of 1")
    seen["marks"] = browser.script(
        "return [...document.querySelectorAll('#log mark')].map((m) => m.textContent)"
    )
    seen["shot"] = browser.screenshot("run-page-real-like-log.png")
    return seen


async def test_run_page_shows_the_log_as_the_real_flow_prints_it(
    browser: Browser,
    aiohttp_client: AiohttpClient,
    make_config: Callable[..., Config],
) -> None:
    """Logger lines of each level coloured by level, their padding trimmed and the source
    reference set apart; a rule line shown as a step header; ANSI colours shown as colours,
    their sequences gone; the stored log unchanged."""
    client = await aiohttp_client(create_app(make_config(), run_containers=False))
    run_id = await _ended_with_a_real_like_log(client)
    browser.point_at(client)

    seen = await browser.drive(lambda: _real_like_log(browser, run_id), 60)

    none, rule, step, info, warning, error, coloured, tool, coloured_step = seen["lines"]
    assert (none["cls"], none["text"], none["parts"]) == ("line", "None\n", [])
    assert (rule["cls"], rule["text"]) == ("line rule", "Check Slot Size\n")
    assert step["cls"] == "line head"
    assert step["text"] == (
        "[21:24:33] VERBOSE Running 'KLayout.CheckSize' at 'runs/RUN/03-klayout-checksize'…"
        " step.py:1138\n"
    )
    assert step["parts"] == ["time", "level", "message", "source"]
    assert info["cls"] == "line lv-info"
    assert info["text"] == "[21:24:49] INFO Check for Magic DRC errors clear. checker.py:131\n"
    assert (warning["cls"], error["cls"]) == ("line lv-warning", "line lv-error")
    assert error["text"] == (
        "[21:32:36] ERROR 3 KLayout DRC errors found. - deferred checker.py:124\n"
    )
    colours = {line["levelColour"] for line in (info, warning, error)}
    assert len(colours) == 3, "each level in its own colour"
    assert {line["sourceFloat"] for line in (step, info, warning, error)} == {"right"}
    assert coloured["cls"] == "line lv-info"
    assert (
        coloured["text"] == "[21:24:52] INFO Check for KLayout DRC errors clear. checker.py:131\n"
    )
    assert "\x1b" not in coloured["text"]
    ansi = {cls: (text, colour) for cls, text, colour in coloured["ansi"]}
    assert ansi["a-b a-f1"] == ("KLayout DRC", "rgb(255, 107, 104)")
    assert ansi["a-f4"][0] == "INFO"
    assert ansi["a-d a-f6"][0] == "[21:24:52]"
    assert (tool["cls"], tool["text"]) == ("line", "a tool's own line\n")
    assert coloured_step["cls"] == "line head"
    assert coloured_step["text"] == (
        "[21:24:53] VERBOSE Running 'KLayout.GenerateID' at 'runs/RUN/04-klayout-generateid'…"
        " step.py:1138\n"
    )
    # Steps 3 and 4 were announced, the coloured line's too; none after them.
    assert "not-reached" not in seen["steps"][2:4] and seen["steps"][4] == "not-reached", seen
    assert seen["marks"] == ["KLayout DRC", " errors clear"]  # over two looks: marked in each
    r = await client.get(f"/api/v1/prechecks/{run_id}/logs", params={"format": "text"})
    assert await r.text() == "".join(line + "\n" for line in REAL_LIKE_LOG)


async def test_run_page_shows_whom_the_end_was_told(
    browser: Browser,
    start_app: StartApp,
    sim_config: Callable[..., Config],
) -> None:
    """An ended run's page lists its notifications: target (redacted) and how each stands."""
    from precheck.config import NotifyConfig
    from tests.notify_receivers import SECRET, start_receiver

    receiver = await start_receiver()
    url = receiver.url
    try:
        notify = NotifyConfig(allowed_hosts=("127.0.0.1",), webhook_secret=SECRET)
        api = await start_app(attrs.evolve(sim_config(), notify=notify))
        upload_id = await api.upload(gds("chip_top"), "chip_top.gds")
        run = await api.create(upload_id, notify=[{"webhook": receiver.url + "?token=x"}])
        await api.wait(run["Id"])
        await receiver.wait(1, 30)
        browser.point_at(api.client)

        def look() -> str:
            browser.open(f"#/runs/{run['Id']}")
            browser.until_visible("notifications")
            browser.until_text("notification-list", "delivered")
            return str(browser.find("notification-list").text)

        shown = await browser.drive(look, 60)
    finally:
        await receiver.server.close()
    assert shown == f"webhook {url}: delivered (1 attempt)"


async def test_run_page_shows_the_image_and_the_command_to_run_it(
    browser: Browser,
    start_app: StartApp,
    sim_config: Callable[..., Config],
) -> None:
    """A started run's page names its image (by id: built here, no repo digest) and shows the
    document's `docker run` line, which the copy button copies (or selects, with no clipboard)."""
    api = await start_app()
    run_id = await api.run(gds("chip_top"), "chip_top.gds")
    await api.wait(run_id)
    doc = await api.get(run_id)
    browser.point_at(api.client)

    def look() -> dict[str, Any]:
        browser.open(f"#/runs/{run_id}")
        browser.until_visible("image-card")
        browser.until_text("run-image", doc["Image"])
        seen = {
            "image": browser.find("run-image").text,
            "layout": browser.find("run-layout").text,
            "command": browser.script("return document.getElementById('run-command').textContent"),
        }
        browser.find("copy-command").click()
        browser.until(lambda _: browser.find("copy-status").text)
        seen["copied"] = browser.find("copy-status").text
        seen["selected"] = browser.script("return getSelection().toString()")
        seen["shot"] = browser.screenshot("run-page-image.png")
        return seen

    seen = await browser.drive(look, 60)
    assert seen["image"] == f"{doc['Image']} (built on the engine: no repo digest)"
    assert seen["layout"] == "chip_top.gds"
    assert seen["command"] == doc["RunItYourself"]["Command"]
    assert seen["command"].startswith("docker run --rm --network none --memory ")
    assert seen["copied"] in ("copied", "selected: copy it with your keyboard")
    if seen["copied"] != "copied":
        assert seen["selected"].strip() == seen["command"]


async def test_run_page_rechecks_with_the_latest_image(
    browser: Browser,
    start_app: StartApp,
    sim_config: Callable[..., Config],
) -> None:
    """An ended run's "Re-check" button opens the new run's page, which names the run it
    re-checks with a link back."""
    api = await start_app()
    run_id = await api.run(gds("chip_top"), "chip_top.gds")
    await api.wait(run_id)
    browser.point_at(api.client)

    def recheck() -> dict[str, Any]:
        browser.open(f"#/runs/{run_id}")
        browser.until_visible("recheck")
        browser.find("recheck").click()
        browser.until(lambda d: not d.current_url.endswith(run_id))
        browser.until_visible("recheck-of")
        link = browser.find("recheck-of-link")
        return {
            "new_id": browser.driver.current_url.rsplit("/", 1)[1],
            "text": browser.find("recheck-of").text,
            "href": link.get_attribute("href"),
        }

    seen = await browser.drive(recheck, 60)
    assert seen["text"] == f"A re-check, with the image resolved anew, of run {run_id}"
    assert seen["href"].endswith(f"#/runs/{run_id}")
    doc = await api.get(seen["new_id"])
    assert doc["RecheckOf"] == run_id
