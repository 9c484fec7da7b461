"""The page and the API page in headless Chromium under the server's Content-Security-Policy:
the browser refuses nothing they load, and both still draw."""

from __future__ import annotations

from typing import Any

from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from tests.browser import Browser


def _visit(browser: Browser) -> dict[str, Any]:
    """Open both pages; what they drew and what the console said. Blocking: run in a thread."""
    seen: dict[str, Any] = {}
    browser.driver.get(browser.base_url + "docs")
    browser.until(lambda _: browser.css_all("#api .op"))
    seen["docs_border"] = browser.script(
        "return getComputedStyle(document.querySelector('#api .op')).borderLeftStyle"
    )
    browser.open()
    browser.until(lambda _: browser.script("return document.readyState") == "complete")
    seen["module_ran"] = browser.script(
        "return document.querySelector('#whoami')?.textContent ?? ''"
    )
    seen["console"] = [m["message"] for m in browser.driver.get_log("browser")]  # type: ignore[no-untyped-call]
    return seen


async def test_the_pages_run_under_their_policy(
    browser: Browser, aiohttp_client: AiohttpClient, config: Config
) -> None:
    """Neither page meets a Content-Security-Policy refusal; the API page's styles apply and the
    home page's script runs (it fills in who is signed in)."""
    client = await aiohttp_client(create_app(config, run_containers=False))
    browser.point_at(client)
    seen = await browser.drive(lambda: _visit(browser), 60)
    refused = [m for m in seen["console"] if "Content Security Policy" in m]
    assert refused == [], refused
    assert seen["docs_border"] == "solid"
    assert seen["module_ran"].strip(), seen
