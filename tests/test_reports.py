"""Which kept files are a run's reports, and under which step and path they are served: the
real flow writes each report inside its step's folder (see the real runs' trees)."""

from __future__ import annotations

import attrs

from precheck.domain.flow import STEPS, step_of_folder
from precheck.events.types import OutputFile
from precheck.projections.runs import RunRecord
from precheck.web.downloads import reports_of
from tests.factories import given, run_queued

# Kept files of the real `drc` case (its tree.txt), as copy-out names them.
REAL_DRC = [
    "output/chip_top.gds",
    "run/03-klayout-checksize/klayout-checksize.log",
    "run/06-klayout-density/reports/density.klayout.json",
    "run/06-klayout-density/reports/density.klayout.lyrdb",
    "run/08-klayout-zeroareapolygons/reports/density.klayout.json",
    "run/08-klayout-zeroareapolygons/reports/density.klayout.lyrdb",
    "run/10-klayout-antenna/reports/antenna.klayout.lyrdb",
    "run/12-magic-drc/reports/drc.magic.rpt",
    "run/12-magic-drc/reports/drc.magic.lyrdb",
    "run/14-klayout-drc/reports/drc.klayout.lyrdb",
    "run/14-klayout-drc/state_out.json",
    "run/final/metrics.csv",
    "run/final/metrics.json",
    "run/final/gds/chip_top.gds",
    "run/flow.log",
    "run/warning.log",
    "run/error.log",
]


def _run_with(paths: list[str]) -> RunRecord:
    run = given(run_queued("r1")).runs.get("r1")
    assert run is not None
    return attrs.evolve(run, files=tuple(OutputFile(p, 1, "0" * 64) for p in paths))


def test_every_report_of_a_real_run_is_found_under_its_step() -> None:
    """Each step folder's reports with their step id and a path unique in the run (the
    zero-area step's density-named files do not shadow the density step's), plus the flow's
    logs and metrics; nothing else of the run folder is served."""
    reports = reports_of(_run_with(REAL_DRC))
    by_path = {path: r.step for path, r in reports.items()}
    assert by_path == {
        "06-klayout-density/density.klayout.json": "KLayout.Density",
        "06-klayout-density/density.klayout.lyrdb": "KLayout.Density",
        "08-klayout-zeroareapolygons/density.klayout.json": "KLayout.ZeroAreaPolygons",
        "08-klayout-zeroareapolygons/density.klayout.lyrdb": "KLayout.ZeroAreaPolygons",
        "10-klayout-antenna/antenna.klayout.lyrdb": "KLayout.Antenna",
        "12-magic-drc/drc.magic.rpt": "Magic.DRC",
        "12-magic-drc/drc.magic.lyrdb": "Magic.DRC",
        "14-klayout-drc/drc.klayout.lyrdb": "KLayout.DRC",
        "final/metrics.csv": None,
        "final/metrics.json": None,
        "flow.log": None,
        "warning.log": None,
        "error.log": None,
    }
    assert reports["14-klayout-drc/drc.klayout.lyrdb"].name == "drc.klayout.lyrdb"


def test_a_run_level_reports_folder_is_served_by_file_name() -> None:
    """Older images (and the simulator) write `reports/` at the run's top: served as before."""
    reports = reports_of(_run_with(["run/reports/drc.klayout.json", "run/state.json"]))
    assert list(reports) == ["drc.klayout.json"] and reports["drc.klayout.json"].step is None


def test_step_folders_name_their_steps() -> None:
    """`NN-<slug>` gives the step id the log announces; anything else gives none."""
    assert step_of_folder("14-klayout-drc") == "KLayout.DRC"
    assert step_of_folder("09-checker-klayoutzeroareapolygons") == "Checker.KLayoutZeroAreaPolygons"
    assert step_of_folder("04-klayout-checkpadmask") == "KLayout.CheckPadMask"
    assert step_of_folder("klayout-drc") is None and step_of_folder("99-unknown") is None
    assert len(STEPS) == 17
