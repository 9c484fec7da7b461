"""The access log, with secrets taken out of logged URLs."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from precheck.web import keys

_PAIR = re.compile(r"([?&])([^&=]*)(=?)([^&]*)")


def _redacted(path_qs: str) -> str:
    """The path with the value of every query key that decodes to `access_token` (however it
    is spelled: `access%5Ftoken`, mixed case) replaced by `***`."""
    path, sep, query = path_qs.partition("?")
    if not sep:
        return path

    def one(m: re.Match[str]) -> str:
        lead, key, eq, value = m.groups()
        secret = unquote_plus(key).lower() == "access_token"
        return f"{lead}{key}{eq}{'***' if secret and eq else value}"

    return path + _PAIR.sub(one, "?" + query)


class AccessLogger(AbstractAccessLogger):
    """`client "METHOD path" status bytes seconds request-id`; `access_token` values redacted."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = _redacted(request.path_qs)
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
