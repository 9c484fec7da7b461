"""`GET /api/v1/prechecks/{id}/findings` and `Result.Findings` on a real socket: a run whose
real reports were read as the copy-out reads them (`store_findings`), then recorded."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from precheck.events.types import Metadata, OutputFile, RunExited, RunOutputsStored, RunStarted
from precheck.runner.findings_file import store_findings
from precheck.web import keys
from tests.test_api_prechecks import Client, client, create, upload

__all__ = ["client"]  # the fixture, used by name

SUPERVISOR = Metadata("supervisor")
REPORTS = Path(__file__).parent / "fixtures" / "real_runs" / "reports"


async def _ended_with_reports(client: Client, case: str | None) -> str:
    """A run ended as the drc case did, its reports (of `case`, if any) kept and read."""
    run_id: str = (await create(client, (await upload(client))["Id"]))["Id"]
    run_dir = client.app[keys.STORAGE].run_dir(run_id)
    files = []
    for src in sorted((REPORTS / case).rglob("*.*")) if case else []:
        rel = f"run/{src.parent.name}/reports/{src.name}"
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, run_dir / rel)
        files.append(OutputFile(rel, src.stat().st_size, "0" * 64))
    found = store_findings(run_dir, files)
    at = datetime.now(UTC)
    await client.app[keys.STORE].append(
        [
            RunStarted(run_id, "c" * 64, "sim", "sha256:x", at),
            RunExited(run_id, "failed", 1, "deferred", "design", {"KLayout DRC": 3}, False, at, at),
        ],
        SUPERVISOR,
    )
    r = await client.get(f"/api/v1/prechecks/{run_id}/findings")
    assert r.status == 409 and "not there yet" in (await r.json())["message"]
    await client.app[keys.STORE].append(
        [RunOutputsStored(run_id, None, tuple(files), {}, None, at, findings=found)], SUPERVISOR
    )
    return run_id


async def _findings(client: Client, run_id: str, **query: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/prechecks/{run_id}/findings", params=query)
    assert r.status == 200, await r.text()
    doc: dict[str, Any] = await r.json()
    return doc


async def test_findings_per_report_with_rules_counts_and_markers(client: Client) -> None:
    """The drc case: KLayout DRC's rules with descriptions and markers in µm, the clean Magic
    report with none; the run document counts the same."""
    run_id = await _ended_with_reports(client, "drc")
    doc = await _findings(client, run_id)
    by_path = {r["Path"]: r for r in doc["Reports"]}
    assert set(by_path) == {"12-magic-drc/drc.magic.lyrdb", "14-klayout-drc/drc.klayout.lyrdb"}
    drc = by_path["14-klayout-drc/drc.klayout.lyrdb"]
    assert (drc["Step"], drc["Count"], drc["CutShort"], drc["Error"]) == (
        "KLayout.DRC", 3, False, None
    )  # fmt: skip
    de2 = next(r for r in drc["Rules"] if r["Rule"] == "DE.2")
    assert de2["Description"].startswith("DE.2 :") and (de2["Count"], de2["Kept"]) == (2, 2)
    assert de2["Markers"][0] == {
        "Kind": "edge-pair",
        "Points": [[30.0, 100.0], [30.0, 100.5], [30.5, 100.5], [30.5, 100.0]],
    }
    result = (await (await client.get(f"/api/v1/prechecks/{run_id}")).json())["Result"]
    assert {f["Path"]: f["Count"] for f in result["Findings"]} == {
        "12-magic-drc/drc.magic.lyrdb": 0,
        "14-klayout-drc/drc.klayout.lyrdb": 3,
    }


async def test_one_rule_and_its_markers_paged(client: Client) -> None:
    """`rule` keeps that rule only (and the reports holding it); `offset` and `limit` page
    its markers; `limit` is capped; a bad value is a 400."""
    run_id = await _ended_with_reports(client, "drc")
    doc = await _findings(client, run_id, rule="DE.2", offset="1", limit="5")
    [report] = doc["Reports"]
    [rule] = report["Rules"]
    assert (rule["Rule"], rule["Count"], len(rule["Markers"])) == ("DE.2", 2, 1)
    assert (doc["Offset"], doc["Limit"]) == (1, 5)
    assert (await _findings(client, run_id, limit="99999"))["Limit"] == 1000
    assert (await _findings(client, run_id, rule="NO.1"))["Reports"] == []
    only = await _findings(client, run_id, report="12-magic-drc/drc.magic.lyrdb")
    assert [r["Path"] for r in only["Reports"]] == ["12-magic-drc/drc.magic.lyrdb"]
    r = await client.get(f"/api/v1/prechecks/{run_id}/findings", params={"offset": "-1"})
    assert r.status == 400 and "offset" in (await r.json())["message"]


async def test_a_run_without_reports_has_no_findings(client: Client) -> None:
    """Nothing was read: an empty list, and none in the run document."""
    run_id = await _ended_with_reports(client, None)
    assert (await _findings(client, run_id))["Reports"] == []
    doc = await (await client.get(f"/api/v1/prechecks/{run_id}")).json()
    assert doc["Result"]["Findings"] == []
    r = await client.get("/api/v1/prechecks/nope/findings")
    assert r.status == 404
