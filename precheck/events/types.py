"""Every fact the service records, as frozen past-tense classes.

Each class is stored under the stable tag in `TAGS` (never its Python name), with a schema
number in `SCHEMAS`; an older row is upcast on read (see `codec.py`). Times are UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from precheck.events.streams import SERVER_STREAM, key_stream, run_stream, upload_stream


@attrs.frozen
class Metadata:
    """Who caused an event: API key name (or `anonymous`, `supervisor`, `cli`), address, request."""

    actor: str
    client: str = ""
    request_id: str = ""


# Uploads -------------------------------------------------------------------------------------


@attrs.frozen
class UploadReceived:
    """A layout file arrived whole and was stored under `uploads/<upload_id>/<filename>`."""

    upload_id: str
    name: str  # the client's file name, a label only
    filename: str  # the stored file's name, made by the server
    format: str  # gds, gds.gz, oas
    size: int
    sha256: str
    at: datetime
    expires_at: datetime


@attrs.frozen
class UploadDeleted:
    """A client deleted an upload; its files go after this event."""

    upload_id: str
    at: datetime


@attrs.frozen
class UploadExpired:
    """An upload's expiry passed. Without runs it is retired and its files go."""

    upload_id: str
    at: datetime


@attrs.frozen
class BBox:
    """A bounding box in µm: lower left (`left`, `bottom`), upper right (`right`, `top`)."""

    left: float
    bottom: float
    right: float
    top: float


@attrs.frozen
class TopCell:
    """A top cell of a layout and its bounding box (None: the cell is empty)."""

    name: str
    bbox: BBox | None


@attrs.frozen
class LayerPair:
    """A GDS layer number and datatype present in a layout."""

    layer: int
    datatype: int


@attrs.frozen
class UploadInspected:
    """The upload's layout was read: its units, top cells and their extents, layers and cells.

    `top_cells` lists at most `MAX_TOP_CELLS` of them (`top_cell_count` counts all) and
    `layers` at most `MAX_LAYERS`. `reused_from` names the upload of the same owner whose
    reading of the same bytes (same sha256) gave these facts, when they were not read again.
    """

    upload_id: str
    format: str  # gds, gds.gz, oas: what the reader found
    dbu: float  # µm per database unit
    top_cells: tuple[TopCell, ...]
    top_cell_count: int
    layers: tuple[LayerPair, ...]
    cells: int
    at: datetime
    reused_from: str | None = None


@attrs.frozen
class UploadInspectionFailed:
    """The upload's layout could not be read (not readable, or past the reader's limits)."""

    upload_id: str
    error: str
    at: datetime


MAX_TOP_CELLS = 100
MAX_LAYERS = 4096


# Runs ----------------------------------------------------------------------------------------


@attrs.frozen
class PreflightCheck:
    """One pre-flight check a layout failed: a stable `code`, why, and the values compared."""

    code: str  # top_cell, single_top_cell, dbu, origin, size
    message: str
    expected: str
    found: str


@attrs.frozen
class Preflight:
    """The pre-flight result a run was queued with.

    `status`: `passed`, `failed` (queued anyway: `mode` was `warn`) or `not-run` (the layout
    was not read yet, or could not be read: `reason` says which).
    """

    status: str
    mode: str  # enforce | warn
    checks: tuple[PreflightCheck, ...] = ()
    reason: str = ""


@attrs.frozen
class Subscription:
    """Who to tell when a run ends: `kind` `webhook` (an http(s) URL) or `email` (an address)."""

    kind: str
    target: str


@attrs.frozen
class RunQueued:
    """A precheck run was asked for and joined the end of the queue."""

    run_id: str
    upload_id: str
    top_cell: str
    die_id: str
    slot: str
    cob: bool
    input_name: str
    input_filename: str
    input_format: str
    input_size: int
    input_sha256: str
    at: datetime
    preflight: Preflight | None = None  # older rows have none
    notify: tuple[Subscription, ...] = ()  # older rows asked for none
    recheck_of: str = ""  # the run it re-checks with the image resolved anew; older rows: none
    # `gds` or `oas`: the final layout's format; older rows: empty, the input's format
    output_format: str = ""
    reason: str = ""  # `recheck`: queued by the server for a new image; "" for a user's run


