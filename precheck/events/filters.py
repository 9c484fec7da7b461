"""Choosing events by stream, type and run: shared by the audit feed and the CLI."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from precheck.errors import Invalid
from precheck.events.store import RecordedEvent
from precheck.events.types import TAGS

KNOWN_TYPES = frozenset(TAGS.values())


def event_filter(
    stream: str | None = None, types: Sequence[str] = (), run: str | None = None
) -> Callable[[RecordedEvent], bool]:
    """A predicate for `stream=`, `type=` (exact, or a prefix ending in `.`) and `run=`."""
    for t in types:
        if t not in KNOWN_TYPES and not (
            t.endswith(".") and any(k.startswith(t) for k in KNOWN_TYPES)
        ):
            raise Invalid(f"unknown event type {t!r}")
    exact = frozenset(t for t in types if not t.endswith("."))
    prefixes = tuple(t for t in types if t.endswith("."))
    run_stream = f"run-{run}" if run is not None else None

    def keep(r: RecordedEvent) -> bool:
        if stream is not None and r.stream != stream:
            return False
        if run_stream is not None and r.stream != run_stream:
            return False
        return not types or r.type in exact or (bool(prefixes) and r.type.startswith(prefixes))

    return keep
