"""The read models' state as a pickle that loads fast: what a restart waits for.

Generic like the snapshot: any object pickles as it would by default, only written so that
loading it makes fewer objects and runs less Python.

- Equal strings and datetimes are written once. The log's events decode each into an object
  of its own, so a state holds hundreds of thousands of copies of a few values (owners,
  engines, step names, images, times); written once and referred to again, each loads as one
  object. To reach them an object's state (or a record's fields) is walked through the plain
  containers in it, each container copied once, so what two objects share stays shared.
- An object with a plain `__dict__` state and no `__setstate__` (a record with a dict, a read
  model) is rebuilt by setting its dict from its names and values at once: the unpickler
  would build the state dict and then copy it into the object's, item by item. The names
  are written once per set of names, and interned at load as the unpickler would.
- A slotted attrs record is rebuilt by a call of its class with its fields' values: attrs
  restores one through a `__setstate__` written in Python, a constructor call is faster. Only
  for classes whose constructor gives the record back as it was: every field set by
  `__init__`, positionally, with no converter or validator.
"""

from __future__ import annotations

import copyreg
import gc
import io
import pickle
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from operator import attrgetter
from typing import Any

import attrs


def dumps(state: Any) -> bytes:
    """`state` pickled (blocking; the collector paused: pickling makes no garbage)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        out = io.BytesIO()
        _Pickler(out, pickle.HIGHEST_PROTOCOL).dump(state)
        return out.getvalue()
    finally:
        if was_enabled:
            gc.enable()


def loads(data: bytes) -> Any:
    """The state `dumps` wrote. What it loads is frozen out of later collections: it lives as
    long as the server, and collections would rescan its million objects for no garbage."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        state = pickle.loads(data)
        gc.freeze()  # before collections resume: the first would scan all it made
        return state
    finally:
        if was_enabled:
            gc.enable()


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, protocol: int) -> None:
        super().__init__(file, protocol)
        self._protocol = protocol
        self._values: dict[Any, Any] = {}  # a value -> the one object written for it
        self._copies: dict[int, tuple[Any, Any]] = {}  # id -> (container, its shared copy)
        self._names: dict[tuple[str, ...], _Names] = {}
        self._leaves = set(_AS_IS)  # the types `_share` gives back as they are

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        how = _HOW[cls] if cls in _HOW else _how(cls)
        if how is None:
            return NotImplemented
        if not isinstance(how, str):  # a record by its constructor
            return cls, tuple(self._shared(how(obj)))
        rv = obj.__reduce_ex__(self._protocol)
        if not isinstance(rv, tuple) or len(rv) < 3:
            return rv
        state = rv[2]
        if (
            how is _WITH_DICT
            and rv[0] is copyreg.__newobj__  # type: ignore[attr-defined]
            and rv[1] == (cls,)
            and type(state) is dict
            and rv[3:] == (None, None)
        ):
            names = tuple(state)
            written = self._names.get(names) or self._names_of(names)
            if written is not None:
                return _with_dict, (cls, written, tuple(self._shared(state.values())))
        return (rv[0], self._share(rv[1]), self._share(state), *rv[3:])

    def _names_of(self, names: tuple[str, ...]) -> _Names | None:
        if not all(type(n) is str for n in names):
            return None  # a state of its own making: left to the unpickler's own way
        return self._names.setdefault(names, _Names(names))

    def _shared(self, values: Iterable[Any]) -> list[Any]:
        """`_share` of each of `values`; the commonest kinds without a call (millions)."""
        known, leaves, share = self._values, self._leaves, self._share
        return [
            known.setdefault(v, v) if (t := type(v)) is str else v if t in leaves else share(v)
            for v in values
        ]

    def _share(self, v: Any) -> Any:
        """`v` with the equal strings and datetimes in it replaced by one object each."""
        cls = type(v)
        if cls is str:
            return self._values.setdefault(v, v)
        if cls is datetime:
            # Equal times of other zones (or folds) are not the same value.
            return self._values.setdefault((v, id(v.tzinfo), v.fold), v)
        if cls not in _CONTAINERS:
            self._leaves.add(cls)  # a record, an enum: pickled in its own turn
            return v
        if not v:
            return v
        done = self._copies.get(id(v))
        if done is not None:
            return done[1]
        if cls is dict:
            copy: Any = dict(zip(self._shared(v), self._shared(v.values()), strict=True))
        else:
            copy = cls(self._shared(v))
        self._copies[id(v)] = (v, copy)  # the original kept: no other gets its id meanwhile
        return copy


_AS_IS = frozenset({int, float, bool, type(None)})  # not shared: pickle writes them inline
_CONTAINERS = frozenset({dict, list, tuple, set, frozenset})
# How a class's objects are written: by a call of the class with the values a getter reads
# from one, or by one of these, or None: as pickle would (a class, a function, a value with
# its own reduce).
_WITH_DICT = "its class, names and values"
_BY_STATE = "its class and state, shared"
_How = Callable[[Any], tuple[Any, ...]] | str | None
_HOW: dict[type, _How] = {}


def _how(cls: type) -> _How:
    how: _How = None
    if "__slots__" in cls.__dict__ and attrs.has(cls):
        fields = attrs.fields(cls)
        if fields and not any(
            not f.init or f.kw_only or f.converter is not None or f.validator is not None
            for f in fields
        ):
            how = _fields_getter([f.name for f in fields])
    if how is None and _default_reduce(cls):
        how = _BY_STATE if hasattr(cls, "__setstate__") else _WITH_DICT
    _HOW[cls] = how
    return how


def _fields_getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """What reads the fields `names` of a record, as a tuple (in C, for more than one)."""
    if len(names) > 1:
        return attrgetter(*names)
    (name,) = names  # one name: an attrgetter would read the value, not a tuple of it
    return lambda o: (getattr(o, name),)


def _default_reduce(cls: type) -> bool:
    """Does `cls` pickle its objects the default way, by their class and state?"""
    return (
        cls.__reduce_ex__ is object.__reduce_ex__  # type: ignore[comparison-overlap]
        and cls.__reduce__ is object.__reduce__  # type: ignore[comparison-overlap]
        and cls.__module__ != "builtins"  # functions, modules: pickled by name
        and not issubclass(cls, type)
    )


class _Names(tuple[str, ...]):
    """The names of a `__dict__` state: written once, interned at load."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return _interned, (tuple(self),)


def _interned(names: tuple[str, ...]) -> tuple[str, ...]:
    # Attribute lookups find interned names by identity, as the unpickler's own BUILD makes them.
    return tuple([sys.intern(n) for n in names])


def _with_dict(cls: Any, names: tuple[str, ...], values: tuple[Any, ...]) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(zip(names, values, strict=True))
    return obj
