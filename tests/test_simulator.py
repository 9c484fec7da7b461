"""Tests for the precheck simulator image, run on a real Docker engine."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.layouts import gds, gds_gz, oasis

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "simulator" / "build.sh"

# The real flow's steps and the long names its rule lines show.
STEPS = [
    ("KLayout.ReadLayout", "Read the Layout"),
    ("KLayout.CheckTopLevel", "Check Top-Level Name"),
    ("KLayout.CheckSize", "Check Slot Size"),
    ("KLayout.GenerateID", "Generate ID"),
    ("KLayout.Render", "Render Image (w/ KLayout)"),
    ("KLayout.Density", "Density Check"),
    ("Checker.KLayoutDensity", "KLayout Density Checker"),
    ("KLayout.ZeroAreaPolygons", "Find Zero Area Polygons"),
    ("Checker.KLayoutZeroAreaPolygons", "KLayout Zero Area Polygons Checker"),
    ("KLayout.Antenna", "Antenna Check"),
    ("Checker.KLayoutAntenna", "KLayout Antenna Checker"),
    ("Magic.DRC", "Design Rule Checks"),
    ("Checker.MagicDRC", "Magic Design Rule Checker"),
    ("KLayout.DRC", "Design Rule Check (KLayout)"),
    ("Checker.KLayoutDRC", "KLayout Design Rule Checker"),
    ("KLayout.WriteLayout", "Write the Layout"),
]
COB_STEPS = [*STEPS[:3], ("KLayout.CheckPadMask", "Check Pad Mask"), *STEPS[3:]]

# Checkers run no subprocess: no COMMANDS and no log of their own.
STEP_FILES = ["config.json", "state_in.json", "runtime.txt"]
TOOL_STEP_FILES = ["COMMANDS", *STEP_FILES]
RUN_FILES = ["flow.log", "warning.log", "error.log", "resolved.json"]
# Each report in its step's folder, the zero-area step's named like the density step's.
REPORTS = [
    "06-klayout-density/reports/density.klayout.json",
    "06-klayout-density/reports/density.klayout.lyrdb",
    "08-klayout-zeroareapolygons/reports/density.klayout.json",
    "08-klayout-zeroareapolygons/reports/density.klayout.lyrdb",
    "10-klayout-antenna/reports/antenna.klayout.json",
    "10-klayout-antenna/reports/antenna.klayout.lyrdb",
    "12-magic-drc/reports/drc.magic.rpt",
    "12-magic-drc/reports/drc.magic.lyrdb",
    "14-klayout-drc/reports/drc.klayout.json",
    "14-klayout-drc/reports/drc.klayout.lyrdb",
]
METRICS = [
    "klayout__density_error__count",
    "klayout__zero_area_polygons__count",
    "klayout__antenna_error__count",
    "magic__drc_error__count",
    "klayout__drc_error__count",
]
SUCCESS = "Precheck successfully completed."
FAILED = "Error: The precheck failed with the following exception:"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUNNING = re.compile(r"^\[\d\d:\d\d:\d\d\] VERBOSE  (Running '.*'\u2026) +step\.py:1138$")


def slug(step_id: str) -> str:
    return step_id.lower().replace(".", "-")


def folders(steps: Sequence[tuple[str, str]]) -> list[str]:
    return [f"{n:02d}-{slug(step_id)}" for n, (step_id, _) in enumerate(steps, 1)]


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def docker_problem() -> str | None:
    try:
        result = docker("info", timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker CLI not usable: {exc}"
    if result.returncode != 0:
        return f"`docker info` failed: {result.stderr.strip() or result.stdout.strip()}"
    return None


class NoDocker(str):
    """Stands in for the image tag when CI has no Docker engine, so tests fail, not error."""


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    problem = docker_problem()
    if problem:
        if os.environ.get("CI"):
            yield NoDocker(f"Docker engine required in CI: {problem}")
            return
        pytest.skip(f"needs a running Docker engine: {problem}")
    tag = f"precheck-simulator-test:{uuid.uuid4().hex[:12]}"
    build = subprocess.run(["bash", str(BUILD), tag], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"build.sh failed:\n{build.stderr}"
    assert build.stdout.strip().startswith("sha256:"), build.stdout
    yield tag
    docker("rmi", "-f", tag, check=False)


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str
    oom_killed: bool
    run_tag: str
    run_dir: Path  # copied-out /workspace/runs/<tag>; may not exist
    output_dir: Path  # copied-out /output

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def run_precheck(
    image: str,
    tmp_path: Path,
    layout: bytes,
    filename: str = "design.gds",
    *,
    top: str | None = "chip_top",
    extra: tuple[str, ...] = (),
    args: list[str] | None = None,
    memory: str | None = None,
    timeout: float = 120,
    output_format: str = "gds",
) -> Run:
    """Runs the image the way the server does: create, cp in, start, wait, cp out; the output
    is `/output/<top>.<output_format>`."""
    if isinstance(image, NoDocker):
        pytest.fail(image)
    run_tag = f"RUN_TEST_{uuid.uuid4().hex[:8]}"
    if args is None:
        args = ["--input", f"/input/{filename}", "--output", f"/output/{top}.{output_format}"]
        if top is not None:
            args += ["--top", top]
        args += ["--run-tag", run_tag, *extra]
    create = ["create", "--network", "none", "-e", "COLUMNS=200"]
    if memory:
        create += ["-m", memory]
    cid = docker(*create, image, "python3", "precheck.py", *args).stdout.strip()
    try:
        local_in = tmp_path / "in" / filename
        local_in.parent.mkdir(parents=True, exist_ok=True)
        local_in.write_bytes(layout)
        docker("cp", str(local_in), f"{cid}:/input/")
        started = docker("start", "-a", cid, timeout=timeout, check=False)
        exit_code = int(docker("wait", cid).stdout.strip())
        state = json.loads(docker("inspect", "-f", "{{json .State}}", cid).stdout)
        assert state["ExitCode"] == exit_code
        run_dir = tmp_path / "run"
        docker("cp", f"{cid}:/workspace/runs/{run_tag}", str(run_dir), check=False)
        output_dir = tmp_path / "output"
        docker("cp", f"{cid}:/output", str(output_dir))
        return Run(
            exit_code=exit_code,
            stdout=started.stdout,
            stderr=started.stderr,
            oom_killed=bool(state["OOMKilled"]),
            run_tag=run_tag,
            run_dir=run_dir,
            output_dir=output_dir,
        )
    finally:
        docker("rm", "-f", cid, check=False)


def assert_passed(run: Run, steps: Sequence[tuple[str, str]], top: str = "chip_top") -> None:
    assert run.exit_code == 0, run.stdout + run.stderr
    assert "INFO     Flow complete." in run.lines[-4]
    flow = "PrecheckFlow'" if len(steps) == 17 else "PrecheckFlow"
    assert run.lines[-3].startswith(f"{flow} - Stage {len(steps)} - Write the Layout ━")
    assert run.lines[-2:] == ["", SUCCESS]
    assert run.lines[0] == "None"
    header = run.lines[1:9]
    assert header[0].startswith("PDK_ROOT = ")
    assert header[1].startswith("PDK = ")
    assert header[2:] == [
        f"top_cell: {top}",
        "die_id: FFFFFFFF",
        f"cob: {'True' if len(steps) == 17 else 'False'}",
        "slot: 1x1",
        "threads: max",
        "workers: 1",
    ]
    running = [line for line in run.lines if RUNNING.match(line)]
    expected = folders(steps)
    assert len(running) == len(steps)
    for line, folder, (step_id, name) in zip(running, expected, steps, strict=True):
        said = RUNNING.match(line)
        assert said is not None and len(line) == 200, line
        assert said[1] == f"Running '{step_id}' at 'runs/{run.run_tag}/{folder}'\u2026"
        rule_index = run.lines.index(line) - 1
        assert f" {name} " in run.lines[rule_index], (name, run.lines[rule_index])
        assert len(run.lines[rule_index]) == 200
    found = sorted(p.name for p in run.run_dir.iterdir() if re.match(r"\d\d-", p.name))
    assert found == expected
    for folder in expected:
        step_dir = run.run_dir / folder
        tool = [] if "-checker-" in folder else [*TOOL_STEP_FILES, f"{folder[3:]}.log"]
        for name in [*STEP_FILES, *tool, "state_out.json"]:
            assert (step_dir / name).is_file(), step_dir / name
    for name in RUN_FILES:
        assert (run.run_dir / name).is_file(), name
    assert SUCCESS in (run.run_dir / "flow.log").read_text()
    offset = 1 if len(steps) == 17 else 0  # --cob moves the steps after CheckSize one on
    for name in REPORTS:
        number = int(name[:2]) + offset
        assert (run.run_dir / f"{number:02d}{name[2:]}").is_file(), name
    assert not (run.run_dir / "reports").exists()  # the real flow has no run-level reports/
    final = run.run_dir / "final"
    assert (final / "render" / f"{top}.png").read_bytes().startswith(PNG_MAGIC)
    metrics = json.loads((final / "metrics.json").read_text())
    for key in METRICS:
        assert isinstance(metrics[key], (int, float)), key
    assert metrics["klayout__drc_error__count"] == 0
    assert (final / "metrics.csv").read_text().startswith("Metric,Value\n")
    final_gds = (final / "gds" / f"{top}.gds").read_bytes()
    if (run.output_dir / f"{top}.oas").exists():  # OASIS asked for: see test_oasis_output
        return
    assert (run.output_dir / f"{top}.gds").read_bytes() == final_gds


def assert_failed_at(run: Run, folder: str) -> None:
    assert run.exit_code == 1, run.stdout + run.stderr
    assert FAILED in run.stdout
    assert SUCCESS not in run.stdout
    assert run.lines[-2].startswith(FAILED)
    step_dirs = sorted(p.name for p in run.run_dir.iterdir() if re.match(r"\d\d-", p.name))
    assert step_dirs[-1] == folder
    for name in step_dirs[:-1]:
        assert (run.run_dir / name / "state_out.json").is_file(), name
    assert not (run.run_dir / folder / "state_out.json").exists()
    assert not (run.run_dir / folder / "runtime.txt").exists()  # as the real flow leaves it
    assert not (run.run_dir / "final").exists()
    assert list(run.output_dir.iterdir()) == []


def test_pass(image: str, tmp_path: Path) -> None:
    """A layout without directives passes all 16 steps and writes final/ and the output."""
    layout = gds("chip_top")
    run = run_precheck(image, tmp_path, layout)
    assert_passed(run, STEPS)
    assert (run.output_dir / "chip_top.gds").read_bytes() == layout
    assert (run.run_dir / "final" / "gds" / "chip_top.gds").read_bytes() == layout


def test_pass_cob(image: str, tmp_path: Path) -> None:
    """With --cob the flow has 17 steps, CheckPadMask being step 04."""
    run = run_precheck(image, tmp_path, gds("chip_top"), extra=("--cob",))
    assert_passed(run, COB_STEPS)
    assert (run.run_dir / "04-klayout-checkpadmask" / "state_out.json").is_file()


def test_gds_gz_input(image: str, tmp_path: Path) -> None:
    """A .gds.gz input passes and final/ and the output hold the decompressed GDS."""
    layout = gds_gz("chip_top")
    run = run_precheck(image, tmp_path, layout, "design.gds.gz")
    assert_passed(run, STEPS)
    assert (run.output_dir / "chip_top.gds").read_bytes() == gzip.decompress(layout)


def test_oasis_input(image: str, tmp_path: Path) -> None:
    """An OASIS input passes like a GDS one."""
    layout = oasis("chip_top")
    run = run_precheck(image, tmp_path, layout, "design.oas")
    assert_passed(run, STEPS)
    assert (run.output_dir / "chip_top.gds").read_bytes() == layout


def test_oasis_output(image: str, tmp_path: Path) -> None:
    """`--output /output/<top>.oas` (as production) writes OASIS, from a GDS input as from an
    OASIS one (kept as it is), with the cell's name in it; final/ keeps its GDS."""
    run = run_precheck(image, tmp_path, gds("chip_top"), output_format="oas")
    assert_passed(run, STEPS)
    written = (run.output_dir / "chip_top.oas").read_bytes()
    assert written.startswith(b"%SEMI-OASIS\r\n") and b"chip_top" in written
    assert not (run.output_dir / "chip_top.gds").exists()
    layout = oasis("chip_top")
    again = run_precheck(image, tmp_path / "oas", layout, "design.oas", output_format="oas")
    assert_passed(again, STEPS)
    assert (again.output_dir / "chip_top.oas").read_bytes() == layout