@attrs.frozen
class RunCancelRequested:
    """A client asked to stop a running run; the supervisor kills its container."""

    run_id: str
    at: datetime


@attrs.frozen
class RunCancelled:
    """A run ended because it was cancelled (while queued, or killed while running)."""

    run_id: str
    at: datetime
    exit_code: int | None = None


@attrs.frozen
class RunStarted:
    """The run's container was created, given its input and started."""

    run_id: str
    container_id: str
    image: str
    image_digest: str  # the repo digest, empty for a local build; older rows: it or the id
    at: datetime
    engine: str = "local"  # the configured engine it runs on; rows before engines: `local`
    image_id: str = ""  # the image's id (`sha256:...`); rows before it: empty


@attrs.frozen
class RunProgressed:
    """The precheck began step `step` of `total` (`name` like `KLayout.CheckSize`)."""

    run_id: str
    step: int
    total: int
    name: str
    at: datetime


@attrs.frozen
class OutputFile:
    """One file copied out of a finished run's container into `runs/<id>/`."""

    path: str  # relative to runs/<id>/
    size: int
    sha256: str


@attrs.frozen
class RunFinished:
    """The run's container ended and its verdict and outputs were stored (in one event).

    Written by earlier versions; runs now end with `RunExited` then `RunOutputsStored`.

    `status` is `completed` or `failed`; `classification` is `design` or `system` on failure;
    `deferred_errors` maps a check name (e.g. `KLayout DRC`) to its error count.
    """

    run_id: str
    status: str
    exit_code: int
    error: str
    failed_step: str | None
    classification: str | None
    deferred_errors: dict[str, int]
    output: OutputFile | None
    files: tuple[OutputFile, ...]
    metrics: dict[str, float | int | str | None]
    oom_killed: bool
    at: datetime


@attrs.frozen
class RunExited:
    """The run's container stopped and its verdict is known; its outputs are copied out next.

    `status` is `completed` or `failed`; `classification` is `design` or `system` on failure;
    `finished_at` is when Docker saw the container stop.
    """

    run_id: str
    status: str
    exit_code: int
    error: str
    classification: str | None
    deferred_errors: dict[str, int]
    oom_killed: bool
    finished_at: datetime
    at: datetime
    detail: str = ""  # the flow's own exception, when `error` gives the failed tool's words
    warnings: tuple[str, ...] = ()  # the flow's first WARNING lines, trimmed
    warning_count: int = 0  # all of them
    errors: tuple[str, ...] = ()  # the flow's first ERROR lines, trimmed
    error_count: int = 0  # all of them


@attrs.frozen
class RunRetried:
    """An attempt of the run ended in a system failure and the run is queued again, as attempt
    `attempt`, the same run id; the failed attempt's outputs are not kept.

    `engine` is where the failed attempt ran, `reason` why it failed, `exit_code` its
    container's exit (-1: none known), `started_at`/`finished_at` when it ran; `after_line` is
    the last output line of the runs's earlier attempts: the new attempt's lines follow it.
    """

    run_id: str
    attempt: int
    engine: str
    reason: str
    exit_code: int
    started_at: datetime | None
    finished_at: datetime
    after_line: int
    at: datetime


@attrs.frozen
class SkippedFile:
    """A file of a finished run's folder that was not copied out, and why."""

    path: str  # in the run folder, as the container had it
    size: int
    why: str


@attrs.frozen
class FindingsCount:
    """What reading one kept report found, in counts: its path as `/reports` serves it, the
    step that wrote it, markers over all rules, rules that fired; `cut_short` when the reading
    stopped early (a cap, a damaged file: the counts are at least these), `error` when it
    could not be read at all."""

    path: str
    step: str | None
    count: int
    rules: int
    cut_short: bool = False
    error: str = ""


@attrs.frozen
class RunOutputsStored:
    """An exited run's outputs are in `runs/<id>/`: nothing more will be recorded about it."""

    run_id: str
    output: OutputFile | None
    files: tuple[OutputFile, ...]
    metrics: dict[str, float | int | str | None]
    failed_step: str | None
    at: datetime
    skipped: tuple[SkippedFile, ...] = ()  # what was not copied out (caps, bulk), the first
    skipped_more: int = 0  # files not copied out beyond those `skipped` lists
    findings: tuple[FindingsCount, ...] = ()  # per report read (`runs/<id>/findings.json`)


