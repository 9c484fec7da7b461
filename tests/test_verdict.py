"""The precheck's log read line by line, and the verdict decided from it and the exit."""

from __future__ import annotations

import random

import pytest

from precheck.domain.status import RunStatus
from precheck.domain.verdict import (
    DEFERRED_LINE,
    FAILURE_LINE,
    SUCCESS_LINE,
    Ending,
    OutputFacts,
    Step,
    decide_verdict,
    failed_step,
    parse_step,
)

RUN = "runs/RUN_2026-01-02_03-04-05"
CHECK_SIZE = f"Running 'KLayout.CheckSize' at '{RUN}/03-klayout-checksize'…"
HEADER = [
    "PDK_ROOT = /workspace/gf180mcu",
    "PDK = gf180mcuD",
    "top_cell: chip_top",
    "die_id: FFFFFFFF",
    "cob: False",
    "slot: 1x1",
    "threads: max",
    "workers: 1",
]
MAGIC_CLEAR = "[21:24:49] INFO     Check for Magic DRC errors clear." + " " * 100 + "checker.py:131"
KLAYOUT_CLEAR = (
    "[21:24:52] INFO     Check for KLayout DRC errors clear." + " " * 90 + "checker.py:131"
)
PASSED_LOG = [
    *HEADER,
    "───────────── Read Layout ─────────────",
    f"Running 'KLayout.ReadLayout' at '{RUN}/01-klayout-readlayout'…",
    MAGIC_CLEAR,
    KLAYOUT_CLEAR,
    "Flow complete.",
    SUCCESS_LINE,
]
DEFERRED_LOG = [
    *HEADER,
    f"Running 'KLayout.DRC' at '{RUN}/14-klayout-drc'…",
    "Flow complete.",
    FAILURE_LINE,
    DEFERRED_LINE,
    "  3 KLayout DRC errors found.",
    "12 Antenna errors found",
    "1 Density error found.",
]
MIB = 1 << 20


def facts_of(lines: list[str]) -> OutputFacts:
    return OutputFacts().feed_all(lines)


def test_step_line_gives_number_name_and_folder() -> None:
    """A `Running '...' at '...'` line names the step, its number and its run folder."""
    assert parse_step(CHECK_SIZE) == Step(3, "KLayout.CheckSize", f"{RUN}/03-klayout-checksize")


def test_step_line_with_prefix_and_two_digit_number() -> None:
    """Text before the announcement and numbers past 9 are read too."""
    line = f"[12:00:01] Running 'Magic.DRC' at '{RUN}/12-magic-drc'..."
    assert parse_step(line) == Step(12, "Magic.DRC", f"{RUN}/12-magic-drc")


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Running the checks now",
        "Running 'KLayout.CheckSize' at ''",
        "Running 'KLayout.CheckSize' at 'runs/tag/klayout-checksize'",
        "Running 'bad name!' at 'runs/tag/03-x'",
        SUCCESS_LINE,
    ],
)
def test_other_lines_are_not_steps(line: str) -> None:
    """Lines that do not announce a step in the precheck's form give no step."""
    assert parse_step(line) is None


def test_feed_returns_the_step_and_records_it() -> None:
    """Feeding a step line returns that step and adds it to the facts."""
    facts = OutputFacts()
    assert facts.feed(HEADER[0]) is None
    step = facts.feed(CHECK_SIZE)
    assert step == Step(3, "KLayout.CheckSize", f"{RUN}/03-klayout-checksize")
    assert facts.steps == [step]


def test_a_step_seen_twice_is_counted_once() -> None:
    """The same step announced again (a resumed or replayed log) is listed once."""
    facts = facts_of(
        [
            f"Running 'KLayout.ReadLayout' at '{RUN}/01-klayout-readlayout'",
            CHECK_SIZE,
            CHECK_SIZE,
            f"Running 'KLayout.ReadLayout' at '{RUN}/01-klayout-readlayout'",
        ]
    )
    assert [(s.number, s.name) for s in facts.steps] == [
        (1, "KLayout.ReadLayout"),
        (3, "KLayout.CheckSize"),
    ]


def test_success_line_with_exit_0_passes() -> None:
    """Exit 0 with the success line is the one way to pass."""
    facts = facts_of(PASSED_LOG)
    assert facts.success and not facts.failure
    verdict = decide_verdict(Ending(0), facts)
    assert (verdict.status, verdict.classification, verdict.error) == (
        RunStatus.COMPLETED,
        None,
        "",
    )


