"""What a run's container is: the precheck image's argv as production runs it, the labels that
mark it as ours, and the Engine API create body. Pure: no Docker, no clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from precheck.config import DockerConfig, EngineConfig, parse_memory
from precheck.domain.result_cache import output_format_of
from precheck.projections.runs import RunRecord
from precheck.runner.tar_stream import Entry

INPUT_DIR = "/input"
OUTPUT_DIR = "/output"
WORKDIR = "/workspace"
RUNS_DIR = f"{WORKDIR}/runs"  # the flow's run folders: `runs/<tag>/`
# `/output` is a link to this folder beside the run folder: the flow writes where production's
# argv says, and the run's end reads the output layout and the run folder in one archive of
# RUNS_DIR (the engine spends tens of ms on each archive read).
OUTPUT_STORE = f"{RUNS_DIR}/.output"

LABEL_INSTANCE = "precheck.instance"  # which server's storage the container belongs to
LABEL_RUN = "precheck.run"
LABEL_TOP_CELL = "precheck.top_cell"

# The tools open many files at once, never this many. A container may not be given more than
# its engine's own limit (the start is refused), so this stays below common ones (20000 up).
OPEN_FILES = 16384
# The engine keeps a container's output in files of its own (at most LOG_FILES of LOG_FILE_MIB):
# bounded, so a long run's output cannot fill the engine's disk; generous, because they are
# the capture's buffer. The capture follows the output, but a flood outruns it, and a rotated
# file dropped before it was read is lost (with 1 MiB files, most of a 150,000-line flood
# was). Rotation also stalled a follower in some engine versions, worst with a single file
# truncated in place: never one file, and none rotated before 256 MiB of output, past the
# default `docker.max_log_mib`, where lines are only counted.
LOG_FILE_MIB = 256
LOG_FILES = 4


def input_path(run: RunRecord) -> str:
    """Where the run's layout is copied to in the container."""
    return f"{INPUT_DIR}/{run.input.filename}"


def output_name(run: RunRecord) -> str:
    """File name of the final layout: the top cell, in the run's output format (`oas`: OASIS,
    as production writes it, to save disk); a run queued before the format was asked for
    writes the input's format (gzip undone)."""
    return f"{run.top_cell}.{output_format_of(run)}"


def precheck_argv(run: RunRecord) -> list[str]:
    """`python3 precheck.py ...` with every flag given, and the run id as a fresh run tag."""
    argv = [
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
        argv.append("--cob")
    return [*argv, "--run-tag", run.id]


def step_total(run: RunRecord) -> int:
    """How many steps the flow has: 16, or 17 with the chip-on-board pad check."""
    return 17 if run.cob else 16


def instance_filter(instance_id: str) -> str:
    """The label filter that selects one server's containers."""
    return f"{LABEL_INSTANCE}={instance_id}"


def labels(run: RunRecord, instance_id: str) -> dict[str, str]:
    """The labels that mark a container as this server's, for this run."""
    return {LABEL_INSTANCE: instance_id, LABEL_RUN: run.id, LABEL_TOP_CELL: run.top_cell}


def container_name(run: RunRecord, docker: DockerConfig) -> str:
    """The container's name: the configured prefix and the run id (and, from its second
    attempt on, the attempt: the failed attempt's container may not be removed yet)."""
    suffix = f"-{run.attempt}" if run.attempt > 1 else ""
    return f"{docker.container_prefix}{run.id}{suffix}"


def container_spec(
    run: RunRecord, docker: DockerConfig, instance_id: str, engine: EngineConfig | None = None
) -> dict[str, Any]:
    """The Engine API create body: production's argv, no network, no capabilities, bounded
    resources (memory and CPUs: the `engine`'s own, else `[docker]`'s) and output files."""
    memory = parse_memory((engine.memory_limit if engine else "") or docker.memory_limit)
    cpus = (engine.cpus if engine else 0) or docker.cpus
    return {
        "Image": docker.image,
        "Cmd": precheck_argv(run),
        "Env": ["COLUMNS=200"],
        "Labels": labels(run, instance_id),
        "NetworkDisabled": True,
        "HostConfig": {
            "NetworkMode": "none",
            "Memory": memory,
            "MemorySwap": memory,  # no swap: an OOM should fail fast, not crawl
            "PidsLimit": docker.pids_limit,
            **({"NanoCpus": round(cpus * 1e9)} if cpus else {}),
            "Ulimits": [{"Name": "nofile", "Soft": OPEN_FILES, "Hard": OPEN_FILES}],
            # The image runs as root on files it owns (/workspace, and /input and /output
            # from our archive, root's too): no capability is needed, none is kept.
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "LogConfig": {
                "Type": "json-file",
                "Config": {"max-size": f"{LOG_FILE_MIB}m", "max-file": str(LOG_FILES)},
            },
            "AutoRemove": False,
        },
    }


def input_entries(run: RunRecord, source: Path) -> list[Entry]:
    """The archive put into the container before it starts: the input folder, the output
    folder (a link to OUTPUT_STORE, made here too) and the layout."""
    return [
        Entry(INPUT_DIR.lstrip("/")),
        Entry(OUTPUT_STORE.lstrip("/")),
        Entry(OUTPUT_DIR.lstrip("/"), link=OUTPUT_STORE),
        Entry(input_path(run).lstrip("/"), source),
    ]
