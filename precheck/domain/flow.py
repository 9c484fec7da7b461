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
