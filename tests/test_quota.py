"""A user key's storage quota counts what its uploads and runs hold on disk: a run answered
from the result cache holds links to its source's files, counted once."""

from __future__ import annotations

from precheck.events.types import OutputFile, RunDeleted, RunReused
from precheck.web.quota import stored_bytes
from tests.factories import (
    T0,
    given,
    run_exited,
    run_outputs_stored,
    run_queued,
    run_started,
    upload_received,
)

OUTPUT = OutputFile("output/chip_top.gds", 600_000, "ab" * 32)
REPORT = OutputFile("run/14-klayout-drc/reports/drc.klayout.json", 1_000, "cd" * 32)
SOURCE = (
    upload_received(),
    run_queued("r1"),
    run_started("r1"),
    run_exited("r1"),
    run_outputs_stored("r1", output=OUTPUT, files=(REPORT,)),
)
REUSED = (
    run_queued("r2"),
    RunReused("r2", "r1", T0, status="completed", output=OUTPUT, files=(REPORT,)),
)


def test_a_run_answered_from_the_cache_holds_nothing_more_while_its_source_is_there() -> None:
    alone = stored_bytes(given(*SOURCE), "test")
    assert alone == 4096 + 600_000 + 1_000  # the upload, the output layout, the report
    assert stored_bytes(given(*SOURCE, *REUSED), "test") == alone


def test_once_the_source_is_deleted_the_links_hold_its_bytes() -> None:
    deleted = RunDeleted("r1", "u1", "deleted", T0)
    assert stored_bytes(given(*SOURCE, *REUSED, deleted), "test") == 4096 + 601_000
