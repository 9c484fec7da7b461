"""The verdict rules on the output of real runs of the precheck flow (excerpts in
`tests/fixtures/real_runs/`): steps, verdicts, the failed tool's own words, and out of memory
as the real flow shows it (a step's process killed, the container exiting 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from precheck.domain.status import RunStatus
from precheck.domain.verdict import Ending, OutputFacts, decide_verdict

RUNS = Path(__file__).parent / "fixtures" / "real_runs"


def facts_of(case: str) -> OutputFacts:
    """What the case's log says, fed line by line as the capture would."""
    return OutputFacts().feed_all((RUNS / f"{case}.log").read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("case", ["pass", "magic"])
def test_a_passed_run_passes_with_all_sixteen_steps(case: str) -> None:
    """Exit 0 with the success line: completed; Magic DRC errors are warnings, never a fail."""
    facts = facts_of(case)
    assert [s.number for s in facts.steps] == list(range(1, 17))
    assert (
        facts.steps[2].name == "KLayout.CheckSize" and facts.steps[-1].name == "KLayout.WriteLayout"
    )
    assert {"Magic DRC", "KLayout DRC"} <= set(facts.checked)
    verdict = decide_verdict(Ending(0), facts)
    assert (verdict.status, verdict.classification) == (RunStatus.COMPLETED, None)


@pytest.mark.parametrize("check", ["Magic DRC", "KLayout DRC"])
def test_a_passed_log_without_a_checkers_report_is_not_passed(check: str) -> None:
    """The real passed log, exit 0 and success line kept, with one DRC checker's lines taken
    out: a system failure naming the check that did not report."""
    lines = (RUNS / "pass.log").read_text(encoding="utf-8").splitlines()
    facts = OutputFacts().feed_all(line for line in lines if check not in line)
    assert facts.success
    verdict = decide_verdict(Ending(0), facts)
    assert (verdict.status, verdict.classification, verdict.error) == (
        RunStatus.FAILED,
        "system",
        f"exit code 0, but the {check} check did not report",
    )


@pytest.mark.parametrize(
    ("case", "found"), [("density", {"KLayout density": 6}), ("drc", {"KLayout DRC": 3})]
)
def test_deferred_errors_fail_the_run_on_design(case: str, found: dict[str, int]) -> None:
    """All steps ran, then the deferred errors: a design failure with their counts."""
    facts = facts_of(case)
    verdict = decide_verdict(Ending(1), facts)
    assert facts.deferred == found
    assert (verdict.status, verdict.classification) == (RunStatus.FAILED, "design")
    assert verdict.error.startswith("deferred errors: ")


@pytest.mark.parametrize(
    ("case", "tool_line", "exception_starts"),
    [
        (
            "checksize",
            "[Error]: Layout size does not match slot size 0p5x0p5.",
            "Check Slot Size: subprocess (255, [",
        ),
        (
            "toplevel",
            "[Error] Top-level cell name 'chip_top' does not match expected name 'wrong_name'!",
            "Check Top-Level Name: subprocess",
        ),
        ("cob", "Error: Pad mask does not match!", "Check Pad Mask: subprocess"),
        (
            "cob_padmask",
            "Error: Couldn't find ID cell: 'gf180mcu_ws_ip__qrcode_id'.",
            "Generate ID: subprocess",
        ),
    ],
)
def test_a_failed_step_says_why_in_the_tools_own_words(
    case: str, tool_line: str, exception_starts: str
) -> None:
    """The reason is the line the flow repeats from the tool, not the flow's exception about
    a subprocess; that exception is kept as the detail."""
    verdict = decide_verdict(Ending(1), facts_of(case))
    assert (verdict.status, verdict.classification) == (RunStatus.FAILED, "design")
    assert verdict.error == f"the precheck failed: {tool_line}"
    assert verdict.detail.startswith(exception_starts), verdict.detail


def test_a_checker_failure_is_its_own_reason() -> None:
    """A checker that fails at once (zero-area polygons) has no tool lines: its exception is
    the reason, and there is no separate detail."""
    verdict = decide_verdict(Ending(1), facts_of("zeroarea"))
    assert (verdict.status, verdict.classification) == (RunStatus.FAILED, "design")
    assert verdict.error == "the precheck failed: 2 KLayout zero area polygons count found."
    assert verdict.detail == ""


def test_out_of_memory_is_a_system_failure_whatever_the_exit_code() -> None:
    """The real OOM: the render step's process killed, the container exiting 1 with Docker's
    `OOMKilled` true; and the same log without Docker's word (a memory watchdog) is still no
    design failure."""
    facts = facts_of("oom")
    by_docker = decide_verdict(Ending(1, oom_killed=True), facts)
    assert (by_docker.status, by_docker.classification) == (RunStatus.FAILED, "system")
    assert "out of memory" in by_docker.error
    unsaid = decide_verdict(Ending(1), facts)
    assert (unsaid.status, unsaid.classification) == (RunStatus.FAILED, "system")
    assert unsaid.error.startswith("killed: Render Image (w/ KLayout): Interrupted (SIGKILL)")


def test_ansi_colours_are_stripped_where_lines_are_parsed() -> None:
    """An image run with `TERM` set colours its lines; the facts are the same."""
    plain = (RUNS / "checksize.log").read_text(encoding="utf-8").splitlines()
    coloured = [f"\x1b[1;31m{line}\x1b[0m" if line.strip() else line for line in plain]
    facts = OutputFacts().feed_all(coloured)
    assert facts.steps == facts_of("checksize").steps
    assert facts.tool_error == "[Error]: Layout size does not match slot size 0p5x0p5."
    passed = (RUNS / "pass.log").read_text(encoding="utf-8").splitlines()
    coloured = [f"\x1b[34m{line}\x1b[0m" if line.strip() else line for line in passed]
    assert OutputFacts().feed_all(coloured).checked == facts_of("pass").checked


def test_a_passed_run_with_magic_drc_errors_says_so_in_its_warnings() -> None:
    """The magic case passes, and its WARNING lines say why: the checker's line and the flow's
    summary of it, without time, padding or source reference; a tool's own `WARNING:` line
    is not one of them."""
    facts = facts_of("magic")
    assert decide_verdict(Ending(0), facts).status == RunStatus.COMPLETED
    assert facts.warnings == [
        "3 Magic DRC errors found.",
        "The following warnings were generated by the flow:",
        "[Checker.MagicDRC] 3 Magic DRC errors found.",
    ]
    assert facts.warning_count == 3 and (facts.errors, facts.error_count) == ([], 0)


@pytest.mark.parametrize(
    ("case", "errors"),
    [
        (
            "checksize",
            [
                "Subprocess had a non-zero exit.",
                "Last 7 line(s):",
                "Full log file: 'runs/RUN_2026-12-01_21-24-55/03-klayout-checksize/"
                "klayout-checksize.log'",
            ],
        ),
        ("density", ["6 KLayout density errors found. - deferred"]),
        ("zeroarea", ["2 KLayout zero area polygons count found."]),
        ("pass", []),
    ],
)
def test_error_lines_are_gathered_from_the_real_logs(case: str, errors: list[str]) -> None:
    """Each case's ERROR lines, trimmed and counted, fed line by line or in blocks alike."""
    facts = facts_of(case)
    assert (facts.errors, facts.error_count) == (errors, len(errors))
    lines = (RUNS / f"{case}.log").read_text(encoding="utf-8").splitlines()
    by_block = OutputFacts()
    for i in range(0, len(lines), 7):
        block = lines[i : i + 7]
        joined = "\n".join(f"2026-12-01T21:24:33.0Z {t}" for t in block)
        by_block.feed_block(joined, lambda block=block: block)  # type: ignore[misc]
    assert by_block == facts


def test_warning_lines_are_bounded_in_number_and_length() -> None:
    """A flood of warnings: all counted, the first 20 kept, each at most 500 characters; a
    huge line is cut, not held."""
    facts = OutputFacts().feed_all(
        [f"[00:00:00] WARNING  w{i} " + "x" * 5000 for i in range(1000)]
        + ["WARNING  " + "y" * (8 << 20)]
    )
    assert facts.warning_count == 1001 and len(facts.warnings) == 20
    assert facts.warnings[0].startswith("w0 x") and {len(w) for w in facts.warnings} == {500}
