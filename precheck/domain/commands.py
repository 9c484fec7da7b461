"""Commands and the pure `decide` that turns one into events, or refuses it.

`decide` reads the read models, never the clock, the disk or a random source: `now` and new
ids come in with the command. Web handlers and the CLI share it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import singledispatch
from typing import Protocol

import attrs

from precheck.config import OUTPUT_FORMATS, RESERVED_NAMES, ROLES, SLOTS
from precheck.domain.preflight import MODES, preflight_for_run
from precheck.domain.recheck import REASON, image_ref, recheck_run_id, verdict
from precheck.domain.result_cache import CacheKey, Reuse, SourceGone, answers, reused_event
from precheck.domain.status import ENDED, RunStatus
from precheck.errors import Conflict, Expired, Invalid, NotFound, PreflightFailed, TooMany
from precheck.events.streams import key_stream, run_stream, upload_stream
from precheck.events.types import (
    Event,
    KeyIssued,
    KeyRevoked,
    NotificationRedeliveryRequested,
    Preflight,
    RecheckPlanned,
    RunCancelled,
    RunCancelRequested,
    RunDeleted,
    RunQueued,
    Subscription,
    UploadDeleted,
    UploadExpired,
    UploadInspected,
    UploadInspectionFailed,
    UploadReceived,
)
from precheck.projections import Projections
from precheck.projections.uploads import UploadRecord

DIE_ID = re.compile(r"[A-Za-z0-9]{8}")
# A plain cell name: it becomes a file name in the container, so no dots, slashes or spaces.
TOP_CELL = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,127}")


@attrs.frozen
class ReceiveUpload:
    """Record a layout file already stored whole under its upload folder."""

    upload_id: str
    name: str
    filename: str
    format: str
    size: int
    sha256: str
    now: datetime
    expires_at: datetime


@attrs.frozen
class DeleteUpload:
    """Delete an upload no active run needs."""

    upload_id: str
    now: datetime


@attrs.frozen
class ExpireUploads:
    """Retire every upload whose expiry time has passed."""

    now: datetime


@attrs.frozen
class RecordInspection:
    """Record what reading an upload's layout found, unless it was removed or read meanwhile."""

    event: UploadInspected | UploadInspectionFailed


@attrs.frozen
class QueueRun:
    """Queue a precheck of an upload.

    `preflight`: `enforce` refuses a layout that was read and fails a pre-flight check;
    `warn` queues it and records the failures.
    """

    run_id: str
    upload_id: str
    top_cell: str
    die_id: str
    slot: str
    cob: bool
    now: datetime
    preflight: str = "enforce"
    owner: str = ""  # who queues it; refused with as many waiting as `max_queued` (0: no limit)
    max_queued: int = 0
    max_running: int = 0  # ... or with as many running as `max_running` (0: no limit)
    notify: tuple[Subscription, ...] = ()  # checked against the operator's policy at the edge
    recheck_of: str = ""  # the run it re-checks: its start resolves the image anew
    output_format: str = "gds"  # the final layout's: `gds` or `oas`
    # Answer it from this ended identical run (found at the edge, for the image resolved
    # there): it ends at once. `SourceGone` when that run no longer may answer.
    reuse: Reuse | None = None


@attrs.frozen
class CancelRun:
    """Cancel a queued run now, or ask the supervisor to stop a running one."""

    run_id: str
    now: datetime


@attrs.frozen
class RedeliverNotification:
    """Owe an ended run's delivery `delivery` (from 1) again: it is sent once more."""

    run_id: str
    delivery: int
    now: datetime


@attrs.frozen
class DeleteRun:
    """Remove a finished run with its files and log."""

    run_id: str
    reason: str
    now: datetime


@attrs.frozen
class PruneRuns:
    """Remove every finished run with one of `statuses` that ended before `ended_before`."""

    statuses: frozenset[str]
    ended_before: datetime | None
    reason: str
    now: datetime


# An issued key's name: the actor of its requests, so a plain word, never one the server uses.
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


@attrs.frozen
class IssueKey:
    """Record a new API key by the sha256 of its secret (the secret itself is never stored)."""

    name: str
    role: str
    key_sha256: str
    now: datetime


@attrs.frozen
class RevokeKey:
    """Revoke an issued API key."""

    name: str
    now: datetime


