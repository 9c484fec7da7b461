"""What a handler needs from a request: its metadata and the app's parts."""

from __future__ import annotations

from aiohttp import web

from precheck.events.types import Metadata
from precheck.web import keys


def metadata(request: web.Request) -> Metadata:
    """Who caused the events this request appends."""
    return Metadata(
        actor=request[keys.ACTOR], client=request[keys.CLIENT], request_id=request[keys.REQUEST_ID]
    )
