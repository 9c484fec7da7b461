"""The web page in headless Chromium: key, upload, start a run, follow it live, see the verdict.

Driven by selenium against Debian's `chromium` and `chromium-driver`, on an app that requires an
API key and runs the simulator image. Selenium calls block, so they run in a thread while the
app keeps serving on the test's event loop. A screenshot is saved under `artifacts/`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import ApiKey, AuthConfig, Config
from tests.docker_fixtures import StartApp
from tests.layouts import gds
from tests.real_layouts import die

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = "k1"
WAIT = 20  # seconds for anything the page must show


@pytest.fixture
def chromium() -> tuple[Path, Path]:
    """Chromium and its driver; missing, the test is skipped (it fails under CI)."""
    problems = [f"{p} is missing" for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        problems.append("selenium is not installed")
    if problems:
        why = "needs headless Chromium (Debian `chromium`, `chromium-driver`) and selenium: "
        why += "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return CHROMIUM, CHROMEDRIVER


def _browser(profile: Path) -> Any:
    """A headless Chromium driven by selenium, with no network of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1400",
    ):
        options.add_argument(arg)
    # Saved downloads stay in the test's own folder.
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(profile / "downloads")}
    )
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _drive(base_url: str, layout: Path, profile: Path, shot: Path) -> dict[str, Any]:
    """Do what a user does on the page; what was seen. Blocking: run in a thread."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(profile)
    seen: dict[str, Any] = {}
    try:
        wait = WebDriverWait(driver, WAIT)
        find = driver.find_element
        driver.get(base_url)

        # The API wants a key: the page asks for it; a wrong one is refused in other words.
        wait.until(ec.visibility_of_element_located((By.ID, "key-form")))
        seen["asked"] = find(By.ID, "key-why").text
        find(By.ID, "key").send_keys("not-the-key")
        find(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "key-why"), "refused"))
        find(By.ID, "key").send_keys(KEY)
        find(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        wait.until(ec.invisibility_of_element_located((By.ID, "key-form")))

        seen["status_after_good_key"] = find(By.ID, "upload-status").text

        # Upload through the file input; the status line reports it.
        find(By.ID, "file").send_keys(str(layout))
        find(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "upload-status"), "uploaded"))
        seen["upload_status"] = find(By.ID, "upload-status").text
        seen["upload_error"] = "error" in (
            find(By.ID, "upload-status").get_attribute("class") or ""
        )
        wait.until(lambda d: d.find_element(By.ID, "upload-id").get_attribute("value"))
        seen["upload_id"] = find(By.ID, "upload-id").get_attribute("value")

        # Start a run: top cell, then Start; the page goes to the run's own page.
        top = find(By.ID, "top-cell")
        top.clear()
        top.send_keys("chip_top")
        find(By.CSS_SELECTOR, "#run-form button[type=submit]").click()
        wait.until(lambda d: "#/runs/" in d.current_url)
        seen["run_id"] = driver.current_url.rsplit("/", 1)[1]
        wait.until(ec.visibility_of_element_located((By.ID, "run-page")))

        # Log lines arrive live, before the verdict is there.
        wait.until(
            lambda d: (d.find_element(By.ID, "log").get_attribute("textContent") or "").strip()
        )
        seen["verdict_shown_with_first_lines"] = find(By.ID, "verdict").is_displayed()

        # Then the verdict and the downloads.
        wait.until(ec.visibility_of_element_located((By.ID, "verdict")))
        wait.until(ec.text_to_be_present_in_element((By.ID, "verdict-text"), "Passed"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#downloads li")) >= 3)
        wait.until(lambda d: d.find_element(By.ID, "render").is_displayed())
        seen["verdict"] = find(By.ID, "verdict-text").text
        seen["state"] = find(By.ID, "run-state").text
        seen["step"] = find(By.ID, "run-step").text
        seen["downloads"] = [
            li.text for li in driver.find_elements(By.CSS_SELECTOR, "#downloads li")
        ]
        seen["log"] = find(By.ID, "log").get_attribute("textContent")
        seen["url"] = driver.current_url

        # With a key, a download link is fetched with it and saved: the raw log, whole.
        driver.execute_script(
            "window.saved = []; const make = URL.createObjectURL;"
            "URL.createObjectURL = (b) => { window.saved.push(b.size); return make(b); };"
        )
        find(By.ID, "raw-log").click()
        wait.until(lambda d: d.execute_script("return window.saved.length"))
        seen["raw_log_saved"] = driver.execute_script("return window.saved")
        seen["raw_log_status"] = find(By.ID, "run-action-status").text
        seen["url_after_download"] = driver.current_url
        assert driver.save_screenshot(str(shot)), "the screenshot was not written"
    finally:
        driver.quit()
    return seen


async def test_page_follows_a_run_live(
    chromium: tuple[Path, Path],
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
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-run.png"
    shot.unlink(missing_ok=True)
    profile = tmp_path / "chromium-profile"

    seen = await asyncio.wait_for(
        asyncio.to_thread(_drive, str(api.client.make_url("/")), layout, profile, shot), 60
    )

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

    # The page's log is exactly the captured log: every line once, in order.
    r = await api.client.get(f"/api/v1/prechecks/{run_id}/logs", headers=headers)
    lines = (await r.json())["lines"]
    assert [f"noise {i}" for i in range(1, 21)] == [x for x in lines if x.startswith("noise ")]
    assert seen["log"] == "".join(line + "\n" for line in lines)
    assert seen["raw_log_saved"] == [len(seen["log"].encode())], seen["raw_log_saved"]
    assert seen["raw_log_status"] == ""
    assert seen["url_after_download"] == seen["url"]

    assert shot.stat().st_size > 1000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _watch_home(base_url: str, profile: Path, start_runs: Callable[[], str]) -> dict[str, Any]:
    """Keep the home page open while runs are started; the statuses one row showed, in order,
    then open an unknown run id. Blocking: run in a thread."""
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(profile)
    seen: dict[str, Any] = {"statuses": []}
    try:
        wait = WebDriverWait(driver, WAIT)
        driver.get(base_url)
        wait.until(ec.text_to_be_present_in_element((By.ID, "conn"), "live"))
        # The browser itself checks the top cell's pattern (an invalid pattern is ignored).
        seen["pattern_checks"] = driver.execute_script(
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
            status = driver.execute_script(read, f"{row} .badge")
            if status and (not seen["statuses"] or seen["statuses"][-1] != status):
                seen["statuses"].append(status)
            if status in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        time.sleep(0.5)  # the list is refreshed once more after the last event
        seen["summary"] = driver.execute_script(read, "#queue-summary")
        seen["failure_cell"] = driver.execute_script(read, f"{row} td:nth-child(6)")

        # A run page, then an id that is no run: "not found", nothing of the previous run.
        driver.get(f"{base_url}#/runs/{run_id}")
        wait.until(ec.text_to_be_present_in_element((By.ID, "run-summary"), "chip_top"))
        driver.get(f"{base_url}#/runs/0123456789abcdef")
        wait.until(ec.text_to_be_present_in_element((By.ID, "run-state"), "not found"))
        seen["missing"] = {
            "id": driver.find_element(By.ID, "run-id").text,
            "summary": driver.find_element(By.ID, "run-summary").text,
            "conn": driver.find_element(By.ID, "conn").text,
        }
    finally:
        driver.quit()
    return seen


async def test_home_page_stays_true_through_a_runs_life(
    chromium: tuple[Path, Path],
    start_app: StartApp,
    sim_config: Callable[..., Config],
    tmp_path: Path,
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

    seen = await asyncio.wait_for(
        asyncio.to_thread(
            _watch_home, str(api.client.make_url("/")), tmp_path / "profile", start_runs
        ),
        120,
    )
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


def _states(driver: Any) -> list[str]:
    return [state for _, state, _ in driver.execute_script(STEPS_JS)]


def _use_run_page(base_url: str, profile: Path, run_id: str, shots: Path) -> dict[str, Any]:
    """Watch a run that passes on its page, then use its log viewer. Blocking: run in a thread."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(profile)
    seen: dict[str, Any] = {}
    try:
        wait = WebDriverWait(driver, WAIT)
        find = driver.find_element
        page = f"{base_url}#/runs/{run_id}"
        driver.get(page)

        # While it runs: a step running, the others waiting, the clock ticking, Cancel offered.
        wait.until(lambda d: "running" in _states(d))
        seen["running_states"] = set(_states(driver))
        seen["cancel_while_running"] = find(By.ID, "cancel-run").is_displayed()
        seen["rerun_while_running"] = find(By.ID, "rerun").is_displayed()
        before = find(By.ID, "run-elapsed").text
        wait.until(lambda d: d.find_element(By.ID, "run-elapsed").text != before)
        seen["elapsed"] = [before, find(By.ID, "run-elapsed").text]

        # At the end: every step done, each with its time; the times of the run.
        wait.until(ec.text_to_be_present_in_element((By.ID, "run-state"), "completed"))
        wait.until(lambda d: _states(d) == ["done"] * 16)
        wait.until(ec.visibility_of_element_located((By.ID, "verdict")))
        seen["steps"] = driver.execute_script(STEPS_JS)
        seen["times"] = {
            k: find(By.ID, f"run-{k}").text for k in ("created", "started", "finished", "elapsed")
        }
        seen["cancel_at_end"] = find(By.ID, "cancel-run").is_displayed()
        seen["rerun_at_end"] = find(By.ID, "rerun").is_displayed()
        seen["raw_log"] = {
            "href": find(By.ID, "raw-log").get_attribute("href"),
            "download": find(By.ID, "raw-log").get_attribute("download"),
        }
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#downloads a")) >= 3)
        seen["downloads"] = [
            (a.get_attribute("href"), a.get_attribute("download"))
            for a in driver.find_elements(By.CSS_SELECTOR, "#downloads a")
        ]
        seen["log_lines"] = driver.execute_script(
            "return document.querySelectorAll('#log .line').length"
        )

        # Search: matches are counted and highlighted; Enter goes to the next one.
        box = find(By.ID, "log-search")
        box.send_keys("noise 7")
        wait.until(ec.text_to_be_present_in_element((By.ID, "search-count"), "of"))
        seen["search_count"] = find(By.ID, "search-count").text
        seen["search_line"] = driver.execute_script(LINE_JS, "#log .line.current")
        seen["search_marks"] = driver.execute_script(
            "return Array.from(document.querySelectorAll('#log mark')).map(m => m.textContent)"
        )
        seen["follow_after_search"] = find(By.ID, "autoscroll").is_selected()
        driver.execute_script("window.scrollTo(0, 0)")
        assert driver.save_screenshot(str(shots / "run-page.png")), "no screenshot written"
        box.clear()
        box.send_keys("noise")
        wait.until(ec.text_to_be_present_in_element((By.ID, "search-count"), "of 20"))
        box.send_keys("\n")
        wait.until(ec.text_to_be_present_in_element((By.ID, "search-count"), "2 of 20"))
        seen["search_next"] = driver.execute_script(LINE_JS, "#log .line.current")
        find(By.ID, "search-prev").click()
        find(By.ID, "search-prev").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "search-count"), "20 of 20"))
        seen["search_wrapped"] = driver.execute_script(LINE_JS, "#log .line.current")
        box.clear()
        box.send_keys("\n")
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#log mark"))

        # Folding the Magic DRC step hides its lines, not its own line.
        section = "#log .sec[data-step='12']"
        noise = find(By.XPATH, "//div[@id='log']//div[contains(@class,'line')][.='noise 3\n']")
        find(By.CSS_SELECTOR, f"{section} .fold").click()
        seen["folded"] = [
            noise.is_displayed(),
            find(By.CSS_SELECTOR, f"{section} .head").is_displayed(),
        ]
        find(By.CSS_SELECTOR, f"{section} .fold").click()
        seen["unfolded"] = noise.is_displayed()

        # A line number is a link: clicking it puts the line in the address and marks it.
        find(By.CSS_SELECTOR, "#log .ln[data-n='3']").click()
        wait.until(lambda d: d.current_url.endswith("/L3"))
        seen["clicked_line"] = driver.execute_script(LINE_JS, "#log .line.target")

        # Opening an address with a line marks that line and scrolls it into sight.
        driver.get(f"{page}/L5")
        driver.refresh()
        wait.until(lambda d: d.execute_script(LINE_JS, "#log .line.target"))
        seen["opened_line"] = driver.execute_script(LINE_JS, "#log .line.target")
        seen["follow_with_line"] = find(By.ID, "autoscroll").is_selected()

        # A narrow screen: nothing wider than the window.
        driver.set_window_size(400, 1000)
        wait.until(lambda d: d.execute_script("return window.innerWidth") <= 400)
        seen["narrow_overflow"] = driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        driver.execute_script("window.scrollTo(0, 0)")
        assert driver.save_screenshot(str(shots / "run-page-narrow.png"))
    finally:
        driver.quit()
    return seen


