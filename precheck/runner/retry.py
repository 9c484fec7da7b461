"""Trying a Docker action again: a number of tries, a doubling wait between them, a cap.

Nothing waits for ever (invariant 10): kill, finish and removal each go through `retried`, and
their callers record what happens when the tries run out. A start that fails is retried as a
new attempt of its run instead (see `starting.py`), after a wait from the same `Backoff`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs

from precheck.runner.engine import EngineUnreachable

T = TypeVar("T")

# Called after each failed try with the error and how many tries failed so far (it records).
OnFailure = Callable[[Exception, int], Awaitable[None]]


@attrs.define
class Backoff:
    """`tries` in all; after the n-th failure wait `base * 2**(n-1)` seconds, at most `cap`."""

    tries: int
    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        """The wait after `failures` failed tries."""
        return float(min(self.cap, self.base * 2 ** max(0, failures - 1)))


async def retried(
    action: Callable[[], Awaitable[T]],
    backoff: Backoff,
    on_failure: OnFailure,
    *,
    failed: int = 0,
) -> T:
    """`action`'s result, tried up to `backoff.tries` times; the last error once they run out.

    An engine that no longer answers (`EngineUnreachable`) ends the tries at once: what was
    under way is taken up again by the engine's reconcile when it answers. Each other failure
    is handed to `on_failure` before the wait. `failed`: tries that failed before this call
    (it then waits first), so one action's tries count once whoever makes them."""
    failures = failed
    if failures:
        await asyncio.sleep(backoff.delay(failures))
    while True:
        try:
            return await action()
        except (asyncio.CancelledError, EngineUnreachable):
            raise
        except Exception as e:
            failures += 1
            await on_failure(e, failures)
            if failures >= backoff.tries:
                raise
            await asyncio.sleep(backoff.delay(failures))
