"""Fast copies of frozen records with some fields changed.

`attrs.evolve` inspects the class on every call; a replay copies a record per event, so each
record class gets a generated function that only reads and passes its fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

T = TypeVar("T")


def replacer(cls: type[T]) -> Callable[..., T]:
    """`replace(record, **changes)` for the attrs class `cls`, equal to `attrs.evolve`.

    A class with a `__dict__` (attrs `slots=False`) is copied by copying that dict, which is
    done in C; a slotted class through its constructor. Neither runs validators: records are
    built by the projections only.
    """
    if "__slots__" not in cls.__dict__:
        update = updater(cls)

        def replace(o: T, **c: Any) -> T:
            return update(o, c)

        return replace
    fields = attrs.fields(cls)  # type: ignore[arg-type]
    args = ", ".join(f"c[{f.name!r}] if {f.name!r} in c else o.{f.name}" for f in fields)
    code = f"def replace(o, **c):\n    return cls({args})\n"
    scope: dict[str, Any] = {"cls": cls}
    exec(compile(code, f"<replace {cls.__name__}>", "exec"), scope)
    fn: Callable[..., T] = scope["replace"]
    return fn


def updater(cls: type[T]) -> Callable[[T, dict[str, Any]], T]:
    """`update(record, changes)`: `replacer`'s copy of a record of `cls` (a class with a
    `__dict__`), the changes given as one dict, so a caller that builds them as a dict has
    nothing packed into keyword arguments and out again."""
    if "__slots__" in cls.__dict__:
        raise TypeError(f"{cls.__name__} has slots: use replacer")
    new = object.__new__

    def update(o: T, c: dict[str, Any]) -> T:
        copy = new(cls)
        d = copy.__dict__
        d.update(o.__dict__)
        d.update(c)
        return copy

    return update
