"""The OpenAPI 3.1 description of every route, served at `/openapi.json`, shown at `/docs`.

The description is data: `openapi.json` beside this module. Only `info.version` is filled in
here, from the package's version. `tests/test_openapi.py` checks its enums and patterns against
the code's constants.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from aiohttp import web

from precheck import __version__
from precheck.web.page import STATIC


@functools.cache
def _loaded() -> dict[str, Any]:
    """The document as read from the package, once, with the server's version."""
    text = resources.files("precheck.web").joinpath("openapi.json").read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    doc["info"]["version"] = __version__
    return doc


def document() -> dict[str, Any]:
    """The whole OpenAPI document (a copy: the caller may change it)."""
    return copy.deepcopy(_loaded())


async def openapi_json(request: web.Request) -> web.Response:
    """`GET /openapi.json`."""
    return web.Response(text=request.app[_TEXT], content_type="application/json")


async def docs(request: web.Request) -> web.FileResponse:
    """`GET /docs`: a page that renders the description, with no outside files."""
    return web.FileResponse(STATIC / "docs.html")


_TEXT = web.AppKey("openapi", str)


def setup_routes(app: web.Application) -> None:
    """Register the description and its page."""
    app[_TEXT] = json.dumps(_loaded())  # as `web.json_response` wrote it
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
