"""`decide` as pure functions: given events, when a command, then events or a domain error."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypedDict, Unpack

import attrs
import pytest

from precheck.domain.commands import (
    CancelRun,
    DeleteRun,
    DeleteUpload,
    ExpireUploads,
    QueueRun,
    ReceiveUpload,
    decide,
)
from precheck.domain.result_cache import Reuse, SourceGone
from precheck.errors import Conflict, Expired, Invalid, NotFound, TooMany
from precheck.events.types import (
    Event,
    OutputFile,
    Preflight,
    RunCancelled,
    RunCancelRequested,
    RunFailedToStart,
    RunQueued,
    RunReused,
    UploadDeleted,
    UploadExpired,
)
from tests.factories import (
    EXPIRY,
    T0,
    given,
    run_exited,
    run_finished,
    run_outputs_stored,
    run_queued,
    run_started,
    upload_received,
)

LATER = T0 + timedelta(minutes=5)


class QueueRunChanges(TypedDict, total=False):
    """Fields of `QueueRun` a test may change."""

    run_id: str
    upload_id: str
    top_cell: str
    die_id: str
    slot: str
    cob: bool
    now: datetime
    owner: str
    max_running: int


def queue_run(**changes: Unpack[QueueRunChanges]) -> QueueRun:
    """A good request to queue run `r1` of upload `u1`, with `changes` applied."""
    return attrs.evolve(QueueRun("r1", "u1", "TOP", "ABCD1234", "1x1", False, LATER), **changes)


# Receiving and deleting uploads -----------------------------------------------------------------


def test_receive_upload_records_it() -> None:
    """A new upload becomes `UploadReceived` on a stream that must not exist yet."""
    cmd = ReceiveUpload("u1", "chip.gds", "layout.gds", "gds", 4096, "cd" * 32, T0, T0 + EXPIRY)
    decision = decide(cmd, given())
    assert decision.events == (upload_received("u1"),)
    assert decision.expect == {"upload-u1": 0}


def test_receive_upload_twice_conflicts() -> None:
    """An upload id already in use is refused."""
    cmd = ReceiveUpload("u1", "chip.gds", "layout.gds", "gds", 4096, "cd" * 32, T0, T0 + EXPIRY)
    with pytest.raises(Conflict):
        decide(cmd, given(upload_received("u1")))


def test_delete_upload_of_queued_run_conflicts() -> None:
    """An upload an active run still needs cannot be deleted."""
    with pytest.raises(Conflict, match="r2"):
        decide(
            DeleteUpload("u1", LATER),
            given(upload_received(), run_queued("r1"), run_finished("r1"), run_queued("r2")),
        )
    with pytest.raises(Conflict):
        decide(
            DeleteUpload("u1", LATER), given(upload_received(), run_queued("r1"), run_started("r1"))
        )


def test_delete_upload_of_finished_runs_deletes_it() -> None:
    """An upload whose runs have all ended is deleted, decided on its current version."""
    state = given(
        upload_received(),
        run_queued("r1"),
        run_finished("r1", "failed"),
        run_queued("r2"),
        RunCancelled("r2", T0),
        run_queued("r3"),
        RunFailedToStart("r3", "no image", T0),
    )
    decision = decide(DeleteUpload("u1", LATER), state)
    assert decision.events == (UploadDeleted("u1", LATER),)
    assert decision.expect == {"upload-u1": 1}


def test_delete_unknown_upload_is_not_found() -> None:
    """Deleting an upload that does not exist (or no longer does) is `NotFound`."""
    with pytest.raises(NotFound):
        decide(DeleteUpload("u1", LATER), given())
    with pytest.raises(NotFound):
        decide(DeleteUpload("u1", LATER), given(upload_received(), UploadDeleted("u1", T0)))


# Queueing runs ----------------------------------------------------------------------------------


def test_queue_run_copies_the_upload_into_the_event() -> None:
    """A good request becomes `RunQueued` naming the upload's file, decided on both streams."""
    cmd = queue_run(top_cell="Chip_Top$2-a", die_id="0123abCD", slot="0p5x0p5", cob=True)
    upload = upload_received()
    decision = decide(cmd, given(upload))
    assert decision.events == (
        run_queued(
            top_cell="Chip_Top$2-a",
            die_id="0123abCD",
            slot="0p5x0p5",
            cob=True,
            input_name=upload.name,
            input_filename=upload.filename,
            input_format=upload.format,
            input_size=upload.size,
            input_sha256=upload.sha256,
            at=LATER,
            preflight=Preflight("not-run", "enforce", reason="the layout has not been read yet"),
        ),
    )
    assert decision.expect == {"upload-u1": 1, "run-r1": 0}


