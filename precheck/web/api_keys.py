"""`/api/v1/keys`: API keys issued and revoked as events, for admins; `/api/v1/whoami`."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from typing import Any

from aiohttp import web

from precheck.domain.commands import IssueKey, RevokeKey
from precheck.errors import Conflict, NotFound
from precheck.events.codec import iso
from precheck.web import keys
from precheck.web.access import identity, require_admin
from precheck.web.auth import key_digest
from precheck.web.context import metadata
from precheck.web.requests import IssueKeyRequest, json_body

log = logging.getLogger(__name__)


def new_key() -> str:
    """A fresh API key: 32 random bytes, URL-safe."""
    return f"ws_key_{secrets.token_urlsafe(32)}"


async def issue_key(request: web.Request) -> web.Response:
    """Issue a key for a name and role; the key is in this answer only, the log keeps its sha256."""
    require_admin(request)
    body = await json_body(request, IssueKeyRequest)
    auth = request.app[keys.AUTH]
    if body.name in auth.config_names:
        raise Conflict(f"key {body.name!r} is defined in the config file")
    if body.role == "user" and not auth.required:
        raise Conflict(
            "auth.required is false: a user key would isolate nothing (a request without a key"
            " reaches everything); turn auth on first, or issue an admin key"
        )
    key = new_key()
    now = request.app[keys.CLOCK]()
    await request.app[keys.HANDLER].handle(
        IssueKey(body.name, body.role, key_digest(key), now), metadata(request)
    )
    return web.json_response(
        {"Name": body.name, "Role": body.role, "Key": key, "Created": iso(now)}, status=201
    )


async def revoke_key(request: web.Request) -> web.Response:
    """Revoke an issued key: refused from the next request on, its open streams closed."""
    require_admin(request)
    name = request.match_info["name"]
    if name in request.app[keys.AUTH].config_names:
        raise Conflict(f"key {name!r} is defined in the config file: remove it there")
    if name not in request.app[keys.PROJECTIONS].keys.by_name:
        raise NotFound(f"No such key: {name}")
    await request.app[keys.HANDLER].handle(
        RevokeKey(name, request.app[keys.CLOCK]()), metadata(request)
    )
    return web.json_response({"message": "Key revoked", "Name": name})


async def list_keys(request: web.Request) -> web.Response:
    """Every key: from the config file and issued ones, with role, creation and last use."""
    require_admin(request)
    auth = request.app[keys.AUTH]
    docs: list[dict[str, Any]] = [
        _document(name, role, "config", None, auth.last_used.get(name))
        for name, role in auth.config_roles.items()
    ]
    docs += [
        _document(k.name, k.role, "issued", iso(k.created), auth.last_used.get(k.name))
        for k in sorted(
            request.app[keys.PROJECTIONS].keys.by_name.values(), key=lambda k: k.created
        )
    ]
    return web.json_response(docs)


def _document(
    name: str, role: str, source: str, created: str | None, last_used: datetime | None
) -> dict[str, Any]:
    return {
        "Name": name,
        "Role": role,
        "Source": source,
        "Created": created,
        "LastUsed": iso(last_used) if last_used is not None else None,
    }


async def whoami(request: web.Request) -> web.Response:
    """Who the request's key is and its role."""
    who = identity(request)
    return web.json_response({"Name": who.name, "Role": who.role})


async def _warn_of_open_user_keys(app: web.Application) -> None:
    """At start: user keys issued while auth was on isolate nothing now it is off; a config key
    named as a key once issued acts as it, owning what it made."""
    issued = app[keys.PROJECTIONS].keys
    taken = sorted(app[keys.AUTH].config_names & set(issued.versions))
    if taken:
        log.warning(
            "the config keys %s have the names of keys issued before, and own what those made;"
            " rename them unless that is meant",
            ", ".join(map(repr, taken)),
        )
    users = [k.name for k in issued.by_name.values() if k.role == "user"]
    if users and not app[keys.AUTH].required:
        log.warning(
            "auth.required is false: the issued user keys %s isolate nothing (a request without"
            " a key reaches everything); turn auth on or revoke them",
            ", ".join(map(repr, users)),
        )


def setup_routes(app: web.Application) -> None:
    """Register the key routes."""
    app.on_startup.append(_warn_of_open_user_keys)
    app.router.add_get("/api/v1/keys", list_keys)
    app.router.add_post("/api/v1/keys", issue_key)
    app.router.add_delete("/api/v1/keys/{name}", revoke_key)
    app.router.add_get("/api/v1/whoami", whoami)
