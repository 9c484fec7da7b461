"""A run's findings: per report read at copy-out, the rules that fired and their markers."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from precheck.errors import Conflict
from precheck.runner.findings_file import load_findings
from precheck.web import keys
from precheck.web.access import find_run
from precheck.web.pruned import refuse_pruned
from precheck.web.requests import query_int

DEFAULT_MARKERS = 100  # markers of each rule in one answer, unless `limit` says otherwise
MAX_MARKERS = 1000  # the largest `limit`


def _rule(rule: dict[str, Any], offset: int, limit: int) -> dict[str, Any]:
    markers = rule["markers"]
    return {
        "Rule": rule["rule"],
        "Description": rule["description"],
        "Count": rule["count"],
        "Kept": len(markers),
        "Markers": [
            {"Kind": m["kind"], "Points": m["points"]} for m in markers[offset : offset + limit]
        ],
    }


async def get_findings(request: web.Request) -> web.Response:
    """The run's findings, per report; `rule` (and `report`, a report's Path) narrow them,
    `offset` and `limit` page each rule's kept markers. 409 until the run is final."""
    run = find_run(request)
    if not run.settled:
        raise Conflict(f"precheck {run.id} is {run.status}; its findings are not there yet")
    refuse_pruned(run, "reports", "its findings (with its reports)")
    rule, report = request.query.get("rule"), request.query.get("report")
    offset = query_int(request, "offset", 0) or 0
    limit = min(query_int(request, "limit", DEFAULT_MARKERS) or 0, MAX_MARKERS)
    stored = await asyncio.to_thread(load_findings, request.app[keys.STORAGE].run_dir(run.id))
    reports = []
    for r in stored:
        if report is not None and r["path"] != report:
            continue
        rules = [_rule(x, offset, limit) for x in r["rules"] if rule is None or x["rule"] == rule]
        if rule is not None and not rules:
            continue
        reports.append(
            {
                "Path": r["path"],
                "Step": r["step"],
                "CutShort": r["cut_short"],
                "Error": r["error"] or None,
                "Count": sum(x["count"] for x in r["rules"]),
                "Rules": rules,
            }
        )
    return web.json_response({"Offset": offset, "Limit": limit, "Reports": reports})


def setup_routes(app: web.Application) -> None:
    """Register the findings route."""
    app.router.add_get("/api/v1/prechecks/{run_id}/findings", get_findings)
