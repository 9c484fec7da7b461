"""Read model of re-checks: the images seen, what was planned, and which run re-checks which.

An image counts as new the first time its ref (repo digest, or id when it has none) is seen,
in a run's start or a planned re-check; the newest such ref of an image name is its current
one. A ref seen again never becomes current again, so engines that still run an older image
(or a rolling update) never send uploads back to it.
"""

from __future__ import annotations

from precheck.domain.recheck import REASON, verdict
from precheck.events.store import RecordedEvent
from precheck.events.types import RecheckPlanned, RunDeleted, RunQueued, RunStarted
from precheck.projections.runs import Runs

_TAKES = frozenset({RunStarted, RecheckPlanned, RunQueued, RunDeleted})


class Rechecks:
    """Refs seen per image name in the order first seen; planned (upload, ref) pairs; the
    re-check run of each run re-checked (by the server, for a new image), and the verdict of
    the run each re-check re-checks, as it was when the re-check was queued (`was`)."""

    EVENTS = _TAKES  # the types `apply` looks at: `Projections` feeds it no others

    def __init__(self, runs: Runs) -> None:
        self.runs = runs  # applied before this model, so a queued re-check finds its old run
        self.refs: dict[str, dict[str, int]] = {}  # image -> ref -> position first seen
        self._current: dict[str, str] = {}
        self.planned: dict[tuple[str, str], str] = {}  # (upload, ref) -> the run re-checked
        self.run_of: dict[str, str] = {}  # the run re-checked -> its re-check
        self.was: dict[str, str | None] = {}  # a re-check -> the verdict it re-checks

    def current(self, image: str) -> str:
        """The newest ref first seen of `image`; empty when none was seen."""
        return self._current.get(image, "")

    def seen(self, image: str, ref: str) -> bool:
        """Was `ref` of `image` seen before?"""
        return ref in self.refs.get(image, {})

    def apply(self, r: RecordedEvent) -> None:
        """Evolve the state by one event."""
        e = r.event
        if type(e) not in _TAKES:
            return  # most events: a replay passes them by at the cost of one set lookup
        if isinstance(e, RunStarted):
            # Rows from before `image_id` hold the id in `image_digest` when there was no digest.
            self._see(e.image, e.image_digest or e.image_id, r.position)
        elif isinstance(e, RecheckPlanned):
            self._see(e.image, e.image_ref, r.position)
            self.planned[(e.upload_id, e.image_ref)] = e.run_id
        elif isinstance(e, RunQueued) and e.reason == REASON:
            self.run_of[e.recheck_of] = e.run_id
            old = self.runs.get(e.recheck_of)
            self.was[e.run_id] = verdict(old) if old is not None else None
        elif isinstance(e, RunDeleted):
            self.was.pop(e.run_id, None)
            self.run_of.pop(e.run_id, None)

    def _see(self, image: str, ref: str, position: int) -> None:
        if not ref:
            return
        known = self.refs.setdefault(image, {})
        if ref not in known:
            known[ref] = position
            self._current[image] = ref
