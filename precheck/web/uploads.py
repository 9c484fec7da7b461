"""`/api/v1/uploads`: layout files, streamed to disk and announced by an event once whole."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from precheck.config import SLOTS
from precheck.domain.commands import TOP_CELL, DeleteUpload, ReceiveUpload, upload_expiry
from precheck.domain.preflight import check
from precheck.errors import Invalid, NotFound, TooLarge
from precheck.projections.uploads import UploadRecord
from precheck.service.as_of import upload_as_of
from precheck.storage.files import SUFFIX
from precheck.web import keys, quota
from precheck.web.access import find_upload, visible_uploads
from precheck.web.body_reading import paced
from precheck.web.context import metadata
from precheck.web.held import hold
from precheck.web.render import check_documents, upload_document
from precheck.web.requests import as_of_position

CHUNK = 1 << 20


async def create_upload(request: web.Request) -> web.Response:
    """Store a layout sent as multipart field `file` (or as the raw body) and record it."""
    app = request.app
    config, storage = app[keys.CONFIG], app[keys.STORAGE]
    left = quota.room(request)
    if left is not None and left <= 0:
        raise TooLarge(quota.full(request))
    keep_free = config.server.min_free_mb << 20
    storage.check_room(request.content_length or 0, keep_free)  # before a byte is stored
    with hold(request, "upload"):
        name, chunks = await _layout_stream(request)
        limit = config.server.max_upload_mb << 20
        try:
            received = await storage.receive(
                paced(request, chunks), min(limit, left or limit), keep_free
            )
        except TooLarge:
            if left is not None and left < limit:
                raise TooLarge(quota.full(request)) from None
            raise
    upload_id = uuid.uuid4().hex
    filename = f"input{SUFFIX[received.format]}"
    try:
        storage.place_upload(received, upload_id, filename)
        now = app[keys.CLOCK]()
        await app[keys.HANDLER].handle(
            ReceiveUpload(
                upload_id,
                name,
                filename,
                received.format,
                received.size,
                received.sha256,
                now,
                upload_expiry(now, config.server.upload_expiry_minutes),
            ),
            metadata(request),
        )
    except BaseException:
        received.path.unlink(missing_ok=True)
        storage.remove_upload(upload_id)
        raise
    upload = app[keys.PROJECTIONS].uploads.by_id[upload_id]
    return web.json_response(_document(request, upload, app[keys.CLOCK]()))


async def _layout_stream(request: web.Request) -> tuple[str, AsyncIterator[bytes]]:
    """The client's file name (a label only) and the file's bytes."""
    if request.content_type.startswith("multipart/"):
        try:  # a malformed body (no boundary, bad part headers) is the client's error
            reader = await request.multipart()
            async for part in reader:
                if isinstance(part, BodyPartReader) and part.name == "file":
                    return _label(part.filename), _part_chunks(part)
                if part is not None:
                    await part.release()
        except (ValueError, HttpProcessingError) as e:
            raise Invalid(f"bad multipart body: {e}") from None
        raise Invalid("multipart body has no 'file' field")
    if request.content_type in ("application/octet-stream", ""):
        return _label(request.query.get("name")), request.content.iter_chunked(CHUNK)
    raise Invalid("send the layout as multipart field 'file' or as application/octet-stream")


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    try:
        while chunk := await part.read_chunk(CHUNK):
            yield chunk
    except (ValueError, HttpProcessingError) as e:
        raise Invalid(f"bad multipart body: {e}") from None


def _label(name: str | None) -> str:
    # Kept for display only; never used as a path. Some clients percent-encode it.
    name = unquote(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:255] or "layout"


async def list_uploads(request: web.Request) -> web.Response:
    """All uploads, newest first."""
    now = request.app[keys.CLOCK]()
    uploads = sorted(
        visible_uploads(request, request.app[keys.PROJECTIONS].uploads.by_id.values()),
        key=lambda u: u.created,
        reverse=True,
    )
    return web.json_response([_document(request, u, now) for u in uploads])


async def get_upload(request: web.Request) -> web.Response:
    """One upload; with `as_of` (a log position, or an ISO time), as it stood then."""
    upload = find_upload(request)
    now = request.app[keys.CLOCK]()
    if "as_of" not in request.query:
        return web.json_response(_document(request, upload, now))
    position = await as_of_position(request)
    then = await upload_as_of(request.app[keys.STORE], upload.id, position)
    if then is None:
        raise NotFound(f"upload {upload.id} did not exist yet at position {position}")
    return web.json_response({**_document(request, then, now), "AsOf": position})


def _document(request: web.Request, upload: UploadRecord, now: datetime) -> dict[str, Any]:
    app = request.app
    return upload_document(upload, now, app[keys.PROJECTIONS], app[keys.CONFIG].docker.image)


async def get_preflight(request: web.Request) -> web.Response:
    """The pre-flight checks the upload's layout fails for `top_cell` and `slot`; creates nothing.

    `Passed` is null (and `Checks` empty) while the layout is not read, or could not be.
    """
    upload = find_upload(request)
    top_cell = request.query.get("top_cell", "")
    if not TOP_CELL.fullmatch(top_cell):
        raise Invalid("top_cell must be given as a plain cell name, as for a run")
    slot = request.query.get("slot") or request.app[keys.CONFIG].defaults.slot
    if slot not in SLOTS:
        raise Invalid(f"slot must be one of {', '.join(SLOTS)}")
    failed = check(upload.layout, top_cell, slot) if upload.layout is not None else None
    return web.json_response(
        {
            "Status": upload.layout_status,
            "Checks": check_documents(failed or ()),
            "Passed": None if failed is None else not failed,
            "Error": upload.layout_error,
        }
    )


async def delete_upload(request: web.Request) -> web.Response:
    """Delete an upload no queued or running run uses."""
    upload_id = find_upload(request).id
    await request.app[keys.HANDLER].handle(
        DeleteUpload(upload_id, request.app[keys.CLOCK]()), metadata(request)
    )
    return web.json_response({"message": "Upload deleted", "Id": upload_id})


def setup_routes(app: web.Application) -> None:
    """Register the upload routes."""
    app.router.add_post("/api/v1/uploads", create_upload)
    app.router.add_get("/api/v1/uploads", list_uploads)
    app.router.add_get("/api/v1/uploads/{upload_id}", get_upload)
    app.router.add_get("/api/v1/uploads/{upload_id}/preflight", get_preflight)
    app.router.add_delete("/api/v1/uploads/{upload_id}", delete_upload)