def test_checkers_reports_are_recorded_clear_or_not() -> None:
    """Each checker's line names its check once, whether it found errors or not; a tool's own
    line or a line without the logger's level is no report."""
    facts = facts_of(
        [
            MAGIC_CLEAR,
            "[21:33:00] WARNING  3 Magic DRC errors found." + " " * 100 + "checker.py:122",
            "[21:32:36] ERROR    3 KLayout DRC errors found. - deferred"
            + " " * 90
            + "checker.py:124",
            "INFO     Check for KLayout density errors clear.",
            "  12 Antenna errors found.",
            "[21:33:02] WARNING  [Checker.MagicDRC] 3 Magic DRC errors found.     flow.py:701",
            "Check for Other errors clear.",
        ]
    )
    assert facts.checked == ["Magic DRC", "KLayout DRC", "KLayout density"]


def test_checker_report_in_colour_is_recorded() -> None:
    """A checker's line in ANSI colours (an image run with `TERM` set) still counts."""
    facts = facts_of(["\x1b[34mINFO    \x1b[0m Check for Magic DRC errors clear.\x1b[0m"])
    assert facts.checked == ["Magic DRC"]


@pytest.mark.parametrize(
    ("dropped", "error"),
    [
        ([MAGIC_CLEAR], "exit code 0, but the Magic DRC check did not report"),
        ([KLAYOUT_CLEAR], "exit code 0, but the KLayout DRC check did not report"),
        (
            [MAGIC_CLEAR, KLAYOUT_CLEAR],
            "exit code 0, but the Magic DRC and KLayout DRC checks did not report",
        ),
    ],
)
def test_exit_0_with_success_line_but_a_checker_silent_is_a_system_failure(
    dropped: list[str], error: str
) -> None:
    """Exit 0 and the success line do not pass a run whose Magic or KLayout DRC checker never
    reported: it was not fully checked, and a retry may cure it."""
    verdict = decide_verdict(Ending(0), facts_of([t for t in PASSED_LOG if t not in dropped]))
    assert (verdict.status, verdict.classification, verdict.error) == (
        RunStatus.FAILED,
        "system",
        error,
    )


def test_magic_drc_errors_found_still_pass() -> None:
    """Magic DRC errors are warnings: a run whose Magic check found some passes."""
    found = "[21:33:00] WARNING  3 Magic DRC errors found." + " " * 100 + "checker.py:122"
    log = [found if t == MAGIC_CLEAR else t for t in PASSED_LOG]
    assert decide_verdict(Ending(0), facts_of(log)).status == RunStatus.COMPLETED


def test_success_line_must_be_the_whole_line() -> None:
    """The success line counts alone on its line (blanks aside), not inside other text."""
    assert not facts_of([f"echo '{SUCCESS_LINE}'", f"not really: {SUCCESS_LINE}"]).success
    assert facts_of([f"   {SUCCESS_LINE}  \r"]).success


def test_exit_0_without_success_line_is_a_system_failure() -> None:
    """Exit 0 without the success line fails as a system failure."""
    verdict = decide_verdict(Ending(0), facts_of(PASSED_LOG[:-1]))
    assert verdict.status == RunStatus.FAILED
    assert verdict.classification == "system"
    assert verdict.error == "exit code 0 without the success line"


def test_exit_1_with_failure_line_is_a_design_failure_with_its_reason() -> None:
    """Exit 1 after the failure line fails the design, with the next non-blank line as reason."""
    facts = facts_of(
        [*HEADER, CHECK_SIZE, FAILURE_LINE, "", "   ", "  The die is 4000 x 5122 µm.  ", "later"]
    )
    assert facts.failure and facts.reason == "The die is 4000 x 5122 µm."
    verdict = decide_verdict(Ending(1), facts)
    assert verdict.status == RunStatus.FAILED
    assert verdict.classification == "design"
    assert verdict.error == "the precheck failed: The die is 4000 x 5122 µm."


def test_failure_line_without_reason() -> None:
    """A failure line that is the last line still fails the design, saying no reason was given."""
    verdict = decide_verdict(Ending(1), facts_of([FAILURE_LINE]))
    assert (verdict.classification, verdict.error) == (
        "design",
        "the precheck failed: no reason given",
    )


def test_reason_is_cut_to_500_characters() -> None:
    """A very long reason line is kept to its first 500 characters."""
    facts = facts_of([FAILURE_LINE, "x" * 10_000])
    assert facts.reason == "x" * 500