@attrs.frozen
class RunFinishFailed:
    """The runner gave up recording a stopped run's end after `tries` tries (Docker, the log
    capture or the copy-out kept failing); the run ends as a system failure with what was
    stored."""

    run_id: str
    error: str
    tries: int
    at: datetime


@attrs.frozen
class RunFailedToStart:
    """The run could not be started (image missing, Docker error); it ends as a system failure."""

    run_id: str
    error: str
    at: datetime


@attrs.frozen
class RunTimedOut:
    """The run passed `docker.timeout_minutes`; its container is killed and the run fails."""

    run_id: str
    minutes: float
    at: datetime


@attrs.frozen
class RunDeleted:
    """An operator removed a finished run: its record, files and log lines go after this.

    An expired upload that no run refers to any more is retired with it.
    """

    run_id: str
    upload_id: str
    reason: str
    at: datetime


@attrs.frozen
class RunFilesPruned:
    """Retention removed some of a final run's files: `kinds` (of `outputs`, `reports`,
    `render`, `run_folder`, `logs`), `files` of them and `bytes_freed` (as measured: 0 when a
    crash had already removed them before this event), for `reason` `age` or `budget`. The
    run's record, verdict, metrics and events stay; only the files go, before this event."""

    run_id: str
    kinds: tuple[str, ...]
    files: int
    bytes_freed: int
    reason: str
    at: datetime


# Server --------------------------------------------------------------------------------------


@attrs.frozen
class InstanceCreated:
    """The storage folder got its server identity; containers are labelled with it."""

    instance_id: str
    at: datetime


@attrs.frozen
class ReactionFailed:
    """A background reaction raised; recorded so the failure is visible and auditable."""

    component: str
    error: str
    at: datetime
    run_id: str | None = None


@attrs.frozen
class StrayContainerRemoved:
    """A container labelled as ours with no live run was found and removed."""

    container_id: str
    name: str
    at: datetime


# Keys --------------------------------------------------------------------------------------


@attrs.frozen
class KeyIssued:
    """An admin issued an API key; the log keeps only the key's sha256, never the key."""

    name: str
    role: str
    key_sha256: str
    at: datetime


@attrs.frozen
class KeyRevoked:
    """An issued API key was revoked: refused from now on, its open streams closed."""

    name: str
    at: datetime


# Notifications -------------------------------------------------------------------------------


@attrs.frozen
class NotificationSent:
    """Delivery `delivery` (1-based, the run's `notify` in order) of a run's end was accepted.

    `target` is redacted (no user info, no query string); `message_id` is the delivery's
    stable `webhook-id`; `status_code` is the receiver's (a webhook) or the server's reply
    code (SMTP); `seconds` how long the attempt took.
    """

    run_id: str
    delivery: int
    kind: str
    target: str
    attempt: int
    message_id: str
    status_code: int
    seconds: float
    at: datetime


@attrs.frozen
class NotificationFailed:
    """An attempt of a delivery failed; `gave_up`: it was the last one, nothing more is owed."""

    run_id: str
    delivery: int
    kind: str
    target: str
    attempt: int
    message_id: str
    status_code: int | None  # the receiver's, when it answered
    error: str
    seconds: float
    at: datetime
    gave_up: bool = False


@attrs.frozen
class NotificationRedeliveryRequested:
    """Its run's owner (or an admin) asked for a delivery to be made again: it is owed anew."""

    run_id: str
    delivery: int
    at: datetime