@attrs.frozen
class PlanRechecks:
    """Queue a re-check of each upload whose newest ended run gave a verdict on an image other
    than `ref` (of the configured `image`), once per upload and ref; `upload_ids` limits the
    uploads looked at (None: all). Uploads with a run under way, expired ones and ones that
    now fail pre-flight in `enforce` mode are left alone."""

    image: str
    ref: str
    now: datetime
    upload_ids: frozenset[str] | None = None


Command = (
    ReceiveUpload
    | DeleteUpload
    | ExpireUploads
    | RecordInspection
    | QueueRun
    | CancelRun
    | DeleteRun
    | RedeliverNotification
    | PruneRuns
    | IssueKey
    | RevokeKey
    | PlanRechecks
)


@attrs.frozen
class Decision:
    """Events to append, and the stream versions they were decided on."""

    events: tuple[Event, ...]
    expect: dict[str, int]


@singledispatch
def decide(command: object, state: Projections) -> Decision:
    """The events `command` causes given `state`, or a `PrecheckError`."""
    raise TypeError(f"not a command: {command!r}")


@decide.register
def _receive(c: ReceiveUpload, state: Projections) -> Decision:
    if state.uploads.get(c.upload_id) is not None:
        raise Conflict(f"upload {c.upload_id} already exists")
    event = UploadReceived(
        c.upload_id, c.name, c.filename, c.format, c.size, c.sha256, c.now, c.expires_at
    )
    return Decision((event,), {upload_stream(c.upload_id): 0})


@decide.register
def _delete_upload(c: DeleteUpload, state: Projections) -> Decision:
    upload = state.uploads.get(c.upload_id)
    if upload is None:
        raise NotFound(f"No such upload: {c.upload_id}")
    busy = [rid for rid in upload.run_ids if _is_active(state, rid)]
    if busy:
        raise Conflict(f"upload {c.upload_id} is used by active run {busy[0]}")
    return Decision(
        (UploadDeleted(c.upload_id, c.now),), {upload_stream(c.upload_id): upload.version}
    )


@decide.register
def _expire(c: ExpireUploads, state: Projections) -> Decision:
    due = [
        u for u in state.uploads.by_id.values() if u.status == "available" and u.expires_at <= c.now
    ]
    return Decision(
        tuple(UploadExpired(u.id, c.now) for u in due),
        {upload_stream(u.id): u.version for u in due},
    )


@decide.register
def _record_inspection(c: RecordInspection, state: Projections) -> Decision:
    upload = state.uploads.get(c.event.upload_id)
    if upload is None or upload.layout_status != "pending":
        return Decision((), {})  # deleted, expired or read meanwhile: nothing to record
    return Decision((c.event,), {upload_stream(upload.id): upload.version})


