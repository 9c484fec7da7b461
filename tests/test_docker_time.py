"""Docker's timestamp text read as each use needs it: exact nanoseconds, seconds, a datetime,
a `since` parameter."""

from __future__ import annotations

from datetime import UTC, datetime

from precheck.storage.docker_time import (
    docker_datetime,
    docker_nanos,
    docker_seconds,
    docker_since,
)

T1 = "2026-01-02T03:04:05.123456789Z"
T2 = "2026-01-02T03:04:05.5Z"  # trailing zeros trimmed, as Docker writes it
T3 = "2026-01-02T03:04:06Z"
BASE = int(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())


def test_nanoseconds_are_exact_and_order_as_time_does() -> None:
    assert docker_nanos(T1) == BASE * 10**9 + 123_456_789
    assert docker_nanos(T2) == BASE * 10**9 + 500_000_000
    assert docker_nanos(T3) == (BASE + 1) * 10**9
    assert docker_nanos(T1) < docker_nanos(T2) < docker_nanos(T3)


def test_seconds_with_zero_time_as_zero() -> None:
    assert docker_seconds(T2) == BASE + 0.5
    assert abs(docker_seconds(T1) - (BASE + 0.123456789)) < 1e-6
    assert docker_seconds("") == 0.0 and docker_seconds("0001-01-01T00:00:00Z") == 0.0


def test_datetime_to_microseconds() -> None:
    assert docker_datetime(T1) == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert docker_datetime(T3) == datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
    assert docker_datetime("") == datetime(1, 1, 1, tzinfo=UTC)
    assert docker_datetime("0001-01-01T00:00:00Z") == datetime(1, 1, 1, tzinfo=UTC)


def test_since_parameter() -> None:
    assert docker_since(T1) == f"{BASE}.123456789"
    assert docker_since(T2) == f"{BASE}.500000000"
    assert docker_since(T3) == f"{BASE + 1}.000000000"
