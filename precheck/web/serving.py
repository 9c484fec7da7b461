"""How the HTTP server itself is run: what aiohttp's runner is given for slow clients."""

from __future__ import annotations

from typing import Any

from precheck.config import Config


def runner_options(config: Config) -> dict[str, Any]:
    """Keyword arguments for `web.AppRunner`.

    aiohttp has no timeout for reading a request's head: its keep-alive timeout, which also runs
    from the moment a connection opens, closes a connection that has not sent a whole head in
    that time (and one idle that long between requests). Bodies are bounded by
    `web/body_reading.py`.
    """
    return {"keepalive_timeout": config.server.read_timeout_seconds}
