"""The precheck image's command line for a run, as production runs it."""

from __future__ import annotations

from precheck.projections.runs import RunRecord
from precheck.storage.files import SUFFIX

INPUT_DIR = "/input"
OUTPUT_DIR = "/output"
WORKDIR = "/workspace"


def input_path(run: RunRecord) -> str:
    """Where the run's layout is copied to in the container."""
    return f"{INPUT_DIR}/{run.input.filename}"


def output_name(run: RunRecord) -> str:
    """File name of the final layout: the top cell, in the input's format (gzip undone)."""
    return f"{run.top_cell}{'.oas' if run.input.format == 'oas' else '.gds'}"


def precheck_argv(run: RunRecord) -> list[str]:
    """`python3 precheck.py ...` with every flag given, and the run id as a fresh run tag."""
    cmd = [
        "python3",
        "precheck.py",
        "--input",
        input_path(run),
        "--output",
        f"{OUTPUT_DIR}/{output_name(run)}",
        "--top",
        run.top_cell,
        "--id",
        run.die_id,
        "--slot",
        run.slot,
    ]
    if run.cob:
        cmd.append("--cob")
    return [*cmd, "--run-tag", run.id]


def step_total(run: RunRecord) -> int:
    """How many steps the flow has: 16, or 17 with the chip-on-board pad check."""
    return 17 if run.cob else 16


__all__ = ["SUFFIX", "input_path", "output_name", "precheck_argv", "step_total"]
