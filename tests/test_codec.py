"""The event codec: every event type survives JSON, and old rows are upcast on read."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest

from precheck.events.codec import (
    UnknownEventType,
    decode,
    decode_generic,
    decode_metadata,
    encode,
    encode_metadata,
)
from precheck.events.store import GENESIS, EventStore, chain_hash
from precheck.events.types import (
    SCHEMAS,
    TAGS,
    BBox,
    FindingsCount,
    InstanceCreated,
    KeyIssued,
    KeyRevoked,
    LayerPair,
    Metadata,
    NotificationFailed,
    NotificationRedeliveryRequested,
    NotificationSent,
    OutputFile,
    Preflight,
    PreflightCheck,
    ReactionFailed,
    RecheckPlanned,
    RunCancelled,
    RunCancelRequested,
    RunDeleted,
    RunExited,
    RunFailedToStart,
    RunFilesPruned,
    RunFinishFailed,
    RunOutputsStored,
    RunProgressed,
    RunQueued,
    RunResourcesPeaked,
    RunRetried,
    RunReused,
    RunTimedOut,
    SkippedFile,
    StrayContainerRemoved,
    Subscription,
    TopCell,
    UploadDeleted,
    UploadExpired,
    UploadInspected,
    UploadInspectionFailed,
)
from precheck.projections import Projections
from tests.factories import (
    run_exited,
    run_finished,
    run_outputs_stored,
    run_queued,
    run_started,
    upload_received,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
LAYOUT = OutputFile("output/chip.gds.gz", 123456, "ab" * 32)

# One instance of every event type, with values that exercise the converter: optional fields
# set and unset, nested records, tuples, dicts of mixed scalars, non-ASCII text.
SAMPLES: list[object] = [
    upload_received(name="chïp top.gds", at=T0),
    UploadDeleted("u1", T0),
    UploadExpired("u1", T0),
    UploadInspected(
        "u1",
        "gds.gz",
        0.001,
        (TopCell("chïp_top", BBox(0.0, 0.0, 3932.0, 5122.0)), TopCell("empty", None)),
        2,
        (LayerPair(1, 0), LayerPair(255, 65535)),
        17,
        T0,
    ),
    UploadInspected("u2", "oas", 0.0005, (), 0, (), 0, T0, reused_from="u1"),
    UploadInspectionFailed("u1", "not a readable layout: unexpected end of file", T0),
    run_queued(
        "r2",
        top_cell="chip_top",
        at=T0,
        preflight=Preflight(
            "failed",
            "warn",
            (PreflightCheck("size", "the die is 1 µm too wide", "3932 x 5122", "3933 x 5122"),),
        ),
    ),
    run_queued(
        "r3",
        top_cell="chip_top",
        input_name="c.gds",
        input_filename="l.gds",
        input_size=1,
        at=T0,
        preflight=Preflight("not-run", "enforce", reason="the layout has not been read yet"),
    ),
    run_queued(top_cell="TOP_cell$1", slot="0p5x1", cob=True, at=T0),
    run_queued("r4", recheck_of="r1"),
    RunCancelRequested("r1", T0),
    RunCancelled("r1", T0),
    RunCancelled("r1", T0, exit_code=137),
    run_started(container_id="c0ffee" * 10, image_digest="sha256:" + "ef" * 32, at=T0),
    run_started(image_id="sha256:" + "ef" * 32, image_digest="ghcr.io/a/b@sha256:" + "fe" * 32),
    RunProgressed("r1", 3, 16, "KLayout.CheckSize", T0),
    run_finished(
        status="failed",
        error="KLayout DRC found errors",
        failed_step="Checker.KLayoutDRC",
        classification="design",
        deferred_errors={"KLayout DRC": 3, "Magic DRC": 0},
        output=LAYOUT,
        files=(LAYOUT, OutputFile("reports/drc.lyrdb", 10, "00" * 32)),
        metrics={"density": 0.42, "cells": 17, "tool": "klayout", "area": None},
        at=T0,
    ),
    run_finished("r2", oom_killed=True, at=T0),
    RunFailedToStart("r1", "image precheck:latest not found", T0),
    RunFinishFailed("r1", "Docker: 500 injected", 5, T0),
    RunRetried("r1", 2, "build-2", "engine lost: build-2 did not answer", -1, T0, T0, 40, T0),
    RunRetried("r1", 3, "local", "OOM: killed", 137, None, T0, 80, T0),
    RunTimedOut("r1", 90, T0),
    RunDeleted("r1", "u1", "pruned by an operator", T0),
    run_exited(
        status="failed",
        error="deferred errors: 3 KLayout DRC",
        classification="design",
        deferred_errors={"KLayout DRC": 3},
        at=T0,
    ),
    run_outputs_stored(
        output=OutputFile("output/top.gds", 10, "a" * 64),
        files=(OutputFile("run/reports/drc.json", 2, "b" * 64),),
        metrics={"klayout__drc_error__count": 3, "note": None},
        failed_step="Checker.KLayoutDRC",
        at=T0,
    ),
    InstanceCreated("0123456789abcdef", T0),
    ReactionFailed("supervisor", "RuntimeError: boom", T0),
    ReactionFailed("supervisor", "RuntimeError: boom", T0, run_id="r1"),
    StrayContainerRemoved("c0ffee" * 10, "precheck-r9", T0),
    KeyIssued("carol", "user", "ab" * 32, T0),
    KeyRevoked("carol", T0),
    run_queued(
        "r9",
        notify=(
            Subscription("webhook", "https://h.example.org/ü?t=1"),
            Subscription("email", "a@b.org"),
        ),
        at=T0,
    ),
    NotificationSent("r9", 1, "webhook", "https://h.example.org/ü", 1, "msg_r9_1", 204, 0.25, T0),
    NotificationFailed("r9", 2, "email", "a@b.org", 3, "msg_r9_2", None, "refused", 1.5, T0, True),
    NotificationFailed(
        "r9", 1, "webhook", "https://h.example.org/", 1, "msg_r9_1", 500, "5xx", 0.1, T0
    ),
    NotificationRedeliveryRequested("r9", 1, T0),
    run_queued("r10", output_format="oas", at=T0),
    RunReused("r10", "r9", T0),
    RunReused(
        "r11",
        "r1",
        T0,
        status="failed",
        exit_code=1,
        error="deferred errors: 3 KLayout DRC",
        image="precheck:latest",
        image_id="sha256:" + "e" * 64,
        image_digest="precheck@sha256:" + "f" * 64,
        failed_step="Checker.KLayoutDRC",
        classification="design",
        deferred_errors={"KLayout DRC": 3},
        metrics={"klayout__drc_error__count": 3, "note": None},
        warnings=("WARNING  3 Magic DRC errors found.",),
        warning_count=1,
        findings=(FindingsCount("14-klayout-drc/reports/drc.klayout.lyrdb", "KLayout.DRC", 3, 2),),
        output=OutputFile("output/top.oas", 10, "a" * 64),
        files=(OutputFile("run/reports/drc.json", 2, "b" * 64),),
        skipped=(SkippedFile("run/big.gds", 1 << 30, "bulk"),),
        skipped_more=2,
        across_owners=True,
    ),
    RunFilesPruned("r9", ("outputs", "logs"), 3, 123456, "age", T0),
    RunResourcesPeaked("r9", 1, 3 << 30, 24 << 30, 180.5, 42, T0),
    RecheckPlanned("u1", "r1", "precheck:latest", "sha256:" + "a" * 64, T0),
    run_queued("r12", recheck_of="r1", reason="recheck", at=T0),
]


def test_samples_cover_every_event_type() -> None:
    """Every tagged event type has a sample here, so a new type cannot skip the round trip."""
    assert {type(e) for e in SAMPLES} == set(TAGS)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_event_round_trips(event: object) -> None:
    """Encoding then decoding gives back an equal event, under its tag and current schema."""
    tag, schema, data = encode(event)  # type: ignore[arg-type]
    assert (tag, schema) == (TAGS[type(event)], SCHEMAS[tag])
    assert isinstance(json.loads(data), dict)
    assert decode(tag, schema, data) == event


def test_times_are_stored_as_utc() -> None:
    """A time with another offset is stored as UTC with a `Z` and reads back as the same instant."""
    at = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    _, _, data = encode(UploadDeleted("u1", at))
    stored = json.loads(data)["at"]
    assert stored.startswith("2026-01-02T03:04:05") and stored.endswith("Z")
    back = decode("upload.deleted", 1, data)
    assert back.at == at
    assert back.at.utcoffset() == timedelta(0)


def test_metadata_round_trips() -> None:
    """Metadata survives its JSON form."""
    meta = Metadata("ci-key", "2001:db8::1", "req-ü")
    assert decode_metadata(encode_metadata(meta)) == meta
    assert decode_metadata(encode_metadata(Metadata("cli"))) == Metadata("cli", "", "")


def test_unknown_tag_is_refused() -> None:
    """A row with a tag this code does not know raises `UnknownEventType`."""
    with pytest.raises(UnknownEventType, match="teleported"):
        decode("run.teleported", 1, '{"run_id":"r1"}')


def test_newer_schema_is_refused() -> None:
    """A row written by newer code (a schema above the current one) raises `UnknownEventType`."""
    _, schema, data = encode(UploadDeleted("u1", T0))
    with pytest.raises(UnknownEventType, match="newer"):
        decode("upload.deleted", schema + 1, data)


async def test_schema_1_run_queued_row_is_upcast(tmp_path: Path) -> None:
    """A `run.queued` row of schema 1 (before slots and chip-on-board) stored in a real log
    reads back with slot `1x1` and cob False, and replays into a queued run."""
    path = tmp_path / "events.db"
    await (await EventStore.open(path)).close()  # creates the schema
    old = {
        "run_id": "r1",
        "upload_id": "u1",
        "top_cell": "TOP",
        "die_id": "ABCD1234",
        "input_name": "chip.gds",
        "input_filename": "layout.gds",
        "input_format": "gds",
        "input_size": 4096,
        "input_sha256": "cd" * 32,
        "at": "2025-06-01T12:00:00Z",
    }
    row = (
        1,
        "run-r1",
        1,
        "run.queued",
        1,
        json.dumps(old),
        '{"actor":"cli"}',
        "2025-06-01T12:00:00.000001Z",
    )
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", (*row, chain_hash(GENESIS, *row))
        )

    store = await EventStore.open(path)
    try:
        [r] = await store.read()
        at = datetime(2025, 6, 1, 12, tzinfo=UTC)
        # Its output in the input's format, as runs were queued then.
        assert r.event == run_queued(slot="1x1", cob=False, at=at, output_format="")
        assert (await store.verify_chain()).first_bad is None
        run = (await Projections.replay(store)).runs.get("r1")
        assert run is not None
        assert (run.status, run.slot, run.cob) == ("queued", "1x1", False)
    finally:
        await store.close()


async def test_unknown_row_in_a_log_is_refused_on_read(tmp_path: Path) -> None:
    """Reading a log that holds a row of an unknown type raises `UnknownEventType`."""
    path = tmp_path / "events.db"
    await (await EventStore.open(path)).close()
    row = (
        1,
        "server",
        1,
        "server.from-the-future",
        1,
        "{}",
        '{"actor":"cli"}',
        "2030-01-01T00:00:00Z",
    )
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", (*row, chain_hash(GENESIS, *row))
        )
    store = await EventStore.open(path)
    try:
        with pytest.raises(UnknownEventType):
            await store.read()
    finally:
        await store.close()


def test_outputs_stored_rows_before_the_skipped_count_decode() -> None:
    """A `run.outputs-stored` row written before `skipped` (or before `skipped_more`) decodes
    with none listed and none counted."""
    row: dict[str, object] = {
        "run_id": "r1",
        "output": None,
        "files": [],
        "metrics": {},
        "failed_step": None,
        "at": "2026-01-01T00:00:00+00:00",
    }
    older = decode("run.outputs-stored", 1, json.dumps(row))
    assert isinstance(older, RunOutputsStored)
    assert (older.skipped, older.skipped_more) == ((), 0)
    row["skipped"] = [{"path": "a", "size": 1, "why": "over docker.max_output_files (3)"}]
    old = decode("run.outputs-stored", 1, json.dumps(row))
    assert isinstance(old, RunOutputsStored) and old.skipped_more == 0 and len(old.skipped) == 1


def test_rows_before_findings_and_warnings_decode_and_new_rows_round_trip() -> None:
    """`run.outputs-stored` without `findings` and `run.exited` without the warning and error
    lines decode with none; rows with them come back equal."""
    stored: dict[str, object] = {
        "run_id": "r1",
        "output": None,
        "files": [],
        "metrics": {},
        "failed_step": None,
        "at": "2026-01-01T00:00:00+00:00",
    }
    older = decode("run.outputs-stored", 1, json.dumps(stored))
    assert isinstance(older, RunOutputsStored) and older.findings == ()
    exited: dict[str, object] = {
        "run_id": "r1",
        "status": "completed",
        "exit_code": 0,
        "error": "",
        "classification": None,
        "deferred_errors": {},
        "oom_killed": False,
        "finished_at": "2026-01-01T00:00:00+00:00",
        "at": "2026-01-01T00:00:00+00:00",
    }
    old = decode("run.exited", 1, json.dumps(exited))
    assert isinstance(old, RunExited)
    assert (old.warnings, old.warning_count, old.errors, old.error_count) == ((), 0, (), 0)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for event in (
        RunOutputsStored(
            "r1", None, (), {}, None, at,
            findings=(FindingsCount("14-klayout-drc/drc.klayout.lyrdb", "KLayout.DRC", 3, 2),
                      FindingsCount("x.rpt", None, 0, 0, cut_short=True, error="damaged")),
        ),
        RunExited(
            "r1", "completed", 0, "", None, {}, False, at, at,
            warnings=("3 Magic DRC errors found.",), warning_count=3, errors=(), error_count=0,
        ),
    ):  # fmt: skip
        assert decode(*encode(event)) == event


def test_a_run_queued_before_notifications_asks_for_none() -> None:
    """A `run.queued` row at schema 2 written before `notify` existed decodes with none."""
    tag, schema, data = encode(run_queued(at=T0))
    raw = json.loads(data)
    del raw["notify"]
    event = decode(tag, schema, json.dumps(raw))
    assert isinstance(event, RunQueued) and event.notify == ()


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_typed_and_generic_decoding_agree(event: object) -> None:
    """The typed decoder that reads current rows gives what the converter gives, field by
    field and type by type (a float stays a float, a tuple a tuple, a time keeps its zone)."""
    tag, schema, data = encode(event)  # type: ignore[arg-type]
    typed, generic = decode(tag, schema, data), decode_generic(tag, schema, data)
    assert typed == generic == event
    for name in attrs.fields_dict(type(event)):
        a, b = getattr(typed, name), getattr(generic, name)
        assert type(a) is type(b), name
        if isinstance(a, datetime):
            assert a.utcoffset() == b.utcoffset(), name


def test_a_row_the_typed_decoder_refuses_still_decodes() -> None:
    """Values JSON's strict form has no room for (infinity, an integer past 64 bits), written
    by the encoder as it always has, read back through the converter."""
    event = run_outputs_stored(metrics={"ratio": float("inf"), "count": 10**30}, at=T0)
    assert decode(*encode(event)) == event
