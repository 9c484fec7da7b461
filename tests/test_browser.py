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

from precheck.config import ApiKey, AuthConfig, Config
from tests.docker_fixtures import StartApp
from tests.layouts import gds

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
    assert seen["statuses"] == ["queued", "running", "failed"], seen["statuses"]
    assert seen["failure_cell"].startswith("design: "), seen["failure_cell"]
    assert seen["failure_cell"].endswith("(KLayout.CheckSize)"), seen["failure_cell"]
    assert seen["summary"].startswith("0 queued, 0 running"), seen["summary"]
    assert seen["missing"]["id"] == "0123456789abcdef"
    assert "chip_top" not in seen["missing"]["summary"]
    assert "No such precheck" in seen["missing"]["summary"]
    assert seen["missing"]["conn"] == "not found"
