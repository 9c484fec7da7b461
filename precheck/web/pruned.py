"""410 for the files of a run that retention removed."""

from __future__ import annotations

from precheck.domain.retention import gone_message
from precheck.errors import Gone
from precheck.projections.runs import RunRecord


def refuse_pruned(run: RunRecord, kind: str, what: str) -> None:
    """410 with what went, when and why, once retention removed the run's files of `kind`."""
    message = gone_message(run, kind, what)
    if message is not None:
        raise Gone(message)
