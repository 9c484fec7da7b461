"""The snapshot's pickle: what loads equals what was dumped, equal strings and times load as one
object, what was shared stays shared, and every kind of object keeps its own way back."""

from __future__ import annotations

import pickle
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs

from precheck.domain.status import RunStatus
from precheck.projections import state_pickle


@attrs.frozen
class Point:
    """A slotted record: rebuilt by its constructor."""

    x: int
    label: str
    at: datetime | None = None


@attrs.frozen
class One:
    """A slotted record of one field."""

    name: str


@attrs.frozen
class Checked:
    """A slotted record with a validator: left to attrs' own `__setstate__`."""

    n: int = attrs.field(validator=attrs.validators.instance_of(int))
    tags: tuple[str, ...] = ()


@attrs.frozen(slots=False)
class Loose:
    """A record with a dict: its dict set at once."""

    name: str
    points: tuple[Point, ...] = ()
    status: RunStatus = RunStatus.QUEUED
    extra: dict[str, Any] = attrs.field(factory=dict)


class Model:
    """A read model: a plain object holding containers, one of them twice."""

    def __init__(self) -> None:
        self.by_id: dict[str, Loose] = {}
        self.order: list[str] = []
        self.seen: set[str] = set()
        self.same = self.order  # one list under two names


class Keeps:
    """An object with its own `__setstate__`: the unpickler calls it."""

    def __init__(self) -> None:
        self.value = "a"
        self.restored = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, restored=True)


class Box:
    """Holds anything: a state is shared from the first object down, not from a bare list."""

    def __init__(self, value: Any) -> None:
        self.value = value


def through(value: Any) -> Any:
    """`value` dumped and loaded, inside an object."""
    loaded = state_pickle.loads(state_pickle.dumps(Box(value)))
    assert type(loaded) is Box
    return loaded.value


def fresh(text: str) -> str:
    """An equal string that is another object, as each decoded event gives."""
    return "".join(list(text))


def test_what_loads_equals_what_was_dumped_with_equal_values_as_one_object() -> None:
    t0 = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    model = Model()
    for i in range(3):
        points = (Point(i, fresh("step"), t0 + timedelta(0)), Point(-i, fresh("step")))
        model.by_id[f"r{i}"] = Loose(f"r{i}", points, RunStatus.COMPLETED, {fresh("cells"): 1.5})
        model.order.append(fresh("owner"))
        model.seen.add(f"r{i}")
    data = state_pickle.dumps(model)
    loaded = state_pickle.loads(data)

    assert type(loaded) is Model and loaded.by_id == model.by_id
    assert (loaded.order, loaded.seen) == (model.order, model.seen)
    assert loaded.same is loaded.order  # shared as before
    records = list(loaded.by_id.values())
    labels = {id(p.label) for r in records for p in r.points}
    assert len(labels) == 1 and len({id(o) for o in loaded.order}) == 1
    assert len({id(p.at) for r in records for p in r.points if p.at is not None}) == 1
    assert len({id(k) for r in records for k in r.extra}) == 1
    assert records[0].status is RunStatus.COMPLETED
    # Each record's dict has the names attribute lookups find by identity.
    assert all(sys.intern(name) is name for name in vars(records[0]))
    assert len(data) < len(pickle.dumps(model, pickle.HIGHEST_PROTOCOL))


def test_equal_times_of_other_zones_stay_apart() -> None:
    """An instant in UTC and the same instant an hour east are equal, yet not the same value."""
    utc = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    east = utc.astimezone(timezone(timedelta(hours=1)))
    named = utc.astimezone(timezone(timedelta(0), "Z0"))
    assert utc == east == named
    loaded = through([utc, east, named, utc.replace(fold=1)])
    assert [t.isoformat() for t in loaded] == [
        "2026-01-02T03:00:00+00:00",
        "2026-01-02T04:00:00+01:00",
        "2026-01-02T03:00:00+00:00",
        "2026-01-02T03:00:00+00:00",
    ]
    assert [t.tzname() for t in loaded] == ["UTC", "UTC+01:00", "Z0", "UTC"]
    assert loaded[3].fold == 1 and loaded[0].fold == 0


def test_each_kind_of_object_keeps_its_own_way_back() -> None:
    keeps, checked = Keeps(), Checked(3, (fresh("x"), fresh("x")))
    one = One(fresh("only"))
    loaded = through([keeps, checked, one, 1, True, 1.0, -0.0, 0.0])
    got_keeps, got_checked, got_one, *numbers = loaded
    assert got_keeps.restored and got_keeps.value == "a"
    assert got_checked == checked and got_checked.tags[0] is got_checked.tags[1]
    assert got_one == one
    assert [type(n) for n in numbers] == [int, bool, float, float, float]
    assert [str(n) for n in numbers] == ["1", "True", "1.0", "-0.0", "0.0"]
