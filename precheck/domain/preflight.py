"""Pre-flight: the precheck's first checks (top cell, units, die size and origin), answered from
a layout's inspection in seconds instead of after the queue and a container start.

Pure: it reads an `UploadInspected` and the run's parameters, nothing else. Layer rules,
DRC, density and antenna stay the precheck's own.
"""

from __future__ import annotations

from precheck.events.types import BBox, Preflight, PreflightCheck, TopCell, UploadInspected

# Die sizes of the shuttle's slots in µm (width, height), as the precheck's CheckSize has them.
SLOT_SIZES: dict[str, tuple[float, float]] = {
    "1x1": (3932.0, 5122.0),
    "0p5x1": (1936.0, 5122.0),
    "1x0p5": (3932.0, 2531.0),
    "0p5x0p5": (1936.0, 2531.0),
}
DBU = 0.001  # µm per database unit the precheck requires
# Values in µm closer than this are equal: far below any database unit, far above float noise.
EPSILON = 1e-6

MODES = ("enforce", "warn")
CHECK_CODES = ("top_cell", "single_top_cell", "dbu", "origin", "size")


def _num(v: float) -> str:
    """A length in µm as people write it: `3932`, `0.5`, `0.0005`."""
    text = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _size(box: BBox) -> str:
    return f"{_num(box.right - box.left)} x {_num(box.top - box.bottom)}"


def die_cell(layout: UploadInspected, top_cell: str) -> TopCell | None:
    """The cell whose extent is the die: the named top cell, else the only top cell."""
    named = [c for c in layout.top_cells if c.name == top_cell]
    if named:
        return named[0]
    if layout.top_cell_count == 1 and layout.top_cells:
        return layout.top_cells[0]
    return None


def check(layout: UploadInspected, top_cell: str, slot: str) -> tuple[PreflightCheck, ...]:
    """Every check `layout` fails for a run of `top_cell` in `slot` (empty: all pass)."""
    failed: list[PreflightCheck] = []
    names = [c.name for c in layout.top_cells]
    listed = ", ".join(names) or "none"
    if layout.top_cell_count > len(names):
        listed += f" and {layout.top_cell_count - len(names)} more"
    if top_cell not in names:
        failed.append(
            PreflightCheck(
                "top_cell",
                f"the layout has no top cell named {top_cell!r} (its top cells: {listed})",
                top_cell,
                listed,
            )
        )
    if layout.top_cell_count != 1:
        failed.append(
            PreflightCheck(
                "single_top_cell",
                f"the layout must have exactly one top cell, it has {layout.top_cell_count}"
                f" ({listed})",
                "1",
                str(layout.top_cell_count),
            )
        )
    if abs(layout.dbu - DBU) > 1e-12:
        failed.append(
            PreflightCheck(
                "dbu",
                f"the database unit must be {_num(DBU)} µm (1 nm), it is {layout.dbu:g} µm",
                _num(DBU),
                f"{layout.dbu:g}",
            )
        )
    die = die_cell(layout, top_cell)
    if die is None:
        return tuple(failed)
    width, height = SLOT_SIZES[slot]
    box = die.bbox
    if box is None:
        failed.append(
            PreflightCheck(
                "size",
                f"the top cell {die.name!r} is empty: the die must be {_num(width)} x"
                f" {_num(height)} µm for slot {slot}",
                f"{_num(width)} x {_num(height)}",
                "empty",
            )
        )
        return tuple(failed)
    if abs(box.left) > EPSILON or abs(box.bottom) > EPSILON:
        failed.append(
            PreflightCheck(
                "origin",
                f"the die must start at the origin (0, 0); its lower left corner is at"
                f" ({_num(box.left)}, {_num(box.bottom)}) µm",
                "0, 0",
                f"{_num(box.left)}, {_num(box.bottom)}",
            )
        )
    w, h = box.right - box.left, box.top - box.bottom
    if abs(w - width) > EPSILON or abs(h - height) > EPSILON:
        failed.append(
            PreflightCheck(
                "size",
                f"the die must be exactly {_num(width)} x {_num(height)} µm for slot {slot};"
                f" it is {_size(box)} µm",
                f"{_num(width)} x {_num(height)}",
                _size(box),
            )
        )
    return tuple(failed)


def slot_of(layout: UploadInspected) -> str | None:
    """The slot whose size the only top cell's die has, at the origin, if one does."""
    if layout.top_cell_count != 1 or not layout.top_cells:
        return None
    box = layout.top_cells[0].bbox
    if box is None or abs(box.left) > EPSILON or abs(box.bottom) > EPSILON:
        return None
    for slot, (width, height) in SLOT_SIZES.items():
        if abs(box.right - width) <= EPSILON and abs(box.top - height) <= EPSILON:
            return slot
    return None


def preflight_for_run(
    layout: UploadInspected | None, layout_error: str, top_cell: str, slot: str, mode: str
) -> Preflight:
    """The pre-flight a run is queued with: passed, failed, or not run (and why)."""
    if layout is None:
        reason = (
            f"the layout could not be read: {layout_error}"
            if layout_error
            else "the layout has not been read yet"
        )
        return Preflight("not-run", mode, reason=reason)
    failed = check(layout, top_cell, slot)
    return Preflight("failed" if failed else "passed", mode, failed)