def test_immediate_failure(image: str, tmp_path: Path) -> None:
    """fail=KLayout.CheckSize stops the flow at step 03 with exit 1 and no final/ or output."""
    run = run_precheck(image, tmp_path, gds("chip_top", "fail=KLayout.CheckSize"))
    assert_failed_at(run, "03-klayout-checksize")
    assert not any(line.startswith("Running 'KLayout.GenerateID'") for line in run.lines)


def test_top_cell_missing(image: str, tmp_path: Path) -> None:
    """A layout without the --top cell fails at CheckTopLevel."""
    run = run_precheck(image, tmp_path, gds("other_cell"), top="chip_top")
    assert_failed_at(run, "02-klayout-checktoplevel")
    assert "chip_top" in run.lines[-1]


def test_deferred_failure(image: str, tmp_path: Path) -> None:
    """deferred=3 runs to the end, writes final/ and the output, then fails with 3 DRC errors."""
    layout = gds("chip_top", "deferred=3")
    run = run_precheck(image, tmp_path, layout)
    assert run.exit_code == 1
    assert SUCCESS not in run.stdout
    assert "Flow complete." not in run.stdout
    assert run.lines[-3:] == [
        FAILED + " ",
        "One or more deferred errors were encountered:",
        "3 KLayout DRC errors found.",
    ]
    metrics = json.loads((run.run_dir / "final" / "metrics.json").read_text())
    assert metrics["klayout__drc_error__count"] == 3
    assert (run.run_dir / "final" / "gds" / "chip_top.gds").read_bytes() == layout
    assert (run.output_dir / "chip_top.gds").read_bytes() == layout
    assert (run.run_dir / "16-klayout-writelayout" / "state_out.json").is_file()
    drc = json.loads((run.run_dir / "14-klayout-drc/reports/drc.klayout.json").read_text())
    assert drc["total"] == 3


