"""The rules of automatic re-checks, on read models built from events: what is planned (once
per upload and image), where re-checks queue, their share of the slots, what the documents say
and whom a re-check tells."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from precheck.config import Config, ConfigError, RecheckConfig
from precheck.domain.commands import PlanRechecks, decide
from precheck.domain.recheck import recheck_slots
from precheck.events.store import RecordedEvent
from precheck.events.types import (
    TAGS,
    Event,
    Metadata,
    RecheckPlanned,
    RunQueued,
    Subscription,
    stream_of,
)
from precheck.projections import Projections
from precheck.web.render import run_recheck, upload_recheck
from tests.factories import (
    T0,
    given,
    run_exited,
    run_outputs_stored,
    run_queued,
    run_started,
    upload_received,
)

IMAGE = "precheck:latest"
OLD, NEW = "sha256:00", "sha256:11"
NOW = T0 + timedelta(minutes=5)
HOOK = Subscription("webhook", "https://hooks.example.org/h")


def ended(run_id: str, upload_id: str = "u1", *, ref: str = OLD, **exit: object) -> list[Event]:
    """A run of `upload_id` queued, started on image `ref` and ended (passed by default)."""
    return [
        run_queued(run_id, upload_id, notify=(HOOK,)),
        run_started(run_id, image=IMAGE, image_digest="", image_id=ref),
        run_exited(run_id, **exit),  # type: ignore[arg-type]
        run_outputs_stored(run_id),
    ]


def planned(state: Projections, ref: str = NEW) -> list[Event]:
    """What planning re-checks for `ref` decides, applied to `state`."""
    events = list(decide(PlanRechecks(IMAGE, ref, NOW), state).events)
    for e in events:
        _apply(state, e)
    return events


def _apply(state: Projections, e: Event) -> None:
    """Apply one more event, as the server appends it."""
    tag, meta = TAGS[type(e)], Metadata("server")
    state.apply(RecordedEvent(state.position + 1, stream_of(e), 0, e, meta, T0, tag, ""))


@pytest.mark.parametrize(
    ("share", "slots", "rechecks"),
    [(0.25, 2, 1), (0.25, 1, 1), (0.25, 8, 2), (0.3, 10, 3), (0.5, 3, 1), (1.0, 4, 4)],
)
def test_the_share_rounds_down_but_is_at_least_one(share: float, slots: int, rechecks: int) -> None:
    """floor(max_share * slots), at least one: two slots at 0.25 run one at a time."""
    assert recheck_slots(share, slots) == rechecks


def test_rechecks_are_off_by_default_and_the_share_is_checked(
    make_config: Callable[..., Config],
) -> None:
    """`[recheck]` is opt-in with a quarter of the slots; a share outside (0, 1] or an unknown
    key stops the config with the key named."""
    assert make_config().recheck == RecheckConfig(enabled=False, max_share=0.25)
    assert make_config(recheck={"enabled": True}).recheck.enabled
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ConfigError, match=r"recheck\.max_share"):
            make_config(recheck={"max_share": bad})
    with pytest.raises(ConfigError):
        make_config(recheck={"share": 0.5})


def test_a_passed_run_on_an_older_image_is_planned_once() -> None:
    """The newest ended run passed on OLD: for NEW, `recheck.planned` then a `run.queued` with
    reason `recheck`, the same parameters and subscriptions, owned by the run's owner; planning
    again (a replay, a second scan) decides nothing."""
    state = given(upload_received("u1"), *ended("r1"))
    events = planned(state)
    assert [type(e) for e in events] == [RecheckPlanned, RunQueued]
    plan, queued = events
    assert isinstance(plan, RecheckPlanned) and isinstance(queued, RunQueued)
    assert (plan.upload_id, plan.run_id, plan.image, plan.image_ref) == ("u1", "r1", IMAGE, NEW)
    assert (queued.reason, queued.recheck_of, queued.notify) == ("recheck", "r1", (HOOK,))
    assert (queued.top_cell, queued.die_id, queued.upload_id) == ("TOP", "ABCD1234", "u1")
    again = state.runs.by_id[queued.run_id]
    assert again.owner == state.runs.by_id["r1"].owner == "test"
    assert planned(state) == []
    assert state.rechecks.planned == {("u1", NEW): "r1"}


def test_only_a_verdict_on_another_image_with_nothing_under_way_is_planned() -> None:
    """A design failure is planned; a system failure, a run on NEW already, an upload with a
    run under way and an expired upload are not."""
    state = given(
        upload_received("design"),
        *ended("d1", "design", status="failed", classification="design"),
        upload_received("system"),
        *ended("s1", "system", status="failed", classification="system"),
        upload_received("current"),
        *ended("c1", "current", ref=NEW),
        upload_received("busy"),
        *ended("b1", "busy"),
        run_queued("b2", "busy"),
        upload_received("old", expires_at=T0),
        *ended("o1", "old"),
    )
    plans = [e for e in planned(state) if isinstance(e, RecheckPlanned)]
    assert [(p.upload_id, p.run_id) for p in plans] == [("design", "d1")]


def test_rechecks_queue_behind_every_user_run_and_within_their_share() -> None:
    """A user's run queued after the re-checks goes first; once `max_rechecks` re-checks hold a
    slot, no other may start, while user runs still may."""
    state = given(upload_received("u1"), *ended("r1"), upload_received("u2"), *ended("r2", "u2"))
    rechecks = [e.run_id for e in planned(state) if isinstance(e, RunQueued)]
    assert len(rechecks) == 2
    _apply(state, run_queued("mine", "u1"))
    assert state.queue.queued() == ["mine", *rechecks]
    state.queue.max_rechecks = 1
    _apply(state, run_started(rechecks[0]))
    assert state.queue.startable() == ["mine"]
    assert state.queue.running_rechecks() == 1


def _with_new_image() -> Projections:
    """u1 ran twice on OLD (`older`, then `r1`, both passed, both told a webhook); a run of u2
    then started on NEW."""
    return given(
        upload_received("u1"),
        *ended("older"),
        *ended("r1"),
        upload_received("u2"),
        run_queued("x", "u2"),
        run_started("x", image=IMAGE, image_digest="", image_id=NEW),
    )


def test_documents_say_newer_image_then_queued_then_same() -> None:
    """The newest verdict of u1 (not its older run) says `newer-image-available`; once planned,
    `recheck-queued`; once the re-check passed too, `rechecked-same` on the run, its re-check
    and the upload, and the re-check owes its subscribers nothing."""
    state = _with_new_image()
    assert run_recheck(state.runs.by_id["older"], state, IMAGE) is None
    newer = run_recheck(state.runs.by_id["r1"], state, IMAGE)
    assert newer is not None and newer["State"] == "newer-image-available"
    assert newer["Image"] == NEW and newer["Before"] == "passed" and newer["Run"] is None
    assert upload_recheck(state.uploads.by_id["u1"], state, IMAGE) == newer
    again = next(e.run_id for e in planned(state) if isinstance(e, RunQueued))
    queued = run_recheck(state.runs.by_id["r1"], state, IMAGE)
    assert queued is not None and queued["State"] == "recheck-queued" and queued["Run"] == again
    assert (again, 1) in state.notifications.owed, "owed once it ends, if its verdict changed"

    for e in ended(again, ref=NEW)[1:]:
        _apply(state, e)
    doc = run_recheck(state.runs.by_id[again], state, IMAGE)
    assert doc is not None and doc["State"] == "rechecked-same" and doc["Verdict"] == "passed"
    assert run_recheck(state.runs.by_id["r1"], state, IMAGE) == doc
    assert upload_recheck(state.uploads.by_id["u1"], state, IMAGE) == doc
    assert (again, 1) not in state.notifications.owed, "the same verdict tells nobody"
    assert state.notifications.get(again, 1).quiet  # type: ignore[union-attr]


def test_a_changed_verdict_is_owed_to_the_subscribers() -> None:
    """The re-check fails on its design where the run it re-checks passed: `verdict-changed`,
    and its delivery is owed like any run's end."""
    state = _with_new_image()
    again = next(e.run_id for e in planned(state) if isinstance(e, RunQueued))
    for e in ended(again, ref=NEW, status="failed", classification="design")[1:]:
        _apply(state, e)
    doc = run_recheck(state.runs.by_id[again], state, IMAGE)
    assert doc is not None and doc["State"] == "verdict-changed"
    assert (doc["Before"], doc["Verdict"]) == ("passed", "failed at an unknown step")
    assert (again, 1) in state.notifications.owed


def test_a_recheck_with_no_verdict_says_so_and_tells_nobody() -> None:
    """A re-check that failed as a system failure gave no verdict: `recheck-failed`."""
    state = _with_new_image()
    again = next(e.run_id for e in planned(state) if isinstance(e, RunQueued))
    for e in ended(again, ref=NEW, status="failed", classification="system")[1:]:
        _apply(state, e)
    doc = run_recheck(state.runs.by_id[again], state, IMAGE)
    assert doc is not None and doc["State"] == "recheck-failed" and doc["Verdict"] is None
    assert (again, 1) not in state.notifications.owed
