"""`create_app(config)`: assembles the parts; it holds no logic of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from precheck import keys
from precheck.clock import Clock, utcnow
from precheck.config import Config
from precheck.events.store import EventStore
from precheck.expiry import UploadExpiry
from precheck.handler import CommandHandler
from precheck.projections import Projections
from precheck.storage import Storage
from precheck.web import health, prechecks, uploads
from precheck.web.auth import Authenticator
from precheck.web.middleware import context

log = logging.getLogger(__name__)


def create_app(config: Config, clock: Clock = utcnow) -> web.Application:
    """The web application for `config`; its parts start and stop with it."""
    app = web.Application(middlewares=[context], client_max_size=1 << 20)
    app[keys.CONFIG] = config
    app[keys.CLOCK] = clock
    app[keys.STORAGE] = Storage(config.server.storage_path)
    app[keys.AUTH] = Authenticator(config.auth, config.server.trusted_proxies)
    app.cleanup_ctx.append(_event_log)
    app.cleanup_ctx.append(_upload_expiry)
    for resource in (health, uploads, prechecks):
        resource.setup_routes(app)
    return app


async def _event_log(app: web.Application) -> AsyncIterator[None]:
    storage = app[keys.STORAGE]
    storage.prepare()
    store = await EventStore.open(storage.db_path)
    try:
        projections = await Projections.replay(store)
        projections.attach(store)
        storage.sweep_uploads(projections.uploads.by_id)
        log.info("replayed %d events from %s", projections.position, storage.db_path)
        app[keys.STORE] = store
        app[keys.PROJECTIONS] = projections
        app[keys.HANDLER] = CommandHandler(store, projections, storage)
        yield
    finally:
        await store.close()


async def _upload_expiry(app: web.Application) -> AsyncIterator[None]:
    expiry = UploadExpiry(app[keys.HANDLER], app[keys.CLOCK])
    app[keys.STORE].add_listener(expiry.on_event)
    app[keys.EXPIRY] = expiry
    task = asyncio.create_task(expiry.run(), name="upload-expiry")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
