"""Who reacts to which events: the one table.

Every committed event goes, in position order and before its append returns, to the
reactions below that name its type, in the order of the table. The projections come first,
so every other reaction reads the state after the event. A reaction only notes the event and
wakes its part; the work happens in that part's own task.

A reaction that must not miss an event across a restart does not keep a bookmark of its own:
its pending work is what the log does not yet show done (an upload with no `upload.inspected`,
an upload past its expiry, a queued run, an ended run's delivery without its
`notification.sent`), derived from the projections when it starts. New reactions (re-checks,
retention) follow the same rule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from precheck.events.store import RecordedEvent
from precheck.events.types import TAGS

log = logging.getLogger(__name__)

EVERY = "*"


@attrs.frozen
class Reaction:
    """A part that reacts to events: its `name`, the event tags it takes (`on`: exact tags,
    prefixes ending in `.`, or `*` for every event), and what it does."""

    name: str
    on: tuple[str, ...]
    does: str

    def takes(self, tag: str) -> bool:
        """Does this reaction take events of `tag`?"""
        return any(
            t == EVERY or t == tag or (t.endswith(".") and tag.startswith(t)) for t in self.on
        )


REACTIONS: tuple[Reaction, ...] = (
    Reaction(
        "projections", (EVERY,), "fold the event into the read models (uploads, runs, queue, keys)"
    ),
    Reaction(
        "stream closer",
        ("key.revoked",),
        "close every open stream and end every wait the revoked key opened",
    ),
    Reaction(
        "run announcer", ("run.",), "write one line of server output per change in a run's life"
    ),
    Reaction("upload expiry", ("upload.received",), "set its timer for the next upload to expire"),
    Reaction(
        "layout inspector",
        ("upload.received", "upload.inspected", "upload.inspection-failed"),
        "read each new upload's layout in a child process, once per sha256",
    ),
    Reaction(
        "notifier",
        (
            "run.outputs-stored",
            "run.cancelled",
            "run.failed-to-start",
            "run.finish-failed",
            "run.reused",
            "run.deleted",
            "notification.",
        ),
        "tell each ended run's subscribers by webhook or email, at least once, retried",
    ),
    Reaction(
        "rechecker",
        (
            "run.started",
            "run.outputs-stored",
            "run.cancelled",
            "run.failed-to-start",
            "run.finish-failed",
        ),
        "queue a re-check of each upload whose newest verdict came from an older image",
    ),
    Reaction(
        "supervisor",
        ("run.", "server.instance-created"),
        "place queued runs on engines, kill the containers of cancelled runs",
    ),
    Reaction(
        "retention",
        ("run.outputs-stored",),
        "with a storage budget, look again as each run ends; its pass also runs on a timer",
    ),
)

Handler = Callable[[RecordedEvent], None]


class Reactions:
    """The table made live: the store's one listener, handing each event to the handlers
    attached under the names of the reactions that take it."""

    def __init__(self, table: tuple[Reaction, ...] = REACTIONS) -> None:
        self.table = table
        self._handlers: dict[str, Handler] = {}
        self._by_tag: dict[str, list[Reaction]] = {
            tag: [r for r in table if r.takes(tag)] for tag in TAGS.values()
        }

    def attach(self, name: str, handler: Handler) -> None:
        """Let `handler` be the reaction named `name` in the table."""
        if name not in {r.name for r in self.table}:
            raise KeyError(f"no reaction named {name!r} in the table")
        self._handlers[name] = handler

    def __call__(self, recorded: RecordedEvent) -> None:
        for reaction in self._by_tag.get(TAGS[type(recorded.event)], ()):
            handler = self._handlers.get(reaction.name)
            if handler is None:
                continue  # that part does not run here (no supervisor, pre-flight off)
            try:
                handler(recorded)
            except Exception:
                # One failing reaction must not keep the event from the others.
                log.exception("reaction %s failed on position %d", reaction.name, recorded.position)
