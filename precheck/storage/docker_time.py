"""Docker's timestamps: RFC 3339 text in UTC with up to nine fraction digits, trailing zeros
trimmed (`2026-01-02T03:04:05.5Z`). Kept as Docker's text where it is stored; read here, in one
place, as the number each use needs."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

ZERO = datetime(1, 1, 1, tzinfo=UTC)  # Docker's "never" (`0001-01-01T00:00:00Z`)


@lru_cache(maxsize=4096)
def _whole_seconds(head: str) -> int:
    # Lines come by the thousand per second: each second's text is read once.
    return int(datetime.fromisoformat(head + "+00:00").timestamp())


def _parts(text: str) -> tuple[int, str]:
    head, _, frac = text.rstrip("Z").partition(".")
    return _whole_seconds(head), (frac + "000000000")[:9]


def docker_nanos(text: str) -> int:
    """Unix nanoseconds, exact: for ordering lines."""
    seconds, frac = _parts(text)
    return seconds * 1_000_000_000 + int(frac)


def docker_seconds(text: str) -> float:
    """Unix seconds (0 for an empty text or Docker's zero time)."""
    if not text or text.startswith("0001-"):
        return 0.0
    seconds, frac = _parts(text)
    return seconds + int(frac) / 1e9


def docker_datetime(text: str) -> datetime:
    """A datetime, to microseconds (Docker's zero time for an empty text)."""
    if not text or text.startswith("0001-"):
        return ZERO
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def docker_since(text: str) -> str:
    """The `since` parameter of Docker's logs and events (unix `seconds.nanoseconds`)."""
    seconds, frac = _parts(text)
    return f"{seconds}.{frac}"
