"""The web page at `/`: plain HTML, JS and CSS served by the app, no build step, no CDN."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent.parent / "static"


async def index(request: web.Request) -> web.FileResponse:
    """The page; it asks for an API key itself when the API wants one."""
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def setup_routes(app: web.Application) -> None:
    """Register the page and its files (open without a key: they hold no data)."""
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