def test_deferred_errors_heading_and_counts() -> None:
    """The deferred-errors heading starts a list of counts; the verdict names each count."""
    facts = facts_of(DEFERRED_LOG)
    assert facts.failure
    assert facts.reason == DEFERRED_LINE
    assert facts.deferred == {"KLayout DRC": 3, "Antenna": 12, "Density": 1}
    verdict = decide_verdict(Ending(1), facts)
    assert verdict.status == RunStatus.FAILED
    assert verdict.classification == "design"
    assert verdict.error == "deferred errors: 3 KLayout DRC, 12 Antenna, 1 Density"


def test_counts_before_the_deferred_heading_are_ignored() -> None:
    """`N ... errors found.` lines only count after the deferred-errors heading."""
    facts = facts_of(
        ["7 KLayout DRC errors found.", DEFERRED_LINE, "not a count", "2 X errors found."]
    )
    assert facts.deferred == {"X": 2}


def test_deferred_counts_without_failure_line_still_a_design_failure() -> None:
    """Exit 1 with deferred counts but no failure line is still a design failure."""
    facts = facts_of([DEFERRED_LINE, "5 KLayout DRC errors found."])
    assert not facts.failure
    verdict = decide_verdict(Ending(1), facts)
    assert (verdict.classification, verdict.error) == ("design", "deferred errors: 5 KLayout DRC")


def test_exit_1_without_failure_line_is_a_system_failure() -> None:
    """Exit 1 without the precheck's failure line is not taken as the design's fault."""
    verdict = decide_verdict(Ending(1), facts_of(HEADER))
    assert (verdict.status, verdict.classification, verdict.error) == (
        RunStatus.FAILED,
        "system",
        "exit code 1",
    )


def test_oom_is_a_system_failure_even_with_success_line() -> None:
    """A container killed for memory fails as a system failure, whatever the log said."""
    verdict = decide_verdict(Ending(137, oom_killed=True), facts_of(PASSED_LOG))
    assert (verdict.status, verdict.classification) == (RunStatus.FAILED, "system")
    assert verdict.error == "out of memory: the container hit its memory limit"
    verdict = decide_verdict(Ending(0, oom_killed=True), facts_of(PASSED_LOG))
    assert verdict.classification == "system" and "out of memory" in verdict.error


def test_timeout_is_a_system_failure_and_wins_over_everything() -> None:
    """A timed-out run fails as a system failure naming the limit, before OOM or the log."""
    ending = Ending(137, oom_killed=True, timed_out=True, timeout_minutes=180)
    verdict = decide_verdict(ending, facts_of(DEFERRED_LOG))
    assert (verdict.status, verdict.classification, verdict.error) == (
        RunStatus.FAILED,
        "system",
        "timeout: killed after 180 minutes",
    )
    assert decide_verdict(
        Ending(137, timed_out=True, timeout_minutes=1.5), OutputFacts()
    ).error == ("timeout: killed after 1.5 minutes")


def test_docker_error_is_a_system_failure_with_its_message() -> None:
    """Docker's own error fails the run as a system failure with Docker's message."""
    verdict = decide_verdict(
        Ending(0, docker_error="no space left on device"), facts_of(PASSED_LOG)
    )
    assert (verdict.classification, verdict.error) == ("system", "no space left on device")


def test_exit_137_is_a_system_failure() -> None:
    """A SIGKILL exit without the OOM flag fails as a system failure, even after a failure line."""
    verdict = decide_verdict(Ending(137), facts_of(DEFERRED_LOG))
    assert (verdict.status, verdict.classification, verdict.error) == (
        RunStatus.FAILED,
        "system",
        "killed (exit code 137)",
    )


@pytest.mark.parametrize("code", [2, 126, 127, 139, 255, -1])
def test_unknown_exit_code_is_a_system_failure(code: int) -> None:
    """An exit code the precheck does not use for design errors is a system failure."""
    verdict = decide_verdict(Ending(code), facts_of([*PASSED_LOG, FAILURE_LINE, "boom"]))
    assert (verdict.status, verdict.classification, verdict.error) == (
        RunStatus.FAILED,
        "system",
        f"exit code {code}",
    )


def test_failed_step_is_the_first_step_without_state_out() -> None:
    """The failed step is the lowest-numbered announced step whose folder did not complete."""
    steps = [
        Step(3, "KLayout.CheckSize", f"{RUN}/03-klayout-checksize"),
        Step(1, "KLayout.ReadLayout", f"{RUN}/01-klayout-readlayout"),
        Step(2, "KLayout.CheckTopLevel", f"{RUN}/02-klayout-checktoplevel"),
    ]
    assert failed_step(steps, {f"{RUN}/01-klayout-readlayout"}) == "KLayout.CheckTopLevel"
    assert failed_step(steps, set()) == "KLayout.ReadLayout"


