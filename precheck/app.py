"""`create_app(config)`: assembles the parts; it holds no logic of its own."""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from precheck.clock import Clock, utcnow
from precheck.config import Config
from precheck.domain.notify import Schedule, secret_key
from precheck.domain.recheck import recheck_slots
from precheck.events.store import EventStore
from precheck.events.types import InstanceCreated
from precheck.layout.reading import Limits
from precheck.projections.snapshot import restore, snapshot_path
from precheck.reactions import Reactions
from precheck.runner.engine import Engine, engine_for
from precheck.runner.supervisor import Supervisor
from precheck.service.command_handler import CommandHandler
from precheck.service.delivery import SmtpSettings, Webhooks
from precheck.service.layout_inspector import LayoutInspector
from precheck.service.leftovers import settle_leftovers
from precheck.service.metrics import Metrics
from precheck.service.notifier import Notifier
from precheck.service.rechecker import Rechecker
from precheck.service.retention import Retention
from precheck.service.run_announcer import RunAnnouncer
from precheck.service.snapshots import SnapshotWriter
from precheck.service.upload_expiry import SERVER, UploadExpiry
from precheck.storage.files import Storage
from precheck.storage.output_lines import OutputLineStore
from precheck.tasks import background
from precheck.web import (
    api_keys,
    audit,
    cleanup,
    downloads,
    findings,
    headers,
    health,
    keys,
    metrics,
    notifications,
    openapi,
    output_lines,
    page,
    prechecks,
    rechecks,
    resources,
    retention,
    uploads,
)
from precheck.web.auth import Authenticator
from precheck.web.held import HELD, Held
from precheck.web.middleware import context
from precheck.web.notify_policy import notify_policy
from precheck.web.same_site import allowed_hosts
from precheck.web.sse import close_revoked_streams, line_message, stop_streams

log = logging.getLogger(__name__)

_ENGINE = web.AppKey["Callable[[str], Engine]"]("engine_factory")
_SNAPSHOTS = web.AppKey("snapshots", SnapshotWriter)


def create_app(
    config: Config,
    clock: Clock = utcnow,
    *,
    run_containers: bool = True,
    admin_token: str | None = None,
    engine: Callable[[str], Engine] = Engine,
) -> web.Application:
    """The web application for `config`; its parts start and stop with it.

    With `run_containers=False` no supervisor runs: runs wait in the queue (for tests of the
    API alone, and for a read-only look at a storage folder). `admin_token` is what the CLI
    on this machine presents (see `ops/lock.py`). `engine` makes the Docker client from the
    configured URL (tests wrap it to inject faults).
    """
    app = web.Application(middlewares=[context], client_max_size=1 << 20)
    app[keys.CONFIG] = config
    app[keys.CLOCK] = clock
    app[keys.STORAGE] = Storage(config.server.storage_path)
    app[_ENGINE] = engine
    app[keys.ALLOWED_HOSTS] = allowed_hosts(config.server.host, config.server.allowed_hosts)
    app[keys.AUTH] = Authenticator(config.auth, config.server.trusted_proxies, admin_token)
    app.cleanup_ctx.append(_event_log)
    app.cleanup_ctx.append(_snapshots)  # stopped after the parts below: the last state is saved
    app.cleanup_ctx.append(_upload_expiry)
    if config.preflight.enabled:
        app.cleanup_ctx.append(_layout_inspector)
    app.cleanup_ctx.append(_notifier)
    app.cleanup_ctx.append(_retention)
    if config.recheck.enabled:
        app.cleanup_ctx.append(_rechecker)
    if run_containers:
        app.cleanup_ctx.append(_supervisor)
    app[keys.STREAMS] = weakref.WeakSet()
    app[HELD] = Held()
    app.on_shutdown.append(stop_streams)
    for resource in (
        health,
        uploads,
        prechecks,
        output_lines,
        resources,
        downloads,
        findings,
        audit,
        metrics,
        notifications,
        rechecks,
        openapi,
        page,
        cleanup,
        api_keys,
        retention,
        headers,
    ):
        resource.setup_routes(app)
    return app


