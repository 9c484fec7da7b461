"""Reading request bodies within time: a JSON body within `server.read_timeout_seconds`, an
upload at no less than `server.min_upload_kib_per_second` over each window of that length.

aiohttp bounds the wait for a request's head only by its keep-alive timeout (which the server
sets to `read_timeout_seconds`, see `web/serving.py`) and the wait for a body not at all: a
client sending a byte every few seconds would hold its connection, and an upload slot, for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from precheck.web import keys


def too_slow(request: web.Request, why: str) -> web.HTTPRequestTimeout:
    """A 408 for `request`, whose connection closes once it is answered (its body is unread)."""
    if request.protocol is not None:
        request.protocol.keep_alive(False)
    return web.HTTPRequestTimeout(text=why)


async def read_whole(request: web.Request) -> bytes:
    """The request's body (bounded by the app's `client_max_size`), or 408 past the timeout."""
    seconds = request.app[keys.CONFIG].server.read_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        raise too_slow(request, f"the request body did not arrive within {seconds:g} s") from None


async def paced(request: web.Request, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks` as they come, or 408 when a window of `read_timeout_seconds` brings less than
    `min_upload_kib_per_second` per second (or nothing at all)."""
    server = request.app[keys.CONFIG].server
    window = server.read_timeout_seconds
    floor = max(1, int(server.min_upload_kib_per_second * 1024 * window))
    loop = asyncio.get_running_loop()
    window_end, got = loop.time() + window, 0
    while True:
        try:
            async with asyncio.timeout_at(window_end):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            chunk = b""
        got += len(chunk)
        if loop.time() >= window_end:
            if got < floor:
                raise too_slow(
                    request,
                    f"the upload brought {got} bytes in {window:g} s, less than"
                    f" server.min_upload_kib_per_second ({server.min_upload_kib_per_second}"
                    " KiB/s) asks",
                )
            window_end, got = loop.time() + window, 0
        if chunk:
            yield chunk
