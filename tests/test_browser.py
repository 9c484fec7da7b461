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


def _drive(base_url: str, layout: Path, profile: Path, shot: Path) -> dict[str, Any]:
    """Do what a user does on the page; what was seen. Blocking: run in a thread."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

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
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    seen: dict[str, Any] = {}
    try:
        wait = WebDriverWait(driver, WAIT)
        find = driver.find_element
        driver.get(base_url)

        # The API wants a key: the page asks for it.
        wait.until(ec.visibility_of_element_located((By.ID, "key-form")))
        find(By.ID, "key").send_keys(KEY)
        find(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
        wait.until(ec.invisibility_of_element_located((By.ID, "key-form")))

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
