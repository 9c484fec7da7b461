"""Headers every response carries, so a browser holds the page to its own files and frames none.

The page and the API page load only their own scripts, styles and images (renders are shown
from `blob:` URLs made of what the API answered), talk only to this server, and may not be
framed by another site; no answer is sniffed into another type than it says.
"""

from __future__ import annotations

from aiohttp import web

POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


async def _add(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)


def setup_routes(app: web.Application) -> None:
    """Add the headers to every response the app sends (streams and files too)."""
    app.on_response_prepare.append(_add)
