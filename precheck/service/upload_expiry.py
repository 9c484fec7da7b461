"""Retires expired uploads at the moment the next one expires, not on a fixed poll."""

from __future__ import annotations

import asyncio
import logging

from precheck.clock import Clock
from precheck.domain.commands import ExpireUploads
from precheck.events.types import Metadata
from precheck.service.command_handler import CommandHandler

log = logging.getLogger(__name__)
SERVER = Metadata(actor="server")


class UploadExpiry:
    """A timer set to the earliest expiry among available uploads, reset as uploads arrive."""

    def __init__(self, handler: CommandHandler, clock: Clock) -> None:
        self.handler = handler
        self.clock = clock
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Look again now (the clock moved, or uploads changed)."""
        self._wake.set()

    def on_event(self, _: object) -> None:
        """Store listener: any new event may have added an upload with an earlier expiry."""
        self._wake.set()

    async def run(self) -> None:
        """Expire what is due, sleep until the next expiry or a change, repeat; never dies."""
        while True:
            self._wake.clear()
            try:
                delay = await self.expire_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("upload expiry failed; trying again in 60 s")
                delay = 60.0
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def expire_due(self) -> float | None:
        """Expire due uploads now; return seconds until the next expiry (None: none pending)."""
        now = self.clock()
        uploads = self.handler.projections.uploads.by_id.values()
        if any(u.status == "available" and u.expires_at <= now for u in uploads):
            await self.handler.handle(ExpireUploads(now), SERVER)
        pending = [u.expires_at for u in uploads if u.status == "available"]
        if not pending:
            return None
        return max(0.0, (min(pending) - self.clock()).total_seconds()) + 0.01