async def test_run_page_shows_steps_times_and_a_log_to_search_and_link(
    chromium: tuple[Path, Path],
    start_app: StartApp,
    sim_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    """A passing run's page: steps as they go, then 16 done with times; the elapsed time
    ticks; search, fold, line links and the raw log link work."""
    api = await start_app(sim_config())
    run_id = await api.run(gds("chip_top", "step_sleep=0.4", "lines=20"))
    ARTIFACTS.mkdir(exist_ok=True)
    seen = await asyncio.wait_for(
        asyncio.to_thread(
            _use_run_page, str(api.client.make_url("/")), tmp_path / "profile", run_id, ARTIFACTS
        ),
        120,
    )
    assert "running" in seen["running_states"] and "waiting" in seen["running_states"], seen
    assert seen["cancel_while_running"] and not seen["rerun_while_running"]
    assert seen["elapsed"][0] != seen["elapsed"][1]

    run = await api.get(run_id)
    lines = (await api.logs(run_id))["lines"]
    steps = [line.split("'")[1] for line in lines if line.startswith("Running '")]
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
    base_url: str, profile: Path, run_id: str, delete_upload: Callable[[], None]
) -> dict[str, Any]:
    """A run failing at its third step; re-run it, then re-run once its upload is gone.
    Blocking: run in a thread."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(profile)
    seen: dict[str, Any] = {}
    try:
        wait = WebDriverWait(driver, WAIT)
        find = driver.find_element
        driver.get(f"{base_url}#/runs/{run_id}")
        wait.until(ec.text_to_be_present_in_element((By.ID, "run-state"), "failed"))
        wait.until(lambda d: "failed" in _states(d))
        wait.until(ec.visibility_of_element_located((By.ID, "rerun")))
        seen["steps"] = driver.execute_script(STEPS_JS)
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "run-page-failed.png"))

        find(By.ID, "rerun").click()
        wait.until(lambda d: not d.current_url.endswith(run_id))
        seen["new_id"] = driver.current_url.rsplit("/", 1)[1]
        wait.until(ec.text_to_be_present_in_element((By.ID, "run-summary"), "chip_top"))
        seen["new_run_id_shown"] = find(By.ID, "run-id").text
        wait.until(ec.text_to_be_present_in_element((By.ID, "run-state"), "failed"))
        wait.until(lambda d: "failed" in _states(d))
        seen["new_steps"] = _states(driver)

        # With the upload gone a re-run cannot be: the page says so and stays.
        delete_upload()
        wait.until(ec.visibility_of_element_located((By.ID, "rerun")))
        find(By.ID, "rerun").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "run-action-status"), "re-run"))
        status = find(By.ID, "run-action-status")
        seen["rerun_refused"] = [status.text, "error" in (status.get_attribute("class") or "")]
        seen["url_after_refusal"] = driver.current_url
    finally:
        driver.quit()
    return seen


async def test_run_page_shows_the_failed_step_and_re_runs(
    chromium: tuple[Path, Path],
    start_app: StartApp,
    sim_config: Callable[..., Config],
    tmp_path: Path,
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

    seen = await asyncio.wait_for(
        asyncio.to_thread(
            _fail_and_rerun,
            str(api.client.make_url("/")),
            tmp_path / "profile",
            run["Id"],
            delete_upload,
        ),
        120,
    )
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


def _cancel(base_url: str, profile: Path, run_id: str) -> dict[str, Any]:
    """Cancel a running run from its page: once changing one's mind, then for real."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(profile)
    seen: dict[str, Any] = {}
    try:
        wait = WebDriverWait(driver, WAIT)
        find = driver.find_element
        driver.get(f"{base_url}#/runs/{run_id}")
        # Some step is running (which one depends on how fast the browser came up).
        wait.until(lambda d: "running" in _states(d))
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "run-page-running.png"))
        find(By.ID, "cancel-run").click()
        wait.until(ec.alert_is_present())
        seen["question"] = driver.switch_to.alert.text
        driver.switch_to.alert.dismiss()
        seen["after_dismiss"] = find(By.ID, "run-state").text
        find(By.ID, "cancel-run").click()
        wait.until(ec.alert_is_present())
        driver.switch_to.alert.accept()
        wait.until(ec.text_to_be_present_in_element((By.ID, "run-state"), "cancelled"))
        wait.until(lambda d: "cancelled" in _states(d))
        wait.until(ec.visibility_of_element_located((By.ID, "rerun")))
        seen["steps"] = _states(driver)
        seen["cancel_shown"] = find(By.ID, "cancel-run").is_displayed()
        seen["verdict"] = find(By.ID, "verdict-text").text
    finally:
        driver.quit()
    return seen


