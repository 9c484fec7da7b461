"""The precheck flow's steps, as the real image runs them, and where each writes its files.

Each step runs in a folder of the run named `NN-<slug>` (`14-klayout-drc`), the slug being the
step's id in lower case with `.` as `-` (`KLayout.DRC`); its reports go in that folder's
`reports/`. With `--cob` the pad check is step 4 and the steps after it move one on. Pure.
"""

from __future__ import annotations

STEPS = (
    "KLayout.ReadLayout",
    "KLayout.CheckTopLevel",
    "KLayout.CheckSize",
    "KLayout.CheckPadMask",  # with --cob only
    "KLayout.GenerateID",
    "KLayout.Render",
    "KLayout.Density",
    "Checker.KLayoutDensity",
    "KLayout.ZeroAreaPolygons",
    "Checker.KLayoutZeroAreaPolygons",
    "KLayout.Antenna",
    "Checker.KLayoutAntenna",
    "Magic.DRC",
    "Checker.MagicDRC",
    "KLayout.DRC",
    "Checker.KLayoutDRC",
    "KLayout.WriteLayout",
)

_BY_SLUG = {step.lower().replace(".", "-"): step for step in STEPS}


def step_of_folder(folder: str) -> str | None:
    """The step id of a step folder (`14-klayout-drc` -> `KLayout.DRC`); None when the folder
    is no step's of the flow this service knows."""
    number, dash, slug = folder.partition("-")
    if not dash or not number.isdigit():
        return None
    return _BY_SLUG.get(slug)


# Files of the run folder served as reports besides those in a `reports/` folder: the flow's
# own logs and its final metrics.
FLOW_FILES = ("flow.log", "warning.log", "error.log", "final/metrics.csv", "final/metrics.json")


def report_path(inner: str) -> tuple[str, str | None] | None:
    """Where a file of the run folder (`14-klayout-drc/reports/drc.klayout.lyrdb`) is served
    as a report (`14-klayout-drc/drc.klayout.lyrdb`) and the step that wrote it; None for a
    file that is no report. A run-level `reports/` (older images) is served by name alone."""
    parts = inner.split("/")
    if len(parts) >= 2 and parts[0] == "reports":
        return "/".join(parts[1:]), None
    if len(parts) >= 3 and parts[1] == "reports":
        return "/".join([parts[0], *parts[2:]]), step_of_folder(parts[0])
    if inner in FLOW_FILES:
        return inner, None
    return None