def test_queue_run_on_unknown_upload_is_not_found() -> None:
    """Queueing a run of an upload that does not exist is `NotFound`."""
    with pytest.raises(NotFound):
        decide(queue_run(upload_id="nope"), given(upload_received()))


@pytest.mark.parametrize(
    "history, now",
    [
        pytest.param((upload_received(),), T0 + EXPIRY, id="expiry-reached"),
        pytest.param((upload_received(),), T0 + 2 * EXPIRY, id="expiry-passed"),
        pytest.param(
            (upload_received(), run_queued("r0"), UploadExpired("u1", T0)),
            LATER,
            id="expired-event",
        ),
    ],
)
def test_queue_run_on_expired_upload_is_refused(history: tuple[Event, ...], now: datetime) -> None:
    """An upload past its expiry, or retired as expired, starts no more runs."""
    with pytest.raises(Expired):
        decide(queue_run(now=now), given(*history))


@pytest.mark.parametrize(
    "field, value",
    [
        ("die_id", "ABC1234"),
        ("die_id", "ABCDE1234"),
        ("die_id", "ABCD-123"),
        ("die_id", "ABCD 123"),
        ("die_id", "ÄBCD1234"),
        ("die_id", ""),
        ("slot", "2x2"),
        ("slot", "1X1"),
        ("slot", ""),
        ("top_cell", "top.gds"),
        ("top_cell", "lib/top"),
        ("top_cell", "../top"),
        ("top_cell", "my top"),
        ("top_cell", ""),
        ("top_cell", "1top"),
        ("top_cell", "t" * 129),
    ],
)
def test_queue_run_with_bad_values_is_invalid(field: str, value: str) -> None:
    """A malformed die id, slot or top cell is `Invalid`, and nothing is queued."""
    state = given(upload_received())
    with pytest.raises(Invalid) as raised:
        decide(QueueRun(**(attrs.asdict(queue_run()) | {field: value})), state)
    assert not isinstance(raised.value, Expired)
    assert field in str(raised.value)
    assert state.runs.by_id == {}


def test_queue_run_with_max_running_runs_running_is_too_many() -> None:
    """An owner with `max_running` runs holding a slot is refused, and nothing is queued; its
    waiting runs, a run whose container has stopped, and other owners' runs do not count."""
    state = given(upload_received(), run_queued("r0"), run_started("r0"), run_queued("r2"))
    with pytest.raises(TooMany) as raised:
        decide(queue_run(owner="test", max_running=1), state)
    assert str(raised.value).startswith(
        "test has 1 runs running, as many as server.max_running_per_owner allows"
    )
    assert "r1" not in state.runs.by_id
    for allowed in (
        queue_run(owner="test", max_running=2),
        queue_run(owner="test"),  # 0: no limit
        queue_run(owner="someone-else", max_running=1),
    ):
        assert [type(e) for e in decide(allowed, state).events] == [RunQueued]
    stopped = run_exited("r0")
    history = (upload_received(), run_queued("r0"), run_started("r0"), stopped, run_queued("r2"))
    decision = decide(queue_run(owner="test", max_running=1), given(*history))
    assert [type(e) for e in decision.events] == [RunQueued]


# Cancelling runs --------------------------------------------------------------------------------


def test_cancel_queued_run_cancels_it() -> None:
    """A queued run is cancelled at once."""
    decision = decide(CancelRun("r1", LATER), given(upload_received(), run_queued("r1")))
    assert decision.events == (RunCancelled("r1", LATER),)
    assert decision.expect == {"run-r1": 1}


def test_cancel_running_run_asks_the_supervisor_once() -> None:
    """A running run gets `RunCancelRequested`; asking again adds nothing."""
    history = (upload_received(), run_queued("r1"), run_started("r1"))
    first = decide(CancelRun("r1", LATER), given(*history))
    assert first.events == (RunCancelRequested("r1", LATER),)
    assert first.expect == {"run-r1": 2}
    again = decide(CancelRun("r1", LATER), given(*history, *first.events))
    assert again.events == ()


