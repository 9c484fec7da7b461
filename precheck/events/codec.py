"""One cattrs converter turns events to JSON and back, under stable tags, upcasting old rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import attrs
import cattrs

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


def _fast_structure(cls: type) -> Callable[[dict[str, Any]], Any] | None:
    """A plain constructor call for an event made only of str, int, float, bool and times.

    The generic converter dispatches on every field's type; a replay decodes millions of
    events of a handful of shapes, so those shapes get a generated function instead. Rows are
    written by this code only, so their JSON types are already right.
    """
    attrs.resolve_types(cls)
    args, scope = [], {"cls": cls, "_time": _parse_time}
    for i, a in enumerate(attrs.fields(cls)):
        if a.type is datetime:
            expr = f"_time(d[{a.name!r}])"
        elif a.type is float:
            expr = f"float(d[{a.name!r}])"
        elif a.type in (str, int, bool, str | None, int | None):
            expr = f"d[{a.name!r}]"
        else:
            return None
        if a.default is not attrs.NOTHING:
            scope[f"_default{i}"] = a.default
            expr = f"d.get({a.name!r}, _default{i})" if a.type is not datetime else expr
        args.append(expr)
    code = f"def structure(d):\n    return cls({', '.join(args)})\n"
    exec(compile(code, f"<structure {cls.__name__}>", "exec"), scope)
    fn: Callable[[dict[str, Any]], Any] = scope["structure"]  # type: ignore[assignment]
    return fn


_FAST = {cls: fn for cls in CLASSES.values() if (fn := _fast_structure(cls)) is not None}
# Rows at the current schema of a tag with a generated structure function: no upcast needed.
_DIRECT = {(TAGS[cls], SCHEMAS[TAGS[cls]]): fn for cls, fn in _FAST.items()}
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
    direct = _DIRECT.get((tag, schema))
    if direct is not None:  # the common case: a current row of a simple shape
        event: Event = direct(_raw_decode(data)[0])
        return event
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
    fast = _FAST.get(cls)
    event = fast(raw) if fast is not None else converter.structure(raw, cls)
    return event


def encode_metadata(meta: Metadata) -> str:
    """JSON text of an event's metadata."""
    return _dumps(converter.unstructure(meta))


def decode_metadata(data: str) -> Metadata:
    """Rebuild metadata from its JSON text."""
    return _decode_metadata(data)


# Metadata is frozen and repeats (every event of one request or of the supervisor shares it),
# so a replay rebuilds each distinct text once.
@lru_cache(maxsize=4096)
def _decode_metadata(data: str) -> Metadata:
    return converter.structure(_loads(data), Metadata)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for any event, record or metadata (for API and audit output)."""
    return converter.unstructure(value)


def iso(t: datetime) -> str:
    """A UTC time as the API writes it: `2026-01-02T03:04:05.678901Z`."""
    return _iso(t)
