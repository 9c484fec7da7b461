"""What a person (or a CI log) sees of a followed run: one line per change, and the log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from precheck.client.estimate import estimate_words
from precheck.client.follow import End, EstimateNews, Item, LogLine, Update
from precheck.client.outcome import status_of
from precheck.client.output import Output


class Watcher:
    """Shows a run's stream: queue position, `step N of M: Name`, the log lines, once each.

    With `--json` every item is one JSON line on stdout instead.
    """

    def __init__(self, out: Output, *, show_log: bool = True, show_updates: bool = True) -> None:
        self.out = out
        self.show_log, self.show_updates = show_log, show_updates
        self._status = ""
        self._queue: tuple[Any, Any] | None = None
        self._step: tuple[Any, Any, Any] | None = None
        self._estimate: str | None = None

    def show(self, item: Item) -> None:
        """Write what `item` changes."""
        if isinstance(item, LogLine):
            if not self.show_log:
                return
            if self.out.json_mode:
                self.out.document({"type": "log", "line": item.number, "text": item.text})
            else:
                self.out.line(item.text)
            return
        if isinstance(item, End):
            if self.out.json_mode and self.show_updates:
                self.out.document({"type": "end", "run": item.data})
            return
        if isinstance(item, EstimateNews):
            if self.out.json_mode and self.show_updates:
                self.out.document({"type": "estimate", **item.data})
            elif self.show_updates:
                data = item.data
                self._say_estimate({"State": {"Status": data.get("Status")}, **data})
            return
        if self.out.json_mode:
            if self.show_updates:
                self.out.document({"type": item.kind, "run": item.doc})
            return
        if self.show_updates:
            self._describe(item)

    def _describe(self, item: Update) -> None:
        doc = item.doc
        status = status_of(doc)
        if status == "queued":
            queue = doc.get("Queue") or {}
            place = (queue.get("Position"), queue.get("Length"))
            if place != self._queue:
                self._queue = place
                where = f"position {place[0]} of {place[1]}" if place[0] else "waiting"
                self.out.note(f"queued: {where}")
        elif status != self._status:
            if status == "running":
                self.out.note("running", "bold")
            elif status == "finishing":
                self.out.note("finishing: the container stopped, its outputs are being stored")
        self._status = status
        progress = doc.get("Progress")
        if progress:
            step = (progress.get("Step"), progress.get("Total"), progress.get("Name"))
            if step != self._step:
                self._step = step
                self.out.note(f"step {step[0]} of {step[1]}: {step[2]}", "bold")

    def _say_estimate(self, doc: dict[str, Any]) -> None:
        """The estimate's words, when they changed since last said."""
        words = estimate_words(doc, datetime.now(UTC))
        if words is not None and words != self._estimate:
            self.out.note(words, "dim")
        self._estimate = words
