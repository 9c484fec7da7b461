"""What a run produced and how to follow it: output, render, reports, debug tarball, wait, stats."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import quote

import attrs
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from precheck.domain.flow import report_path
from precheck.domain.status import RunStatus
from precheck.errors import Conflict, NotFound
from precheck.events.types import OutputFile
from precheck.projections.runs import RunRecord
from precheck.runner.copy_out import RUN_FOLDER
from precheck.runner.engine import EngineError
from precheck.runner.tar_stream import gzip_stream, tree_entries, write_tar
from precheck.service.run_waiter import wait_for_end
from precheck.web import keys
from precheck.web.access import find_run
from precheck.web.auth import AuthError
from precheck.web.held import hold
from precheck.web.middleware import error
from precheck.web.pruned import refuse_pruned
from precheck.web.requests import query_float

MAX_WAIT_SECONDS = 86400.0  # a wait's longest `timeout`: a day, longer than any run's limit


class _ChecksumFileResponse(web.FileResponse):
    """A file response whose ETag is the file's sha256 rather than its mtime and size."""

    def __init__(self, path: Path, sha256: str, **kwargs: object) -> None:
        super().__init__(path, **kwargs)  # type: ignore[arg-type]
        self._sha256 = sha256

    @property  # type: ignore[override]
    def etag(self) -> object:
        return web.StreamResponse.etag.fget(self)  # type: ignore[attr-defined]

    @etag.setter
    def etag(self, _: object) -> None:
        web.StreamResponse.etag.fset(self, self._sha256)  # type: ignore[attr-defined]

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # Conditions on the tag were answered by `_serve`; the base class would compare them
        # with its own mtime-based tag, so it sees the request without them.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _TAG_CONDITIONS}
        return await super().prepare(request.clone(headers=headers))


_TAG_CONDITIONS = ("if-none-match", "if-match")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")  # what the plain `filename=` fallback may hold as is
_ATTR_CHARS = "!#$&+-.^_`|~"  # RFC 5987 attr-char besides letters and digits


def attachment(filename: str) -> str:
    """`Content-Disposition` for a download named `filename` (RFC 6266): the name exactly, as
    `filename*` in UTF-8, and a fallback of safe ASCII for clients that read only `filename`.

    Names come from the container: quotes, `;`, `\\` or line breaks must not reach the header
    as they are."""
    plain = _UNSAFE.sub("_", filename).strip(".") or "download"
    exact = quote(filename.encode("utf-8", "surrogateescape"), safe=_ATTR_CHARS)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{exact}"


def _serve(request: web.Request, path: Path, sha256: str, filename: str) -> web.StreamResponse:
    """A download with Range support and the sha256 as its ETag."""
    quoted = f'"{sha256}"'
    if_none = request.headers.get("If-None-Match")
    if if_none and (if_none.strip() == "*" or quoted in [t.strip() for t in if_none.split(",")]):
        return web.Response(status=304, headers={"ETag": quoted})
    if_match = request.headers.get("If-Match")
    if (
        if_match
        and if_match.strip() != "*"
        and quoted not in [t.strip() for t in if_match.split(",")]
    ):
        return error(412, "the file's checksum does not match If-Match")
    return _ChecksumFileResponse(
        path,
        sha256,
        headers={"Content-Disposition": attachment(filename)},
    )


def _run_dir(request: web.Request, run: RunRecord) -> Path:
    return request.app[keys.STORAGE].run_dir(run.id)


async def get_output(request: web.Request) -> web.StreamResponse:
    """The final layout (also from a failed run with deferred errors: see `Result.Passed`)."""
    run = find_run(request)
    if run.output is None:
        if not run.settled:
            raise Conflict(f"precheck {run.id} is {run.status}; its output is not there yet")
        raise NotFound(f"precheck {run.id} has no output layout ({run.status})")
    refuse_pruned(run, "outputs", "its output layout")
    path = _run_dir(request, run) / run.output.path
    response = _serve(request, path, run.output.sha256, Path(run.output.path).name)
    response.headers["X-Precheck-Passed"] = "true" if run.status == RunStatus.COMPLETED else "false"
    return response


async def get_render(request: web.Request) -> web.StreamResponse:
    """The PNG render of the layout."""
    run = find_run(request)
    png = next((f for f in run.files if f.path.startswith(f"{RUN_FOLDER}/final/render/")), None)
    if png is None:
        if not run.settled:
            raise Conflict(f"precheck {run.id} is {run.status}; its render is not there yet")
        raise NotFound(f"precheck {run.id} has no render")
    refuse_pruned(run, "render", "its render")
    return _serve(request, _run_dir(request, run) / png.path, png.sha256, Path(png.path).name)


@attrs.frozen
class Report:
    """A report kept from a run: the step that wrote it (None: the flow itself), its name, a
    path unique within the run (`14-klayout-drc/drc.klayout.lyrdb`), the stored file."""

    step: str | None
    name: str
    path: str
    file: OutputFile


