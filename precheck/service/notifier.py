"""Tells each ended run's subscribers that it ended: at least once, every attempt an event.

What is owed is read from the log, never kept aside: a delivery of an ended run with neither
a `notification.sent` nor a given-up `notification.failed` (since it was last owed anew). So a
server killed mid-attempt makes that attempt again after its restart, under the same
`webhook-id`. A failed attempt is tried again after the schedule's delay, counted from the
last attempt's recorded time; the wake-ups come from the log and from that timer, no polling.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from datetime import datetime, timedelta

from precheck.clock import Clock
from precheck.domain.notify import Schedule, message_id, payload, redact
from precheck.domain.status import ENDED
from precheck.events.store import EventStore, RecordedEvent
from precheck.events.types import Metadata, NotificationFailed, NotificationSent
from precheck.projections import Projections
from precheck.projections.notifications import Delivery
from precheck.service.delivery import Outcome, SmtpSettings, Webhooks, send_email

log = logging.getLogger(__name__)
SERVER = Metadata(actor="server")
HOLD_SECONDS = 30.0  # after an attempt that could not even be recorded

Key = tuple[str, int]


class Notifier:
    """At most `max_concurrent` attempts at once; the rest wait their turn."""

    def __init__(
        self,
        store: EventStore,
        projections: Projections,
        clock: Clock,
        *,
        base_url: str,
        schedule: Schedule,
        webhooks: Webhooks,
        smtp: SmtpSettings | None,
        max_concurrent: int = 32,
    ) -> None:
        self.store = store
        self.projections = projections
        self.clock = clock
        self.base_url = base_url
        self.schedule = schedule
        self.webhooks = webhooks
        self.smtp = smtp
        self.max_concurrent = max_concurrent
        self._wake = asyncio.Event()
        self._busy: dict[Key, asyncio.Task[None]] = {}
        self._held: dict[Key, datetime] = {}

    def on_event(self, _: RecordedEvent) -> None:
        """Store listener: a run ended, an attempt was recorded, a redelivery asked for."""
        self._wake.set()

    async def run(self) -> None:
        """Start the attempts that are due whenever woken or a retry falls due; never dies."""
        try:
            while True:
                self._wake.clear()
                delay = self._start_due()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            tasks = list(self._busy.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.webhooks.close()

    def due_at(self, d: Delivery) -> datetime | None:
        """When delivery `d` is next to be tried; None while its run has not ended."""
        run = self.projections.runs.get(d.run_id)
        if run is None or not (run.settled and run.status in ENDED):
            return None
        held = self._held.get((d.run_id, d.number))
        if d.failures == 0 or d.last_at is None:
            return held or run.finished_at or run.created
        due = d.last_at + timedelta(seconds=self.schedule.delay(d.failures))
        return max(due, held) if held else due

    def _start_due(self) -> float | None:
        now = self.clock()
        state = self.projections.notifications
        soonest: datetime | None = None
        for key in sorted(state.owed):
            if key in self._busy:
                continue
            d = state.get(*key)
            when = None if d is None else self.due_at(d)
            if d is None or when is None:
                continue
            if when > now:
                soonest = when if soonest is None else min(soonest, when)
            elif len(self._busy) < self.max_concurrent:
                task = asyncio.create_task(self._attempt(d), name=f"notify-{d.run_id}-{d.number}")
                self._busy[key] = task
                task.add_done_callback(functools.partial(self._done, key))
        if soonest is None:
            return None
        return max(0.0, (soonest - self.clock()).total_seconds()) + 0.01

    def _done(self, key: Key, _: object = None) -> None:
        self._busy.pop(key, None)
        self._wake.set()

    async def _attempt(self, d: Delivery) -> None:
        key = (d.run_id, d.number)
        try:
            run = self.projections.runs.by_id[d.run_id]
            body = payload(run, self.base_url)
            msg_id = message_id(run.id, d.number)
            loop = asyncio.get_running_loop()
            started = loop.time()
            outcome = await self._send(d, msg_id, body)
            seconds = round(loop.time() - started, 6)
            now = self.clock()
            fact: NotificationSent | NotificationFailed
            target, attempt = redact(d.subscription), d.attempts + 1
            if outcome.ok:
                fact = NotificationSent(
                    d.run_id,
                    d.number,
                    d.subscription.kind,
                    target,
                    attempt,
                    msg_id,
                    outcome.status_code or 0,
                    seconds,
                    now,
                )
            else:
                gave_up = self.schedule.gives_up(d.failures + 1, d.first_at or now, now)
                fact = NotificationFailed(
                    d.run_id,
                    d.number,
                    d.subscription.kind,
                    target,
                    attempt,
                    msg_id,
                    outcome.status_code,
                    outcome.error,
                    seconds,
                    now,
                    gave_up,
                )
                log.warning(
                    "notification %d of run %s to %s failed (attempt %d%s): %s",
                    d.number,
                    d.run_id,
                    target,
                    attempt,
                    ", given up" if gave_up else "",
                    outcome.error,
                )
            if self.projections.runs.get(d.run_id) is not None:  # not deleted meanwhile
                await self.store.append([fact], SERVER)
            self._held.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("notification %d of run %s could not be recorded", d.number, d.run_id)
            self._held[key] = self.clock() + timedelta(seconds=HOLD_SECONDS)

    async def _send(self, d: Delivery, msg_id: str, body: dict[str, object]) -> Outcome:
        try:
            return await self._send_one(d, msg_id, body)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # A failed attempt all the same: recorded, so the schedule (and its end) applies.
            log.exception("notification %d of run %s: the attempt raised", d.number, d.run_id)
            return Outcome(False, None, f"{type(e).__name__}: {e}"[:500])

    async def _send_one(self, d: Delivery, msg_id: str, body: dict[str, object]) -> Outcome:
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        if d.subscription.kind == "webhook":
            return await self.webhooks.send(
                d.subscription.target, msg_id, raw, int(self.clock().timestamp())
            )
        if self.smtp is None:
            return Outcome(False, None, "email is off: notify.smtp.host is not set")
        return await send_email(self.smtp, d.subscription.target, body)