def test_noise_lines(image: str, tmp_path: Path) -> None:
    """lines=5000 prints all 5000 noise lines, in order, inside Magic DRC."""
    run = run_precheck(image, tmp_path, gds("chip_top", "lines=5000"))
    assert_passed(run, STEPS)
    noise = [line for line in run.lines if line.startswith("noise ")]
    assert noise == [f"noise {i}" for i in range(1, 5001)]
    first = run.lines.index("noise 1")
    assert "Running 'Magic.DRC'" in run.lines[first - 2]
    step_log = (run.run_dir / "12-magic-drc" / "magic-drc.log").read_text()
    assert "noise 5000\n" in step_log


def test_oom_killed(image: str, tmp_path: Path) -> None:
    """oom=256 under a 64 MB limit: as in the real flow, the kernel kills the step's process,
    the flow says so and exits 1, and Docker reports OOMKilled."""
    run = run_precheck(image, tmp_path, gds("chip_top", "oom=256"), memory="64m")
    assert run.exit_code == 1, run.stdout[-2000:]
    assert run.oom_killed is True
    assert SUCCESS not in run.stdout
    assert run.lines[-2:] == [FAILED + " ", "Design Rule Check (KLayout): Interrupted (SIGKILL)"]
    assert run.lines[-3].startswith("PrecheckFlow - Stage 14 - Design Rule Check (KLayout) ━")
    assert (run.run_dir / "13-checker-magicdrc" / "state_out.json").is_file()
    assert not (run.run_dir / "14-klayout-drc" / "state_out.json").exists()


