"""Pre-flight as pure functions: the checks on an inspection, and `decide` with them."""

from __future__ import annotations

import attrs
import pytest

from precheck.domain.commands import QueueRun, RecordInspection, decide
from precheck.domain.preflight import check, preflight_for_run, slot_of
from precheck.errors import PreflightFailed
from precheck.events.types import (
    BBox,
    Preflight,
    RunQueued,
    TopCell,
    UploadDeleted,
    UploadInspected,
    UploadInspectionFailed,
)
from tests.factories import T0, given, upload_received

DIE = BBox(0, 0, 3932, 5122)


def inspected(*tops: TopCell, dbu: float = 0.001, count: int | None = None) -> UploadInspected:
    """An inspection of upload u1 with these top cells."""
    return UploadInspected(
        "u1", "gds", dbu, tops, len(tops) if count is None else count, (), len(tops), T0
    )


RECEIVED = upload_received()


def test_a_good_die_passes_every_check() -> None:
    """One top cell of the slot's size at the origin with dbu 0.001: nothing fails."""
    assert check(inspected(TopCell("chip_top", DIE)), "chip_top", "1x1") == ()
    assert slot_of(inspected(TopCell("chip_top", DIE))) == "1x1"


def test_sizes_close_to_the_slot_within_float_noise_pass() -> None:
    """Coordinates that are the slot's size up to float rounding are the slot's size."""
    box = BBox(0.0, 1e-10, 3932.0000000001, 5122.0)
    assert check(inspected(TopCell("t", box)), "t", "1x1") == ()


def test_an_empty_layout_fails_the_top_cell_checks_only() -> None:
    """No top cell at all: the named one is missing and there is not exactly one; no die."""
    codes = [c.code for c in check(inspected(), "chip_top", "1x1")]
    assert codes == ["top_cell", "single_top_cell"]


def test_an_empty_top_cell_fails_the_size_check() -> None:
    """A top cell with nothing in it has no die: the size check says it is empty."""
    [failed] = check(inspected(TopCell("chip_top", None)), "chip_top", "1x1")
    assert (failed.code, failed.found) == ("size", "empty")
    assert slot_of(inspected(TopCell("chip_top", None))) is None


def test_a_wrong_name_checks_the_only_die_all_the_same() -> None:
    """With one top cell of another name, its die is still checked against the slot."""
    failed = check(inspected(TopCell("other", BBox(0, 0, 10, 10))), "chip_top", "0p5x0p5")
    assert [c.code for c in failed] == ["top_cell", "size"]
    assert failed[0].found == "other"
    assert failed[1].found == "10 x 10"


def test_top_cells_not_listed_are_counted() -> None:
    """When more top cells exist than are listed, the message and count say so."""
    failed = check(inspected(TopCell("a", DIE), count=250), "a", "1x1")
    assert [c.code for c in failed] == ["single_top_cell"]
    assert failed[0].found == "250" and "and 249 more" in failed[0].message


@pytest.mark.parametrize(
    ("box", "slot"),
    [
        (BBox(0, 0, 1936, 5122), "0p5x1"),
        (BBox(0, 0, 3932, 2531), "1x0p5"),
        (BBox(0, 0, 1936, 2531), "0p5x0p5"),
        (BBox(1, 0, 1937, 2531), None),
        (BBox(0, 0, 1936, 2532), None),
    ],
)
def test_the_slot_is_found_from_the_die(box: BBox, slot: str | None) -> None:
    """A die at the origin of a slot's exact size names that slot; any other names none."""
    assert slot_of(inspected(TopCell("t", box))) == slot


def test_pre_flight_for_a_run_says_why_it_did_not_run() -> None:
    """Without an inspection the result is `not-run` with the reason (pending or failed)."""
    assert preflight_for_run(None, "", "t", "1x1", "warn") == Preflight(
        "not-run", "warn", reason="the layout has not been read yet"
    )
    assert preflight_for_run(None, "boom", "t", "1x1", "enforce").reason == (
        "the layout could not be read: boom"
    )


def test_decide_refuses_a_failing_layout_unless_warned() -> None:
    """A read layout that fails is refused under `enforce` with every failed check; under
    `warn` the run is queued with them."""
    state = given(RECEIVED, inspected(TopCell("chip_top", BBox(0, 0, 3933, 5122))))
    command = QueueRun("r1", "u1", "chip_top", "ABCD1234", "1x1", False, T0)
    with pytest.raises(PreflightFailed) as info:
        decide(command, state)
    assert [getattr(c, "code", None) for c in info.value.checks] == ["size"]
    [event] = decide(attrs.evolve(command, preflight="warn"), state).events
    assert isinstance(event, RunQueued) and event.preflight is not None
    assert (event.preflight.status, event.preflight.mode) == ("failed", "warn")


def test_an_inspection_is_recorded_once_and_never_for_a_gone_upload() -> None:
    """Recording an inspection appends it while the upload is pending; a second one, or one
    for an upload deleted meanwhile, appends nothing."""
    event = inspected(TopCell("chip_top", DIE))
    decision = decide(RecordInspection(event), given(RECEIVED))
    assert decision.events == (event,) and decision.expect == {"upload-u1": 1}
    assert decide(RecordInspection(event), given(RECEIVED, event)).events == ()
    failed = UploadInspectionFailed("u1", "no", T0)
    assert decide(RecordInspection(failed), given(RECEIVED, event)).events == ()
    assert decide(RecordInspection(event), given(RECEIVED, UploadDeleted("u1", T0))).events == ()
