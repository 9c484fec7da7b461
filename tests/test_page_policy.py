"""The page and the API page in headless Chromium under the server's Content-Security-Policy:
the browser refuses nothing they load, and both still draw."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _browser(profile: Path) -> Any:
    """A headless Chromium that keeps the page's console messages."""
    problems = [f"{p} is missing" for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        problems.append("selenium is not installed")
    if problems:
        why = "needs headless Chromium and selenium: " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _visit(base: str, profile: Path) -> dict[str, Any]:
    """Open both pages; what they drew and what the console said. Blocking: run in a thread."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(profile)
    try:
        seen: dict[str, Any] = {}
        driver.get(base + "/docs")
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#api .op"))
        seen["docs_border"] = driver.execute_script(
            "return getComputedStyle(document.querySelector('#api .op')).borderLeftStyle"
        )
        driver.get(base + "/")
        WebDriverWait(driver, 20).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        seen["module_ran"] = driver.execute_script(
            "return document.querySelector('#whoami')?.textContent ?? ''"
        )
        seen["console"] = [m["message"] for m in driver.get_log("browser")]
        return seen
    finally:
        driver.quit()


async def test_the_pages_run_under_their_policy(
    aiohttp_client: AiohttpClient, config: Config, tmp_path: Path
) -> None:
    """Neither page meets a Content-Security-Policy refusal; the API page's styles apply and the
    home page's script runs (it fills in who is signed in)."""
    client = await aiohttp_client(create_app(config, run_containers=False))
    base = str(client.make_url("")).rstrip("/")
    seen = await asyncio.to_thread(_visit, base, tmp_path / "profile")
    refused = [m for m in seen["console"] if "Content Security Policy" in m]
    assert refused == [], refused
    assert seen["docs_border"] == "solid"
    assert seen["module_ran"].strip(), seen
