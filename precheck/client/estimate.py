"""A run's `Estimate` in words: `starts in about 40 min, ends about 14:10` (local time)."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _minutes(m: int) -> str:
    if m < 60:
        return f"{m} min"
    return f"{m // 60} h {m % 60} min" if m % 60 else f"{m // 60} h"


def _clock(t: datetime, now: datetime) -> str:
    """14:10 in this machine's zone on the same day; with the weekday on another."""
    local, today = t.astimezone(), now.astimezone()
    return local.strftime("%H:%M" if local.date() == today.date() else "%a %H:%M")


def estimate_words(doc: dict[str, Any], now: datetime) -> str | None:
    """What the run's estimate says at `now`: when it starts (queued) and ends; None when the
    document has none (not queued or running, or no past run to rest on)."""
    estimate = doc.get("Estimate") or {}
    status = (doc.get("State") or {}).get("Status")
    start, end = _time(estimate.get("StartAt")), _time(estimate.get("EndAt"))
    if start is None or end is None or status not in ("queued", "running"):
        return None
    ends = f"ends about {_clock(end, now)}"
    if status != "queued":
        return ends
    wait = round((start - now).total_seconds() / 60)
    return f"{'starts about now' if wait < 1 else f'starts in about {_minutes(wait)}'}, {ends}"
