"""Refusing what another web site makes a browser send: cross-site writes and, with auth off,
requests to a name that is not this server's (DNS rebinding).

A page on any site can make the operator's browser POST to `http://127.0.0.1:8000`; it cannot
choose the `Origin` the browser sends, nor (after rebinding its own name to this address)
the `Host`. So a state-changing request must come from this server's own origin, and with no
API key to stop a stranger the `Host` must be one of this server's names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import web

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class CrossSite(Exception):
    """Refused: `status` is 403 (a foreign origin) or 421 (not one of this server's names)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def allowed_hosts(bind_host: str, configured: Iterable[str]) -> frozenset[str]:
    """The names the server answers to with auth off: localhost names, the address it binds
    (unless that is every address) and `server.allowed_hosts` (`*`: any)."""
    names = {*LOCAL_NAMES, *(h.lower().strip("[]") for h in configured)}
    if bind_host and bind_host not in ("0.0.0.0", "::"):
        names.add(bind_host.lower().strip("[]"))
    return frozenset(names)


def is_loopback(host: str) -> bool:
    """Does binding `host` keep the server on this machine?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _name(host_header: str) -> str:
    """The name of a `Host` value, without port or IPv6 brackets."""
    return (urlsplit(f"//{host_header}").hostname or "").lower()


def check(request: web.Request, names: frozenset[str] | None) -> None:
    """Raise `CrossSite` for a write from a foreign origin, or (when `names` is given: auth is
    off) for a `Host` that is not one of `names`."""
    if names is not None and "*" not in names and _name(request.host) not in names:
        raise CrossSite(
            421,
            f"Misdirected: {_name(request.host) or 'no host'!r} is not a name of this server "
            "(add it to server.allowed_hosts)",
        )
    if request.method not in WRITES:
        return
    origin = request.headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        if origin == "null" or parts.netloc.lower() != request.host.lower():
            raise CrossSite(403, f"Forbidden: a cross-site request from {origin!r} was refused")
    elif request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise CrossSite(403, "Forbidden: a cross-site request was refused")