def reports_of(run: RunRecord) -> dict[str, Report]:
    """Every report of the run, by path: each step folder's `reports/` (where the real flow
    writes them), a run-level `reports/` (older images: served by file name alone), and the
    flow's logs and final metrics. Only these paths are served: nothing else is readable."""
    prefix = f"{RUN_FOLDER}/"
    found: dict[str, Report] = {}
    for f in run.files:
        served = report_path(f.path[len(prefix) :]) if f.path.startswith(prefix) else None
        if served is not None:
            path, step = served
            found[path] = Report(step, f.path.rsplit("/", 1)[-1], path, f)
    return found


async def list_reports(request: web.Request) -> web.Response:
    """The check reports (DRC, antenna, density, Magic...) copied out of the run, with the
    step that wrote each, in the flow's order."""
    run = find_run(request)
    refuse_pruned(run, "reports", "its reports")
    return web.json_response(
        [
            {
                "Step": r.step,
                "Name": r.name,
                "Path": r.path,
                "Size": r.file.size,
                "Checksums": {"sha256": r.file.sha256},
            }
            for r in sorted(reports_of(run).values(), key=lambda r: r.path)
        ]
    )


async def get_report(request: web.Request) -> web.StreamResponse:
    """One report by the `Path` that `list_reports` gives (checked against that list)."""
    run = find_run(request)
    name = request.match_info["name"]
    found = reports_of(run).get(name)
    if found is None:
        raise NotFound(f"precheck {run.id} has no report at {name!r}")
    refuse_pruned(run, "reports", "its reports")
    f = found.file
    return _serve(request, _run_dir(request, run) / f.path, f.sha256, found.name)


async def get_debug(request: web.Request) -> web.StreamResponse:
    """The whole run folder as a tar.gz, streamed as it is read."""
    run = find_run(request)
    refuse_pruned(run, "run_folder", "its run folder (the debug tarball)")
    root = _run_dir(request, run)
    entries = (
        await asyncio.to_thread(tree_entries, root, f"precheck-{run.id}") if root.is_dir() else []
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/gzip",
            "Content-Disposition": attachment(f"precheck-{run.id}.tar.gz"),
        }
    )
    await response.prepare(request)
    if request.method == "HEAD":  # headers only: a body here would corrupt the connection
        await response.write_eof()
        return response
    async for chunk in gzip_stream(write_tar(entries)):
        await response.write(chunk)
    await response.write_eof()
    return response


async def post_wait(request: web.Request) -> web.Response:
    """Docker's wait: answers when the run ends, with its exit code; 408 after `timeout` s;
    401 at once when the caller's key is revoked meanwhile."""
    run = find_run(request)
    timeout = query_float(request, "timeout", 300.0, high=MAX_WAIT_SECONDS)
    app = request.app
    with hold(request, "wait") as held:
        waiting = asyncio.ensure_future(
            wait_for_end(app[keys.STORE], app[keys.PROJECTIONS], run.id, timeout)
        )
        try:
            await asyncio.wait([waiting, held.revoked], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
        if held.revoked.done():
            raise AuthError(401, "Unauthorized: the API key was revoked")
        ended = waiting.result()
    if ended is None:
        raise web.HTTPRequestTimeout(text=f"precheck {run.id} did not end within {timeout:g} s")
    return web.json_response(
        {
            "StatusCode": ended.exit_code if ended.exit_code is not None else -1,
            "Status": ended.status,
            "Error": {"Message": ended.error} if ended.error else None,
        }
    )


async def get_stats(request: web.Request) -> web.Response:
    """Live resource use from Docker; 409 unless the run is running."""
    run = find_run(request)
    if run.status != RunStatus.RUNNING:
        raise Conflict(f"precheck {run.id} is not running ({run.status})")
    supervisor = request.app.get(keys.SUPERVISOR)
    if supervisor is None:
        raise Conflict("this server does not run containers")
    try:
        return web.json_response(await supervisor.stats(run))
    except EngineError as e:
        raise Conflict(f"stats unavailable: {e.message}") from None


def setup_routes(app: web.Application) -> None:
    """Register the result routes."""
    app.router.add_get("/api/v1/prechecks/{run_id}/output", get_output)
    app.router.add_get("/api/v1/prechecks/{run_id}/render", get_render)
    app.router.add_get("/api/v1/prechecks/{run_id}/reports", list_reports)
    # Any character, a line break too: report names come from the container.
    app.router.add_get(r"/api/v1/prechecks/{run_id}/reports/{name:[\s\S]+}", get_report)
    app.router.add_post("/api/v1/prechecks/{run_id}/wait", post_wait)
    app.router.add_get("/api/v1/prechecks/{run_id}/stats", get_stats)
    app.router.add_get("/api/v1/debug/prechecks/{run_id}", get_debug)