def test_oom_of_the_flow_itself(image: str, tmp_path: Path) -> None:
    """oom_flow: the flow's own process is the one killed: exit 137, OOMKilled true."""
    layout = gds("chip_top", "oom=256", "oom_step=KLayout.Render", "oom_flow")
    run = run_precheck(image, tmp_path, layout, memory="64m")
    assert run.exit_code == 137
    assert run.oom_killed is True
    assert "Running 'KLayout.Render'" in run.stdout and FAILED not in run.stdout


def test_old_step_names_still_steer(image: str, tmp_path: Path) -> None:
    """fail=Checker.ZeroArea (the simulator's old name) fails the real zero-area checker."""
    run = run_precheck(image, tmp_path, gds("chip_top", "fail=Checker.ZeroArea"))
    assert_failed_at(run, "09-checker-klayoutzeroareapolygons")
    assert run.lines[-1] == "1 KLayout zero area polygons count found."


@pytest.mark.parametrize(
    "args",
    [
        ["--input", "/input/design.gds", "--id", "SHORT"],
        ["--input", "/input/design.gds", "--id", "123456789"],
        ["--top", "chip_top"],
        ["--input", "/input/design.gds", "--bogus"],
        ["--input", "/input/design.gds", "--slot", "2x2"],
    ],
    ids=["short-id", "long-id", "no-input", "unknown-flag", "bad-slot"],
)
def test_bad_usage(image: str, tmp_path: Path, args: list[str]) -> None:
    """Bad command lines (e.g. an --id that is not 8 characters) exit 2 with a usage error."""
    run = run_precheck(image, tmp_path, gds("chip_top"), args=args)
    assert run.exit_code == 2
    assert run.stderr.startswith("usage: precheck.py")
    assert "precheck.py: error: " in run.stderr
    assert run.stdout == ""


def test_missing_input(image: str, tmp_path: Path) -> None:
    """An --input path that does not exist fails with exit 1."""
    run = run_precheck(
        image, tmp_path, gds("chip_top"), args=["--input", "/input/nope.gds", "--top", "chip_top"]
    )
    assert run.exit_code == 1
    assert "/input/nope.gds" in run.stdout + run.stderr
    assert SUCCESS not in run.stdout