@attrs.frozen
class RunReused:
    """A run just queued was answered from an earlier identical one, `source_run_id` (same
    layout sha256, top cell, die id, slot, cob, output format and image), which completed or
    failed on its design: it ended at once with that run's verdict and files (hard links of
    that run's, already in its own folder). Appended with the run's `run.queued`, and whole in
    itself (the verdict is copied in), so the run's own stream replays it alone.
    `across_owners`: the source was another owner's, whose id a user is not shown."""

    run_id: str
    source_run_id: str
    at: datetime
    status: str = ""  # `completed` or `failed`, the source's
    exit_code: int | None = None
    error: str = ""
    image: str = ""
    image_id: str = ""
    image_digest: str = ""
    failed_step: str | None = None
    classification: str | None = None
    deferred_errors: dict[str, int] = attrs.field(factory=dict)
    metrics: dict[str, float | int | str | None] = attrs.field(factory=dict)
    oom_killed: bool = False
    detail: str = ""
    warnings: tuple[str, ...] = ()
    warning_count: int = 0
    errors: tuple[str, ...] = ()
    error_count: int = 0
    findings: tuple[FindingsCount, ...] = ()
    output: OutputFile | None = None
    files: tuple[OutputFile, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()
    skipped_more: int = 0
    across_owners: bool = False


@attrs.frozen
class RunResourcesPeaked:
    """An attempt of the run ended: the highest memory (bytes in use, the page cache left out)
    and CPU (percent of one CPU) among its resource samples, its memory limit, and how many
    samples it had. Written with the attempt's end, only when it had samples."""

    run_id: str
    attempt: int
    memory_bytes: int
    limit_bytes: int
    cpu_percent: float
    samples: int
    at: datetime


# Re-checks ------------------------------------------------------------------------------------


@attrs.frozen
class RecheckPlanned:
    """An upload's newest ended run ran an older image than the one now seen: it is run again
    on `image_ref` (the repo digest, or the id of an image with none), once per upload and ref.
    In the stream of that run (`run_id`); the re-check's own `run.queued` follows it."""

    upload_id: str
    run_id: str  # the run re-checked: the upload's newest ended run
    image: str  # the configured image name
    image_ref: str  # the new image: its repo digest, or its id when it has none
    at: datetime


Event = (
    UploadReceived
    | UploadDeleted
    | UploadExpired
    | UploadInspected
    | UploadInspectionFailed
    | RunQueued
    | RunCancelRequested
    | RunCancelled
    | RunStarted
    | RunProgressed
    | RunFinished
    | RunExited
    | RunOutputsStored
    | RunFailedToStart
    | RunFinishFailed
    | RunRetried
    | RunTimedOut
    | RunDeleted
    | InstanceCreated
    | ReactionFailed
    | StrayContainerRemoved
    | KeyIssued
    | KeyRevoked
    | NotificationSent
    | NotificationFailed
    | NotificationRedeliveryRequested
    | RunReused
    | RunFilesPruned
    | RunResourcesPeaked
    | RecheckPlanned
)

TAGS: dict[type, str] = {
    UploadReceived: "upload.received",
    UploadDeleted: "upload.deleted",
    UploadExpired: "upload.expired",
    UploadInspected: "upload.inspected",
    UploadInspectionFailed: "upload.inspection-failed",
    RunQueued: "run.queued",
    RunCancelRequested: "run.cancel-requested",
    RunCancelled: "run.cancelled",
    RunStarted: "run.started",
    RunProgressed: "run.progressed",
    RunFinished: "run.finished",
    RunExited: "run.exited",
    RunOutputsStored: "run.outputs-stored",
    RunFailedToStart: "run.failed-to-start",
    RunFinishFailed: "run.finish-failed",
    RunRetried: "run.retried",
    RunTimedOut: "run.timed-out",
    RunDeleted: "run.deleted",
    InstanceCreated: "server.instance-created",
    ReactionFailed: "server.reaction-failed",
    StrayContainerRemoved: "server.stray-container-removed",
    KeyIssued: "key.issued",
    KeyRevoked: "key.revoked",
    NotificationSent: "notification.sent",
    NotificationFailed: "notification.failed",
    NotificationRedeliveryRequested: "notification.redelivery-requested",
    RunReused: "run.reused",
    RunFilesPruned: "run.files-pruned",
    RunResourcesPeaked: "run.resources-peaked",
    RecheckPlanned: "recheck.planned",
}

# Current schema number of each tag; older rows are upcast step by step on read.
SCHEMAS: dict[str, int] = {tag: 1 for tag in TAGS.values()} | {"run.queued": 2}


def stream_of(event: Event) -> str:
    """The stream an event belongs to: `upload-<id>`, `run-<id>`, `key-<name>` or `server`."""
    if isinstance(event, KeyIssued | KeyRevoked):
        return key_stream(event.name)
    if isinstance(
        event,
        UploadReceived | UploadDeleted | UploadExpired | UploadInspected | UploadInspectionFailed,
    ):
        return upload_stream(event.upload_id)
    run_id = getattr(event, "run_id", None)
    if run_id is not None and not isinstance(event, ReactionFailed):
        return run_stream(run_id)
    return SERVER_STREAM