@decide.register
def _queue(c: QueueRun, state: Projections) -> Decision:
    if not TOP_CELL.fullmatch(c.top_cell):
        raise Invalid(
            "top_cell must be a plain cell name: a letter or underscore, then letters, digits,"
            " '_', '$' or '-', at most 128 characters"
        )
    if not DIE_ID.fullmatch(c.die_id):
        raise Invalid("die_id must be exactly 8 letters or digits")
    if c.slot not in SLOTS:
        raise Invalid(f"slot must be one of {', '.join(SLOTS)}")
    if c.output_format not in OUTPUT_FORMATS:
        raise Invalid(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")
    upload = state.uploads.get(c.upload_id)
    if upload is None:
        raise NotFound(f"No such upload: {c.upload_id}")
    # A run answered from the cache takes no place in the queue and no slot: no limit applies.
    queues = c.reuse is None
    if queues and c.max_queued and state.queue.queued_by(c.owner) >= c.max_queued:
        raise TooMany(
            f"{c.owner} has {c.max_queued} runs waiting, as many as server.max_queued_per_owner"
            " allows: queue more once one has started"
        )
    if queues and c.max_running and state.queue.running_by(c.owner) >= c.max_running:
        raise TooMany(
            f"{c.owner} has {c.max_running} runs running, as many as"
            " server.max_running_per_owner allows: queue more once one has stopped"
        )
    if upload.status == "expired" or upload.expires_at <= c.now:
        raise Expired(f"upload {c.upload_id} has expired; upload the layout again")
    if c.preflight not in MODES:
        raise Invalid(f"preflight must be one of {', '.join(MODES)}")
    preflight = preflight_for_run(
        upload.layout, upload.layout_error, c.top_cell, c.slot, c.preflight
    )
    if preflight.status == "failed" and c.preflight == "enforce":
        count = len(preflight.checks)
        raise PreflightFailed(
            f"the layout fails {count} pre-flight check{'s' if count > 1 else ''} the precheck"
            f" would fail it on: {'; '.join(ch.message for ch in preflight.checks)}"
            ' (send "preflight": "warn" to queue it anyway)',
            preflight.checks,
        )
    event = _queued(c.run_id, upload, c, c.now, preflight, c.notify, c.recheck_of, c.output_format)
    expect = {upload_stream(upload.id): upload.version, run_stream(c.run_id): 0}
    if c.reuse is None:
        return Decision((event,), expect)
    source = state.runs.get(c.reuse.source_run_id)
    if source is None or not answers(source, _key(c, event, c.reuse)):
        raise SourceGone(c.reuse.source_run_id)
    # The source's version too: a change to it before this append makes it decided again.
    expect[run_stream(source.id)] = source.version
    return Decision((event, reused_event(c.run_id, c.owner, source, c.now)), expect)


class _RunParameters(Protocol):
    """What a run is asked to check with: a user's `QueueRun`, or the run a re-check repeats."""

    @property
    def top_cell(self) -> str: ...
    @property
    def die_id(self) -> str: ...
    @property
    def slot(self) -> str: ...
    @property
    def cob(self) -> bool: ...


def _queued(
    run_id: str,
    upload: UploadRecord,
    p: _RunParameters,
    now: datetime,
    preflight: Preflight,
    notify: tuple[Subscription, ...],
    recheck_of: str,
    output_format: str,
    reason: str = "",
) -> RunQueued:
    """The run of `upload`'s file with parameters `p`, joining the queue."""
    return RunQueued(
        run_id,
        upload.id,
        p.top_cell,
        p.die_id,
        p.slot,
        p.cob,
        upload.name,
        upload.filename,
        upload.format,
        upload.size,
        upload.sha256,
        now,
        preflight,
        notify,
        recheck_of,
        output_format,
        reason,
    )


def _key(c: QueueRun, queued: RunQueued, reuse: Reuse) -> CacheKey:
    """The cache key of the run `c` queues, with the image resolved for it."""
    return CacheKey(
        queued.input_sha256,
        queued.input_size,
        c.top_cell,
        c.die_id,
        c.slot,
        c.cob,
        c.output_format,
        reuse.image_id,
        reuse.image_digest,
    )


@decide.register
def _redeliver(c: RedeliverNotification, state: Projections) -> Decision:
    run = state.runs.get(c.run_id)
    if run is None:
        raise NotFound(f"No such precheck: {c.run_id}")
    if state.notifications.get(run.id, c.delivery) is None:
        count = len(run.notify)
        raise NotFound(f"notification {c.delivery} is not one of this run's ({count} asked for)")
    if not (run.settled and run.status in ENDED):
        raise Conflict("the run has not ended yet: its notifications are sent when it does")
    event = NotificationRedeliveryRequested(run.id, c.delivery, c.now)
    return Decision((event,), {run_stream(run.id): run.version})


@decide.register
def _cancel(c: CancelRun, state: Projections) -> Decision:
    run = state.runs.get(c.run_id)
    if run is None:
        raise NotFound(f"No such precheck: {c.run_id}")
    expect = {run_stream(run.id): run.version}
    if run.status == RunStatus.QUEUED:
        return Decision((RunCancelled(run.id, c.now),), expect)
    if run.status == RunStatus.RUNNING:
        if run.cancel_requested:
            return Decision((), expect)
        return Decision((RunCancelRequested(run.id, c.now),), expect)
    if run.status == RunStatus.FINISHING:
        raise Conflict(
            f"precheck {c.run_id} has stopped and its outputs are being stored; "
            "it cannot be cancelled"
        )
    raise Conflict(f"precheck {c.run_id} has already ended ({run.status}); it cannot be cancelled")


@decide.register
def _delete_run(c: DeleteRun, state: Projections) -> Decision:
    run = state.runs.get(c.run_id)
    if run is None:
        raise NotFound(f"No such precheck: {c.run_id}")
    if not run.settled:
        raise Conflict(
            f"precheck {c.run_id} is {run.status} and not settled; cancel it or let it end first"
        )
    return Decision(
        (RunDeleted(run.id, run.upload_id, c.reason, c.now),), {run_stream(run.id): run.version}
    )


@decide.register
def _prune(c: PruneRuns, state: Projections) -> Decision:
    unknown = c.statuses - ENDED
    if unknown:
        raise Invalid(f"only ended runs can be pruned, not {sorted(unknown)[0]!r}")
    due = [
        r
        for r in state.runs.by_id.values()
        if r.status in c.statuses
        and r.settled
        and (c.ended_before is None or (r.finished_at or r.created) < c.ended_before)
    ]
    return Decision(
        tuple(RunDeleted(r.id, r.upload_id, c.reason, c.now) for r in due),
        {run_stream(r.id): r.version for r in due},
    )


@decide.register
def _issue_key(c: IssueKey, state: Projections) -> Decision:
    if not KEY_NAME.fullmatch(c.name) or c.name in RESERVED_NAMES:
        raise Invalid(
            "name must be 1 to 64 letters, digits, '_', '.', '@' or '-' and not one the server"
            " uses (anonymous, cli, server, supervisor)"
        )
    if c.role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    if c.name in state.keys.by_name:
        raise Conflict(f"key {c.name!r} exists")
    if c.name in state.keys.versions:
        # What a key made is owned by its name: a new key under it would inherit that.
        raise Conflict(
            f"key {c.name!r} was revoked, and a revoked name is never issued again (its uploads"
            " and runs are still owned by it): choose another name"
        )
    event = KeyIssued(c.name, c.role, c.key_sha256, c.now)
    return Decision((event,), {key_stream(c.name): state.keys.versions.get(c.name, 0)})


@decide.register
def _revoke_key(c: RevokeKey, state: Projections) -> Decision:
    if c.name not in state.keys.by_name:
        raise NotFound(f"No such key: {c.name}")
    return Decision((KeyRevoked(c.name, c.now),), {key_stream(c.name): state.keys.versions[c.name]})


@decide.register
def _plan_rechecks(c: PlanRechecks, state: Projections) -> Decision:
    events: list[Event] = []
    expect: dict[str, int] = {}
    if not c.ref:
        return Decision((), {})
    ids = list(state.uploads.by_id) if c.upload_ids is None else sorted(c.upload_ids)
    for upload_id in ids:
        upload = state.uploads.get(upload_id)
        if upload is None or upload.status != "available" or upload.expires_at <= c.now:
            continue
        if (upload.id, c.ref) in state.rechecks.planned:
            continue
        runs = [r for rid in upload.run_ids if (r := state.runs.get(rid)) is not None]
        if not runs or any(not r.settled for r in runs):
            continue  # none yet, or one under way: its end is looked at again
        last = max(runs, key=lambda r: r.queued_position)
        if verdict(last) is None or image_ref(last) == c.ref:
            continue
        mode = last.preflight.mode if last.preflight is not None else "enforce"
        preflight = preflight_for_run(
            upload.layout, upload.layout_error, last.top_cell, last.slot, mode
        )
        if preflight.status == "failed" and mode == "enforce":
            continue
        run_id = recheck_run_id(upload.id, c.ref)
        if state.runs.get(run_id) is not None:
            continue
        events.append(RecheckPlanned(upload.id, last.id, c.image, c.ref, c.now))
        events.append(
            _queued(
                run_id,
                upload,
                last,
                c.now,
                preflight,
                last.notify,
                last.id,
                last.output_format,
                reason=REASON,
            )
        )
        expect[upload_stream(upload.id)] = upload.version
        expect[run_stream(last.id)] = last.version
        expect[run_stream(run_id)] = 0
    return Decision(tuple(events), expect)


def _is_active(state: Projections, run_id: str) -> bool:
    run = state.runs.get(run_id)
    return run is not None and run.active


def upload_expiry(now: datetime, minutes: int) -> datetime:
    """When an upload received at `now` expires."""
    return now + timedelta(minutes=minutes)
