"""Events to JSON and back, under stable tags, upcasting old rows.

One cattrs converter writes them and reads older schemas; a row at its tag's current schema
is read by a typed msgspec decoder for that tag instead, built once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import cattrs
import msgspec

from precheck.events.types import SCHEMAS, TAGS, Event, Metadata

CLASSES: dict[str, type] = {tag: cls for cls, tag in TAGS.items()}

# (tag, schema) -> function taking that schema's dict and returning schema + 1's.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    # Schema 1 of run.queued predates slots and chip-on-board: such runs used the defaults.
    ("run.queued", 1): lambda d: {"slot": "1x1", "cob": False} | d,
}


class UnknownEventType(Exception):
    """A stored row names a tag or schema this code does not know."""


# A run's metrics are JSON scalars; cattrs has no structure hook for a union of them.
Scalar = float | int | str | None


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_unstructure_hook(datetime, _iso)
    conv.register_structure_hook(datetime, lambda v, _: _parse_time(v))
    conv.register_structure_hook(Scalar, lambda v, _: _scalar(v))
    return conv


def _iso(t: datetime) -> str:
    # Fixed width: microseconds always written, so times sort and parse alike.
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_time(v: str) -> datetime:
    return datetime.fromisoformat(v)


def _scalar(v: Any) -> float | int | str | None:
    if v is None or isinstance(v, float | int | str):
        return v
    raise TypeError(f"expected a JSON scalar, got {type(v).__name__}")


converter = _make_converter()


# One typed JSON decoder per tag, for rows at its current schema: it parses the text straight
# into the event (times included) in C. A replay decodes millions of rows, and this is several
# times faster than parsing to dicts and structuring them.
_TYPED: dict[tuple[str, int], msgspec.json.Decoder[Any]] = {
    (tag, SCHEMAS[tag]): msgspec.json.Decoder(cls) for tag, cls in CLASSES.items()
}
_METADATA = msgspec.json.Decoder(Metadata)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_raw_decode = json.JSONDecoder().raw_decode  # skips json.loads' whitespace regex


def _loads(text: str) -> Any:
    return _raw_decode(text)[0]


def encode(event: Event) -> tuple[str, int, str]:
    """The tag, schema number and JSON text of `event`."""
    tag = TAGS[type(event)]
    return tag, SCHEMAS[tag], _dumps(converter.unstructure(event))


def decode(tag: str, schema: int, data: str) -> Event:
    """Rebuild an event from its stored tag, schema number and JSON text."""
    typed = _TYPED.get((tag, schema))
    if typed is not None:  # the common case: a row at its tag's current schema
        try:
            event: Event = typed.decode(data)
            return event
        except msgspec.MsgspecError:
            pass  # a row it does not take as is (say NaN, or a huge int): the generic path's
    return decode_generic(tag, schema, data)


def decode_generic(tag: str, schema: int, data: str) -> Event:
    """`decode` through the converter: any schema, upcast step by step; the typed decoders
    must give the same."""
    cls = CLASSES.get(tag)
    if cls is None:
        raise UnknownEventType(f"unknown event type {tag!r}")
    raw = _loads(data)
    current = SCHEMAS[tag]
    while schema < current:
        step = UPCASTERS.get((tag, schema))
        if step is None:
            raise UnknownEventType(f"no upcaster for {tag!r} schema {schema}")
        raw = step(raw)
        schema += 1
    if schema > current:
        raise UnknownEventType(f"{tag!r} schema {schema} is newer than this code ({current})")
    event: Event = converter.structure(raw, cls)
    return event


def encode_metadata(meta: Metadata) -> str:
    """JSON text of an event's metadata."""
    return _dumps(converter.unstructure(meta))


# Metadata is frozen and repeats (every event of one request or of the supervisor shares it),
# so a replay rebuilds each distinct text once.
@lru_cache(maxsize=4096)
def decode_metadata(data: str) -> Metadata:
    """Rebuild metadata from its JSON text."""
    try:
        meta: Metadata = _METADATA.decode(data)
        return meta
    except msgspec.MsgspecError:
        return converter.structure(_loads(data), Metadata)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for any event, record or metadata (for API and audit output)."""
    return converter.unstructure(value)


def iso(t: datetime) -> str:
    """A UTC time as the API writes it: `2026-01-02T03:04:05.678901Z`."""
    return _iso(t)
