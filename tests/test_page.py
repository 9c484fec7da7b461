"""The page's static files agree with the server: event names, patterns, its policy."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_aiohttp import AiohttpClient

from precheck.app import create_app
from precheck.config import Config
from precheck.domain.commands import DIE_ID, TOP_CELL
from precheck.events.types import TAGS

STATIC = Path(__file__).resolve().parent.parent / "precheck" / "static"


def _js_list(name: str) -> list[str]:
    source = (STATIC / "app.js").read_text(encoding="utf-8")
    m = re.search(rf"const {name} = \[(.*?)\];", source, re.S)
    assert m is not None, f"{name} is not in app.js"
    return re.findall(r'"([^"]+)"', m.group(1))


def test_the_page_follows_every_run_and_upload_event() -> None:
    """The home page listens for exactly the run and upload events the server can send."""
    tags = set(TAGS.values())
    assert sorted(_js_list("RUN_EVENTS")) == sorted(t for t in tags if t.startswith("run."))
    assert sorted(_js_list("UPLOAD_EVENTS")) == sorted(t for t in tags if t.startswith("upload."))


def test_the_forms_patterns_are_the_servers_rules() -> None:
    """The top cell and die id patterns are the code's, written valid for the browser's `v`
    mode (a `-` in a class escaped)."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    patterns = dict(re.findall(r'id="(top-cell|die-id)"[^>]*pattern="([^"]+)"', html))
    assert patterns["top-cell"].replace("\\-", "-") == TOP_CELL.pattern
    assert patterns["die-id"] == DIE_ID.pattern
    for pattern in patterns.values():
        for cls in re.findall(r"\[([^\]]*)\]", pattern):
            assert not re.search(r"(?<!\\)-$", cls), f"unescaped '-' ends [{cls}]"


async def test_every_answer_carries_the_page_policy(
    aiohttp_client: AiohttpClient, config: Config
) -> None:
    """The page, the API page, their files, API answers, errors and streams all say: only this
    server's scripts and styles, no framing, no type sniffing."""
    client = await aiohttp_client(create_app(config, run_containers=False))
    paths = ["/", "/docs", "/static/app.js", "/static/style.css", "/api/v1/uploads", "/nowhere"]
    for path in paths:
        r = await client.get(path)
        assert r.headers.get("X-Content-Type-Options") == "nosniff", path
        assert r.headers.get("X-Frame-Options") == "DENY", path
        policy = r.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, path
    async with client.get("/api/v1/events?follow=1") as stream:
        assert stream.headers.get("X-Content-Type-Options") == "nosniff"


def test_the_pages_hold_no_inline_script_or_style() -> None:
    """What the policy would refuse is not in the pages: no inline script, style or handler."""
    for page in STATIC.glob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert "<style" not in html and " style=" not in html, page.name
        assert not re.search(r"<script(?![^>]*\ssrc=)", html), page.name
        assert not re.search(r"\son[a-z]+=", html), page.name
