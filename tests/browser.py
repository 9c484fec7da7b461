"""A headless Chromium for the page tests: the `browser` fixture, one session a test.

Driven by selenium against Debian's `chromium` and `chromium-driver`, with no network of its
own. Where either or selenium is missing the test is skipped, except under CI (env var `CI`
set), where it fails. Selenium calls block: `Browser.drive` runs them in a thread while the
app keeps serving on the test's event loop. Loaded from `tests/conftest.py`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.alert import Alert
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    SELENIUM_PROBLEM = ""
except ImportError:  # the fixture reports it: a skip, or a failure under CI
    SELENIUM_PROBLEM = "selenium is not installed"

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT = 20  # seconds for anything the page must show

T = TypeVar("T")


class Browser:
    """A headless Chromium on the app under test: its pages, elements by id or selector, waits."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver
        self.base_url = ""

    def point_at(self, client: TestClient[web.Request, web.Application]) -> None:
        """Open pages of the app `client` serves from now on."""
        self.base_url = str(client.make_url("/"))

    def url(self, fragment: str = "") -> str:
        """The address of the app's page with `fragment` (e.g. `#/runs/<id>`)."""
        return self.base_url + fragment

    def open(self, fragment: str = "") -> None:
        """Load the app's page with `fragment`."""
        self.driver.get(self.url(fragment))

    def find(self, element_id: str) -> WebElement:
        """The element with id `element_id`."""
        return self.driver.find_element("id", element_id)

    def css(self, selector: str) -> WebElement:
        """The first element matching the CSS `selector`."""
        return self.driver.find_element("css selector", selector)

    def css_all(self, selector: str) -> list[WebElement]:
        """Every element matching the CSS `selector`."""
        return self.driver.find_elements("css selector", selector)

    def xpath(self, path: str) -> WebElement:
        """The first element at the XPath `path`."""
        return self.driver.find_element("xpath", path)

    def script(self, js: str, *args: Any) -> Any:
        """What the script `js` returns, run in the page with `args` as `arguments`."""
        return self.driver.execute_script(js, *args)

    def select(self, element_id: str) -> Select:
        """The `<select>` with id `element_id`, to read or choose its options."""
        return Select(self.find(element_id))

    def until(self, condition: Callable[[Any], T], timeout: float = WAIT) -> T:
        """Wait until `condition(driver)` is true (at most `timeout` seconds); its value."""
        return WebDriverWait(self.driver, timeout).until(condition)

    def until_text(self, element_id: str, text: str, timeout: float = WAIT) -> None:
        """Wait until the element `element_id` shows `text`."""
        self.until(ec.text_to_be_present_in_element(("id", element_id), text), timeout)

    def until_visible(self, element_id: str) -> None:
        """Wait until the element `element_id` is shown."""
        self.until(ec.visibility_of_element_located(("id", element_id)))

    def until_hidden(self, element_id: str) -> None:
        """Wait until the element `element_id` is hidden or gone."""
        self.until(ec.invisibility_of_element_located(("id", element_id)))

    def until_clickable(self, element_id: str) -> None:
        """Wait until the element `element_id` can be clicked."""
        self.until(ec.element_to_be_clickable(("id", element_id)))

    def until_alert(self) -> Alert:
        """Wait for an alert or confirm dialog; the dialog."""
        self.until(ec.alert_is_present())
        return self.driver.switch_to.alert

    def screenshot(self, name: str) -> Path:
        """Save the window as `artifacts/<name>` (asserting it was written); its path."""
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        assert self.driver.save_screenshot(str(shot)), f"the screenshot {name} was not written"
        return shot

    async def drive(self, steps: Callable[[], T], timeout: float) -> T:  # noqa: ASYNC109
        """Run the blocking `steps` in a thread (at most `timeout` seconds); what they return."""
        return await asyncio.wait_for(asyncio.to_thread(steps), timeout)


def chromium_problems() -> list[str]:
    """Why no headless Chromium can be driven here; empty when it can."""
    problems = [f"{p} is missing" for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if SELENIUM_PROBLEM:
        problems.append(SELENIUM_PROBLEM)
    return problems


def start_chromium(profile: Path) -> webdriver.Chrome:
    """A headless Chromium with its profile (and saved downloads) under `profile`."""
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
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(profile / "downloads")}
    )
    # The page's console is kept, so a test can read what the browser refused (the CSP).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A fresh headless Chromium for the test, quit after it; point it at the app with
    `browser.point_at(client)`. Missing, the test is skipped (it fails under CI)."""
    problems = chromium_problems()
    if problems:
        why = "needs headless Chromium (Debian `chromium`, `chromium-driver`) and selenium: "
        why += "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    driver = start_chromium(tmp_path / "profile")
    try:
        yield Browser(driver)
    finally:
        driver.quit()
