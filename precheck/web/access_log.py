"""The access log, with secrets taken out of logged URLs."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from precheck import keys

_SECRET = re.compile(r"(?i)([?&]access_token=)[^&]*")


class AccessLogger(AbstractAccessLogger):
    """`client "METHOD path" status bytes seconds request-id`; `access_token` values redacted."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = _SECRET.sub(r"\1***", request.path_qs)
        rid = request.get(keys.REQUEST_ID, "-")
        client = request.get(keys.CLIENT, request.remote)
        self.logger.info(
            '%s "%s %s" %s %s %.6fs %s',
            client,
            request.method,
            path,
            response.status,
            response.body_length,
            time,
            rid,
        )
