"""Every request passes here: a request id, the client address, auth, and errors as JSON."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from precheck.errors import (
    Conflict,
    Gone,
    Invalid,
    NoRoom,
    NotFound,
    NotJson,
    PrecheckError,
    PreflightFailed,
    TooLarge,
    TooMany,
)
from precheck.events.codec import to_jsonable
from precheck.events.store import ConcurrencyError, StoreClosed
from precheck.web import keys, same_site
from precheck.web.auth import ANONYMOUS, CLI, AuthError, presented_key
from precheck.web.sse import wants_stream

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EXEMPT = frozenset({"/health", "/", "/openapi.json", "/docs"})
EXEMPT_PREFIXES = ("/static/",)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

STATUS: list[tuple[type[Exception], int]] = [
    (PreflightFailed, 422),
    (NotFound, 404),
    (Gone, 410),
    (NotJson, 415),
    (TooLarge, 413),
    (NoRoom, 507),
    (TooMany, 429),
    (Invalid, 400),
    (Conflict, 409),
    (ConcurrencyError, 409),
    (StoreClosed, 503),
    (PrecheckError, 400),
]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The error shape: `{"message": ...}` as the plan says, with the same text as `detail`,
    which clients written for the plan's framework read."""
    return web.json_response(
        {"message": message, "detail": message}, status=status, headers=headers
    )


@web.middleware
async def context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request its id, client address and actor, or refuse it."""
    rid = request.headers.get("X-Request-Id", "")
    rid = rid if _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
    request[keys.REQUEST_ID] = rid
    auth = request.app[keys.AUTH]
    peer = _peer(request)
    # Every header line, in order: a client may send one of its own before the proxy's.
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", [])) or None
    client = auth.client_address(peer, forwarded)
    request[keys.CLIENT] = client
    request[keys.ACTOR] = ANONYMOUS.name
    request[keys.IDENTITY] = ANONYMOUS
    try:
        same_site.check(request, None if auth.required else request.app[keys.ALLOWED_HOSTS])
        if auth.is_admin(request.headers.get("X-Precheck-Admin-Token")):
            request[keys.IDENTITY] = CLI
        elif request.path not in EXEMPT and not request.path.startswith(EXEMPT_PREFIXES):
            auth.check_address(client)
            key = presented_key(
                request.headers.get("Authorization"), request.headers.get("X-API-Key")
            )
            if key is None and _is_stream_request(request):
                # EventSource cannot set headers: streams also take the key as a query value.
                key = request.query.get("access_token") or None
            request[keys.IDENTITY] = who = auth.identify(key)
            if who is not ANONYMOUS:
                auth.last_used[who.name] = request.app[keys.CLOCK]()
        request[keys.ACTOR] = request[keys.IDENTITY].name
        response = await handler(request)
    except AuthError as e:
        extra = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        response = error(e.status, e.message, extra)
    except same_site.CrossSite as e:
        response = error(e.status, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = e.text if e.text and not e.text.startswith(str(e.status)) else e.reason
        keep = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}
        response = error(e.status, message, keep or None)
    except PreflightFailed as e:
        response = web.json_response(
            {"message": str(e), "detail": str(e), "checks": to_jsonable(list(e.checks))},
            status=_status_of(e),
        )
    except PrecheckError as e:
        response = error(_status_of(e), str(e))
    except (ConcurrencyError, StoreClosed) as e:
        response = error(_status_of(e), str(e))
    except ConnectionResetError:
        # The client went away mid-request (an aborted upload): nothing to answer, no fault here.
        log.info("client %s went away during %s %s", client, request.method, request.path)
        raise
    except Exception:
        log.exception("request %s %s failed (request id %s)", request.method, request.path, rid)
        response = error(500, f"internal error (request id {rid})")
    if not response.prepared:
        response.headers["X-Request-Id"] = rid
    return response


# The stream endpoints: the only ones that take the key as a query value.
_STREAMS = re.compile(r"/api/v1/(events|prechecks/[^/]+/(events|logs))")


def _is_stream_request(request: web.Request) -> bool:
    return (
        request.method == "GET" and wants_stream(request) and bool(_STREAMS.fullmatch(request.path))
    )


def _status_of(e: Exception) -> int:
    return next(status for cls, status in STATUS if isinstance(e, cls))


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unix" if peer is not None or request.transport is not None else "unknown"