def test_no_failed_step_when_all_completed_or_none_announced() -> None:
    """Every announced step completed, or none announced: no failed step."""
    steps = [Step(1, "KLayout.ReadLayout", f"{RUN}/01-klayout-readlayout")]
    assert failed_step(steps, {f"{RUN}/01-klayout-readlayout", "other"}) is None
    assert failed_step([], set()) is None


def test_huge_line_without_the_pattern_returns() -> None:
    """An 8 MiB line with none of the patterns is read, and changes nothing."""
    facts = OutputFacts()
    big = "x" * (8 * MIB)
    assert parse_step(big) is None
    assert facts.feed(big) is None
    assert facts == OutputFacts()


def test_huge_lines_while_reading_deferred_counts_return() -> None:
    """8 MiB lines after the deferred heading, nearly counts but not quite, are read and ignored."""
    facts = facts_of([DEFERRED_LINE])
    for line in (
        "1 " + "a" * (8 * MIB),
        "1 a errors found" + " " * (8 * MIB) + "x",
        "1" * (8 * MIB),
        "Running 'A' at '" * (MIB // 2),
    ):
        assert facts.feed(line) is None
    assert facts.deferred == {} and facts.steps == []


def test_huge_reason_line_after_failure_returns() -> None:
    """An 8 MiB line after the failure line is kept as a 500-character reason."""
    facts = facts_of([FAILURE_LINE, "y" * (8 * MIB)])
    assert facts.reason == "y" * 500


@pytest.mark.timeout(3)
def test_huge_near_step_line_returns() -> None:
    """An 8 MiB line that starts like a step announcement but never closes it is read, and so
    is a 4 KiB one (the longest the patterns look at)."""
    assert parse_step("Running 'A' at '" + "1" * (8 * MIB)) is None
    assert parse_step("Running 'A' at '" + "1" * 4000) is None


@pytest.mark.parametrize("seed", range(20))
def test_feeding_blocks_finds_what_feeding_lines_finds(seed: int) -> None:
    """A log fed in blocks of any size (each line behind a timestamp, as stored) gives the same
    steps, verdict lines, reason and deferred counts as fed line by line, and each block's
    steps are returned as the block is fed."""
    rng = random.Random(seed)
    interesting = [
        CHECK_SIZE,
        f"Running 'Checker.Density' at '{RUN}/05-checker-density'…",
        SUCCESS_LINE,
        FAILURE_LINE,
        "   the reason   ",
        DEFERRED_LINE,
        "  3 Magic DRC errors found.",
        "12 antenna errors found",
        "",
        "[21:33:00] WARNING  3 Magic DRC errors found." + " " * 120 + "checker.py:122",
        "[21:24:56] ERROR    Subprocess had a non-zero exit." + " " * 100 + "step.py:1383",
        "ERROR    an older image's error line",
        "WARNING: a tool's own warning, no logger line",
        MAGIC_CLEAR,
        KLAYOUT_CLEAR,
        "[21:32:36] ERROR    3 KLayout DRC errors found. - deferred" + " " * 90 + "checker.py:124",
        "\x1b[34mINFO    \x1b[0m Check for KLayout density errors clear.",
        "3 things found.",
    ]
    log = [rng.choice(interesting) if rng.random() < 0.1 else f"noise {i}" for i in range(400)]
    by_line = OutputFacts().feed_all(log)
    by_block, steps, i = OutputFacts(), [], 0
    while i < len(log):
        block = log[i : i + rng.randint(1, 40)]
        joined = "\n".join(f"2026-01-02T03:04:05.{n}Z {text}" for n, text in enumerate(block))
        steps += by_block.feed_block(joined, lambda block=block: block)  # type: ignore[misc]
        i += len(block)
    assert by_block == by_line
    assert steps == [s for s in map(OutputFacts().feed, log) if s is not None]


def test_a_block_without_any_verdict_line_is_not_read_line_by_line() -> None:
    """Noise is passed over whole: the lines one by one are never asked for."""

    def never() -> list[str]:
        raise AssertionError("a block of noise was read line by line")

    facts = OutputFacts()
    assert facts.feed_block("t noise\nt more noise 'Running\nt Precheck", never) == []
    assert facts == OutputFacts()
