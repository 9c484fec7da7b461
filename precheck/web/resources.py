"""`/resources` of a run: its resource timeline (memory against the limit, CPU), as JSON or CSV."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from precheck.errors import Invalid
from precheck.storage.resource_samples import ResourceSample
from precheck.web import keys
from precheck.web.access import find_run

CSV = "text/csv"


def _at(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in ("json", "csv"):
            raise Invalid("format: expected json or csv")
        return fmt == "csv"
    return CSV in request.headers.get("Accept", "")


def _csv(samples: list[ResourceSample]) -> str:
    rows = ["At,MemoryBytes,MemoryLimitBytes,CpuPercent"]
    rows += [f"{_at(s.at)},{s.memory_bytes},{s.limit_bytes},{s.cpu_percent}" for s in samples]
    return "\r\n".join(rows) + "\r\n"


async def get_resources(request: web.Request) -> web.Response:
    """The run's samples, oldest first: one per `docker.stats_seconds` while it worked (every
    attempt's), with the memory limit of the latest."""
    run = find_run(request)
    csv = _wants_csv(request)
    store = request.app[keys.OUTPUT_LINES].resources
    samples = await store.samples(run.id) if store is not None else []
    if csv:
        return web.Response(
            text=_csv(samples),
            content_type=CSV,
            headers={"Content-Disposition": f'inline; filename="{run.id}-resources.csv"'},
        )
    return web.json_response(
        {
            "Interval": request.app[keys.CONFIG].docker.stats_seconds,
            "Limit": samples[-1].limit_bytes if samples else None,
            "Samples": [
                {
                    "At": _at(s.at),
                    "MemoryBytes": s.memory_bytes,
                    "MemoryLimitBytes": s.limit_bytes,
                    "CpuPercent": s.cpu_percent,
                }
                for s in samples
            ],
        }
    )


def setup_routes(app: web.Application) -> None:
    """Register the resource timeline route."""
    app.router.add_get("/api/v1/prechecks/{run_id}/resources", get_resources)