async def test_run_page_cancels_a_running_run(
    chromium: tuple[Path, Path],
    start_app: StartApp,
    sim_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    """Cancel asks first; confirmed, the run is cancelled and its step shows it."""
    api = await start_app(sim_config())
    run_id = await api.run(gds("chip_top", "step_sleep=1"))
    seen = await asyncio.wait_for(
        asyncio.to_thread(_cancel, str(api.client.make_url("/")), tmp_path / "profile", run_id),
        120,
    )
    assert run_id[:12] in seen["question"]
    assert seen["after_dismiss"] == "running"
    assert (await api.get(run_id))["State"]["Status"] == "cancelled"
    states = seen["steps"]
    assert states.count("cancelled") == 1, states
    assert set(states[: states.index("cancelled")]) <= {"done"}, states
    assert set(states[states.index("cancelled") + 1 :]) == {"not-reached"}, states
    assert not seen["cancel_shown"]
    assert seen["verdict"] == "Cancelled."


def _big_log(base_url: str, profile: Path, run_id: str, total: int) -> dict[str, Any]:
    """Open the page of a run with a long log; how long the page took. Blocking: in a thread."""
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(profile)
    seen: dict[str, Any] = {}
    try:
        wait = WebDriverWait(driver, 60)
        start = time.monotonic()
        driver.get(f"{base_url}#/runs/{run_id}")
        wait.until(ec.text_to_be_present_in_element((By.ID, "log-count"), f"{total} lines"))
        seen["load_seconds"] = time.monotonic() - start
        # The page answers at once: a script run now is not stuck behind the log.
        start = time.monotonic()
        driver.execute_script("return 1")
        seen["script_seconds"] = time.monotonic() - start
        seen["at_end"] = driver.execute_script(
            "const l = document.getElementById('log');"
            "return l.scrollHeight - l.scrollTop - l.clientHeight < 30"
        )
        start = time.monotonic()
        driver.find_element(By.ID, "log-search").send_keys("noise 99999\n")
        wait.until(ec.text_to_be_present_in_element((By.ID, "search-count"), "of 1"))
        seen["search_seconds"] = time.monotonic() - start
        seen["search_line"] = driver.execute_script(LINE_JS, "#log .line.current")
        seen["states"] = _states(driver)
    finally:
        driver.quit()
    return seen


async def test_run_page_keeps_up_with_a_long_log(
    chromium: tuple[Path, Path],
    start_app: StartApp,
    sim_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    """100,000 lines come in batches: all shown, the end followed, search quick."""
    api = await start_app(sim_config())
    run_id = await api.run(gds("chip_top", "lines=100000"))
    await api.wait(run_id, 120)
    total = (await api.logs(run_id, tail=1))["last_line"]
    assert total > 100000
    seen = await asyncio.wait_for(
        asyncio.to_thread(
            _big_log, str(api.client.make_url("/")), tmp_path / "profile", run_id, total
        ),
        150,
    )
    assert seen["states"] == ["done"] * 16
    assert seen["at_end"], "the log does not follow its end"
    assert seen["search_line"][1] == "noise 99999\n" and seen["search_line"][2]
    assert seen["load_seconds"] < 30, seen
    assert seen["search_seconds"] < 5, seen


def _preflight(base_url: str, layout: Path, profile: Path, shot: Path) -> dict[str, Any]:
    """Upload a die and use the pre-flight hints: what was seen. Blocking: run in a thread."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = _browser(profile)
    seen: dict[str, Any] = {}

    def codes() -> list[str]:
        # In one script: the list is redrawn as answers come, elements found may go stale.
        found: list[str] = driver.execute_script(
            "return [...document.querySelectorAll('#preflight-checks li')]"
            ".map((li) => li.dataset.code)"
        )
        return found

    try:
        wait = WebDriverWait(driver, WAIT)
        find = driver.find_element
        driver.get(base_url)
        wait.until(ec.element_to_be_clickable((By.ID, "file")))
        find(By.ID, "file").send_keys(str(layout))
        find(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "upload-status"), "uploaded"))

        # Once the layout is read: its top cells offered, its slot chosen, the checks passed.
        wait.until(ec.text_to_be_present_in_element((By.ID, "preflight-status"), "passed"))
        seen["offered"] = driver.execute_script(
            "return [...document.querySelectorAll('#top-cells option')].map((o) => o.value)"
        )
        seen["top_cell"] = find(By.ID, "top-cell").get_attribute("value")
        seen["slot"] = Select(find(By.ID, "slot")).first_selected_option.text
        seen["passed_class"] = find(By.ID, "preflight").get_attribute("class")

        # Another slot: the die no longer fits, and the page says so before Start.
        Select(find(By.ID, "slot")).select_by_visible_text("1x1")
        wait.until(lambda d: codes() == ["size"])
        seen["size_message"] = driver.execute_script(
            "return document.querySelector('#preflight-checks li').textContent"
        )
        # A top cell the layout lacks as well: both checks listed.
        top = find(By.ID, "top-cell")
        top.clear()
        top.send_keys("no_such_top")
        wait.until(lambda d: codes() == ["top_cell", "size"])
        seen["both"] = codes()

        # Start is refused (422): the page stays and lists the checks.
        find(By.CSS_SELECTOR, "#run-form button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "run-status"), "not started"))
        seen["refused_url"] = driver.current_url
        seen["refused_codes"] = codes()
        assert driver.save_screenshot(str(shot)), "the screenshot was not written"

        # Ticked "start even if pre-flight fails": the run is queued and shown.
        find(By.ID, "preflight-warn").click()
        find(By.CSS_SELECTOR, "#run-form button[type=submit]").click()
        wait.until(lambda d: "#/runs/" in d.current_url)
        seen["run_id"] = driver.current_url.rsplit("/", 1)[1]
    finally:
        driver.quit()
    return seen


async def test_page_shows_pre_flight_before_start(
    chromium: tuple[Path, Path],
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
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-preflight.png"
    shot.unlink(missing_ok=True)

    seen = await asyncio.wait_for(
        asyncio.to_thread(
            _preflight, str(client.make_url("/")), layout, tmp_path / "profile", shot
        ),
        60,
    )

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
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