@pytest.mark.parametrize(
    "end",
    [
        run_finished("r1"),
        run_finished("r1", "failed"),
        RunCancelled("r1", T0),
        RunFailedToStart("r1", "no image", T0),
    ],
    ids=["completed", "failed", "cancelled", "failed-to-start"],
)
def test_cancel_ended_run_conflicts(end: Event) -> None:
    """A run that has ended cannot be cancelled."""
    with pytest.raises(Conflict):
        decide(
            CancelRun("r1", LATER),
            given(upload_received(), run_queued("r1"), run_started("r1"), end),
        )


def test_cancel_unknown_run_is_not_found() -> None:
    """Cancelling a run that does not exist is `NotFound`."""
    with pytest.raises(NotFound):
        decide(CancelRun("r1", LATER), given(upload_received()))


# Expiring uploads -------------------------------------------------------------------------------


def test_expire_retires_only_due_available_uploads() -> None:
    """Only uploads whose expiry has come and that are not yet expired are expired."""
    state = given(
        upload_received("due", at=T0),
        upload_received("exact", at=T0 + timedelta(minutes=30)),
        upload_received("fresh", at=T0 + timedelta(minutes=31)),
        upload_received("old", at=T0),
        run_queued("r1", "old"),
        UploadExpired("old", T0 + EXPIRY),
        upload_received("gone", at=T0),
        UploadDeleted("gone", T0),
    )
    now = T0 + timedelta(minutes=90)
    decision = decide(ExpireUploads(now), state)
    assert set(decision.events) == {UploadExpired("due", now), UploadExpired("exact", now)}
    assert decision.expect == {"upload-due": 1, "upload-exact": 1}


def test_expire_with_nothing_due_decides_nothing() -> None:
    """Before any expiry, expiring decides no events."""
    assert (
        decide(ExpireUploads(LATER), given(upload_received("u1"), upload_received("u2"))).events
        == ()
    )


def test_expired_upload_keeps_its_runs_and_loses_the_rest() -> None:
    """After expiry an upload with runs stays, marked expired; one without runs is gone."""
    now = T0 + 2 * EXPIRY
    state = given(upload_received("used"), run_queued("r1", "used"), upload_received("unused"))
    state = given(
        upload_received("used"),
        run_queued("r1", "used"),
        upload_received("unused"),
        *decide(ExpireUploads(now), state).events,
    )
    used = state.uploads.get("used")
    assert used is not None and used.status == "expired" and used.run_ids == ("r1",)
    assert state.uploads.get("unused") is None
    assert decide(ExpireUploads(now), state).events == ()


# The queue --------------------------------------------------------------------------------------


def test_queue_keeps_fifo_order_through_cancels_and_starts() -> None:
    """Queued runs keep their arrival order and 1-based places as others leave the queue."""
    runs = [f"r{i}" for i in range(1, 7)]
    state = given(upload_received(), *(run_queued(r) for r in runs))
    assert state.queue.queued() == runs
    assert [state.queue.position(r) for r in runs] == [1, 2, 3, 4, 5, 6]

    state = given(
        upload_received(),
        *(run_queued(r) for r in runs),
        RunCancelled("r2", T0),
        run_started("r1"),
        RunCancelled("r5", T0),
    )
    assert state.queue.queued() == ["r3", "r4", "r6"]
    assert [state.queue.position(r) for r in runs] == [None, None, 1, 2, None, 3]
    assert (state.queue.length, state.queue.head(), state.queue.running) == (3, "r3", {"r1"})

    state = given(
        upload_received(),
        *(run_queued(r) for r in runs),
        RunCancelled("r2", T0),
        run_started("r1"),
        RunCancelled("r5", T0),
        run_started("r3"),
        run_finished("r1"),
        RunFailedToStart("r4", "no image", T0),
        run_queued("r7"),
    )
    assert state.queue.queued() == ["r6", "r7"]
    assert [state.queue.position(r) for r in ("r6", "r7")] == [1, 2]
    assert state.queue.running == {"r3"}
    assert state.runs.by_id["r1"].status == "completed"
    assert state.runs.by_id["r4"].status == "failed"


