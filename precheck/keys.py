"""Typed keys for what the app holds, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import weakref
    from typing import Any

    from precheck.clock import Clock
    from precheck.config import Config
    from precheck.events.store import EventStore
    from precheck.expiry import UploadExpiry
    from precheck.handler import CommandHandler
    from precheck.logstore import LogStore
    from precheck.metrics import Metrics
    from precheck.projections import Projections
    from precheck.storage import Storage
    from precheck.supervisor import Supervisor
    from precheck.web.auth import Authenticator

CONFIG = web.AppKey["Config"]("config")
STORE = web.AppKey["EventStore"]("store")
PROJECTIONS = web.AppKey["Projections"]("projections")
STORAGE = web.AppKey["Storage"]("storage")
HANDLER = web.AppKey["CommandHandler"]("handler")
AUTH = web.AppKey["Authenticator"]("auth")
CLOCK = web.AppKey["Clock"]("clock")
EXPIRY = web.AppKey["UploadExpiry"]("expiry")
LOGS = web.AppKey["LogStore"]("logs")
SUPERVISOR = web.AppKey["Supervisor"]("supervisor")
METRICS = web.AppKey["Metrics"]("metrics")
STREAMS = web.AppKey["weakref.WeakSet[Any]"]("streams")

# Per-request values set by the middleware.
ACTOR = "precheck.actor"
CLIENT = "precheck.client"
REQUEST_ID = "precheck.request_id"