async def _event_log(app: web.Application) -> AsyncIterator[None]:
    storage = app[keys.STORAGE]
    storage.prepare()
    store = await EventStore.open(storage.db_path)
    output_lines_store = await OutputLineStore.open(storage.db_path, encoder=line_message)
    try:
        snapshot = snapshot_path(storage.db_path)
        projections, since = await restore(store, snapshot)
        app[_SNAPSHOTS] = SnapshotWriter(projections, snapshot, since)
        config = app[keys.CONFIG]
        projections.queue.max_running_per_owner = config.server.max_running_per_owner
        projections.queue.max_rechecks = recheck_slots(
            config.recheck.max_share, config.max_concurrent
        )
        app[keys.AUTH].issued = projections.keys  # keys issued through the API count at once
        # Who reacts to which events: the table in `reactions.py`; each part attaches itself.
        reactions = app[keys.REACTIONS] = Reactions()
        reactions.attach("projections", projections.apply)
        reactions.attach("stream closer", lambda r: close_revoked_streams(app, r))
        reactions.attach("run announcer", RunAnnouncer(projections).on_event)
        store.add_listener(reactions)
        await settle_leftovers(store, projections, storage, output_lines_store)
        if projections.instance_id is None:
            await store.append([InstanceCreated(uuid.uuid4().hex, app[keys.CLOCK]())], SERVER)
        log.info("replayed %d events from %s", projections.position, storage.db_path)
        app[keys.STORE] = store
        app[keys.PROJECTIONS] = projections
        app[keys.HANDLER] = CommandHandler(store, projections, storage, output_lines_store)
        app[keys.OUTPUT_LINES] = output_lines_store
        app[keys.METRICS] = Metrics(
            lambda: projections,
            lambda: store.head,
            lambda: len(app[keys.STREAMS]),
            lambda: app[keys.SUPERVISOR].engine_documents() if keys.SUPERVISOR in app else None,
            storage.free_bytes,
        )
        store.append_observer = app[keys.METRICS].append_seconds.observe
        yield
    finally:
        await output_lines_store.close()
        await store.close()


async def _snapshots(app: web.Application) -> AsyncIterator[None]:
    writer = app[_SNAPSHOTS]
    async with background(writer.run(), "snapshot-writer"):
        yield
    await writer.write()  # a clean stop: the next start folds nothing


async def _upload_expiry(app: web.Application) -> AsyncIterator[None]:
    expiry = app[keys.EXPIRY] = UploadExpiry(app[keys.HANDLER], app[keys.CLOCK])
    app[keys.REACTIONS].attach("upload expiry", expiry.on_event)
    async with background(expiry.run(), "upload-expiry"):
        yield


async def _layout_inspector(app: web.Application) -> AsyncIterator[None]:
    pf = app[keys.CONFIG].preflight
    inspector = LayoutInspector(
        app[keys.HANDLER],
        Limits(pf.max_seconds, pf.max_memory_mb),
        app[keys.CLOCK],
        pf.max_concurrent,
    )
    app[keys.INSPECTOR] = inspector
    app[keys.REACTIONS].attach("layout inspector", inspector.on_event)
    # Stopping it kills the readings under way; their uploads stay pending, read at next start.
    async with background(inspector.run(), "layout-inspector"):
        yield


async def _notifier(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    n = config.notify
    smtp = n.smtp
    notifier = Notifier(
        app[keys.STORE],
        app[keys.PROJECTIONS],
        app[keys.CLOCK],
        base_url=n.base_url or f"http://{config.server.host}:{config.server.port}",
        schedule=Schedule(n.retry_first_seconds, n.retry_max_seconds, n.give_up_hours * 3600),
        webhooks=Webhooks(
            notify_policy(n),
            secret_key(n.webhook_secret),
            n.timeout_seconds,
            n.max_response_kib << 10,
        ),
        smtp=SmtpSettings(
            smtp.host,
            smtp.port,
            smtp.starttls,
            smtp.tls,
            smtp.user,
            smtp.password,
            smtp.sender,
            smtp.ca_file,
            n.timeout_seconds,
        )
        if smtp.host
        else None,
        max_concurrent=n.max_concurrent,
    )
    app[keys.NOTIFIER] = notifier
    app[keys.REACTIONS].attach("notifier", notifier.on_event)
    # An attempt cut by the stop is not recorded: it is made again at the next start.
    async with background(notifier.run(), "notifier"):
        yield


async def _retention(app: web.Application) -> AsyncIterator[None]:
    policy = app[keys.CONFIG].retention
    retention = app[keys.RETENTION] = Retention(
        app[keys.STORE],
        app[keys.PROJECTIONS],
        app[keys.STORAGE],
        app[keys.OUTPUT_LINES],
        app[keys.CLOCK],
        policy,
    )
    if not policy.enabled:  # keep every file: on demand too, a pass finds nothing due
        yield
        return
    app[keys.REACTIONS].attach("retention", retention.on_event)
    async with background(retention.run(), "retention"):
        yield


async def _rechecker(app: web.Application) -> AsyncIterator[None]:
    rechecker = Rechecker(app[keys.HANDLER], app[keys.CONFIG].docker.image, app[keys.CLOCK])
    app[keys.RECHECKER] = rechecker
    app[keys.REACTIONS].attach("rechecker", rechecker.on_event)
    async with background(rechecker.run(), "rechecker"):
        yield


async def _supervisor(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    engines = [engine_for(e, app[_ENGINE]) for e in config.engines]
    for engine in engines:
        engine.max_line = config.docker.max_line_kib << 10
    supervisor = Supervisor(
        config,
        engines,
        app[keys.STORE],
        app[keys.PROJECTIONS],
        app[keys.STORAGE],
        app[keys.OUTPUT_LINES],
        app[keys.CLOCK],
    )
    app[keys.SUPERVISOR] = supervisor
    app[keys.REACTIONS].attach("supervisor", supervisor.on_event)
    # Containers keep running when it stops: a restarted server adopts them.
    async with background(supervisor.run(), "supervisor"):
        yield
    for engine in engines:
        await engine.close()