def test_deleting_the_last_run_of_an_expired_upload_retires_the_upload() -> None:
    """An expired upload kept for its runs goes with its last run; a live upload stays."""
    history: list[Event] = [
        upload_received("u1"),
        upload_received("u2", at=LATER),
        run_queued("r1", "u1"),
        run_queued("r2", "u2"),
        RunCancelled("r1", T0),
        RunCancelled("r2", T0),
        UploadExpired("u1", T0 + EXPIRY),
    ]
    assert given(*history).uploads.by_id["u1"].status == "expired"
    for run_id in ("r1", "r2"):
        history += decide(DeleteRun(run_id, "test", LATER), given(*history)).events
    state = given(*history)
    assert "u1" not in state.uploads.by_id
    assert state.uploads.by_id["u2"].run_ids == ()
    assert state.uploads.by_id["u2"].status == "available"


# Answering from the result cache ----------------------------------------------------------------


def _ran(run_id: str = "r0", status: str = "completed", **exited: Any) -> list[Event]:
    """Run `run_id` of the default upload, started on image `sha256:00`, ended and stored."""
    output = OutputFile("output/TOP.gds", 10, "a" * 64)
    return [
        run_queued(run_id, output_format="gds"),
        run_started(run_id),
        run_exited(run_id, status, **exited),
        run_outputs_stored(run_id, output=output, files=(OutputFile("run/x", 1, "b" * 64),)),
    ]


def test_a_run_answered_from_an_ended_one_ends_at_once_with_its_verdict() -> None:
    """With `reuse`, the run's `RunQueued` comes with `RunReused` copying the source's verdict
    and files, decided on the source's stream too; no queue limit applies."""
    state = given(upload_received(), *_ran(), run_queued("r9"))
    cmd = attrs.evolve(
        queue_run(), reuse=Reuse("r0", "sha256:00"), max_queued=1, owner=state.queue.owner("r9")
    )
    decision = decide(cmd, state)
    queued, reused = decision.events
    assert isinstance(queued, RunQueued) and queued.output_format == "gds"
    assert isinstance(reused, RunReused)
    assert (reused.run_id, reused.source_run_id, reused.status) == ("r1", "r0", "completed")
    source = state.runs.by_id["r0"]
    assert (reused.output, reused.files, reused.image_id) == (
        source.output,
        source.files,
        "sha256:00",
    )
    assert decision.expect == {"upload-u1": 1, "run-r1": 0, "run-r0": source.version}
    after = given(upload_received(), *_ran(), run_queued("r9"), queued, reused)
    run = after.runs.by_id["r1"]
    assert run.settled and run.status == "completed" and run.reused_from == "r0"
    assert run.output == source.output and after.queue.position("r1") is None


@pytest.mark.parametrize(
    ("events", "reuse", "changes"),
    [
        (_ran(), Reuse("r0", "sha256:11"), {}),  # the image changed since
        (_ran(), Reuse("r0", "sha256:00"), {"die_id": "ZZZZ0000"}),  # not the same run
        (_ran(), Reuse("r0", "sha256:00"), {"output_format": "oas"}),
        (_ran(status="failed", classification="system"), Reuse("r0", "sha256:00"), {}),
        (_ran()[:3], Reuse("r0", "sha256:00"), {}),  # its outputs are not stored yet
        ([], Reuse("r0", "sha256:00"), {}),  # gone
    ],
)
def test_a_run_that_may_not_answer_is_refused_as_gone(
    events: list[Event], reuse: Reuse, changes: dict[str, Any]
) -> None:
    """A source that no longer answers the run (another image or key, a system failure, not
    settled, deleted) is `SourceGone`: the edge then queues the run as any other."""
    with pytest.raises(SourceGone):
        decide(attrs.evolve(queue_run(), reuse=reuse, **changes), given(upload_received(), *events))


def test_a_design_failure_answers_and_a_bad_output_format_is_invalid() -> None:
    """A source that failed on its design answers; an unknown output format is `Invalid`."""
    state = given(upload_received(), *_ran(status="failed", classification="design"))
    decision = decide(attrs.evolve(queue_run(), reuse=Reuse("r0", "sha256:00")), state)
    assert isinstance(decision.events[1], RunReused) and decision.events[1].status == "failed"
    with pytest.raises(Invalid):
        decide(attrs.evolve(queue_run(), output_format="cif"), state)
