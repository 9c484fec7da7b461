"""`/api/v1/prechecks/{id}/notifications`: whom a run's end is told, every attempt, redelivery."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from precheck.domain.commands import RedeliverNotification
from precheck.domain.notify import message_id, redact
from precheck.errors import Invalid
from precheck.events.codec import iso
from precheck.events.types import NotificationSent
from precheck.projections import Projections
from precheck.projections.runs import RunRecord
from precheck.web import keys
from precheck.web.access import find_run
from precheck.web.context import metadata


def notification_documents(run: RunRecord, state: Projections) -> list[dict[str, Any]]:
    """Each delivery of a run's end: its target (redacted), state and attempts."""
    docs = []
    attempts = state.notifications.attempts.get(run.id, [])
    for d in state.notifications.by_run.get(run.id, ()):
        if d.delivered:
            status = "delivered"
        elif d.gave_up:
            status = "given-up"
        elif d.quiet:  # a re-check that kept its verdict: nothing to tell
            status = "not-needed"
        else:
            status = "pending"
        docs.append(
            {
                "Number": d.number,
                "Kind": d.subscription.kind,
                "Target": redact(d.subscription),
                "MessageId": message_id(run.id, d.number),
                "Status": status,
                "Attempts": [
                    {
                        "Attempt": a.attempt,
                        "Delivered": isinstance(a, NotificationSent),
                        "StatusCode": a.status_code,
                        "Error": "" if isinstance(a, NotificationSent) else a.error,
                        "Seconds": a.seconds,
                        "At": iso(a.at),
                        "GaveUp": not isinstance(a, NotificationSent) and a.gave_up,
                    }
                    for a in attempts
                    if a.delivery == d.number
                ],
            }
        )
    return docs


async def list_notifications(request: web.Request) -> web.Response:
    """The run's deliveries and their attempts (only its owner or an admin)."""
    run = find_run(request)
    return web.json_response(notification_documents(run, request.app[keys.PROJECTIONS]))


async def redeliver(request: web.Request) -> web.Response:
    """Send delivery `n` of an ended run once more, under the same message id: 202."""
    run = find_run(request)
    text = request.match_info["n"]
    if not text.isdigit() or not 0 < int(text) < 1000:
        raise Invalid("the notification's number must be a whole number from 1")
    app = request.app
    await app[keys.HANDLER].handle(
        RedeliverNotification(run.id, int(text), app[keys.CLOCK]()), metadata(request)
    )
    docs = notification_documents(run, app[keys.PROJECTIONS])
    return web.json_response(docs[int(text) - 1], status=202)


def setup_routes(app: web.Application) -> None:
    """Register the notification routes."""
    app.router.add_get("/api/v1/prechecks/{run_id}/notifications", list_notifications)
    app.router.add_post("/api/v1/prechecks/{run_id}/notifications/{n}/redeliver", redeliver)
