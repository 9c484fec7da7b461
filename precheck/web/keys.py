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
    from precheck.projections import Projections
    from precheck.reactions import Reactions
    from precheck.runner.supervisor import Supervisor
    from precheck.service.command_handler import CommandHandler
    from precheck.service.layout_inspector import LayoutInspector
    from precheck.service.metrics import Metrics
    from precheck.service.notifier import Notifier
    from precheck.service.rechecker import Rechecker
    from precheck.service.retention import Retention
    from precheck.service.upload_expiry import UploadExpiry
    from precheck.storage.files import Storage
    from precheck.storage.output_lines import OutputLineStore
    from precheck.web.auth import Authenticator

CONFIG = web.AppKey["Config"]("config")
STORE = web.AppKey["EventStore"]("store")
PROJECTIONS = web.AppKey["Projections"]("projections")
STORAGE = web.AppKey["Storage"]("storage")
HANDLER = web.AppKey["CommandHandler"]("handler")
AUTH = web.AppKey["Authenticator"]("auth")
CLOCK = web.AppKey["Clock"]("clock")
EXPIRY = web.AppKey["UploadExpiry"]("expiry")
INSPECTOR = web.AppKey["LayoutInspector"]("inspector")
OUTPUT_LINES = web.AppKey["OutputLineStore"]("output_lines")
SUPERVISOR = web.AppKey["Supervisor"]("supervisor")
METRICS = web.AppKey["Metrics"]("metrics")
NOTIFIER = web.AppKey["Notifier"]("notifier")
RECHECKER = web.AppKey["Rechecker"]("rechecker")  # only with `[recheck] enabled`
REACTIONS = web.AppKey["Reactions"]("reactions")  # who reacts to which events
RETENTION = web.AppKey["Retention"]("retention")
ALLOWED_HOSTS = web.AppKey["frozenset[str]"]("allowed_hosts")
STREAMS = web.AppKey["weakref.WeakSet[Any]"]("streams")

# Per-request values set by the middleware.
ACTOR = "precheck.actor"
IDENTITY = "precheck.identity"  # an `auth.Identity`: the actor's name and role
CLIENT = "precheck.client"
REQUEST_ID = "precheck.request_id"
