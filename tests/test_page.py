"""The page's static files agree with the server: event names, patterns."""

from __future__ import annotations

import re
from pathlib import Path

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
