"""Reading the precheck's log and deciding how a run ended. Pure: no I/O, no clock."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet

import attrs

from precheck.domain.status import RunStatus

SUCCESS_LINE = "Precheck successfully completed."
FAILURE_LINE = "Error: The precheck failed with the following exception:"
DEFERRED_LINE = "One or more deferred errors were encountered:"
_STEP_HEAD = re.compile(r"Running '(?P<name>[A-Za-z0-9_.]+)' at '")
# Every line the precheck writes about its steps and verdict is short; longer ones are output of
# the tools it runs, and are not matched, so no pattern ever scans a huge line.
MAX_FACT_LINE = 4096
_DEFERRED_COUNT = re.compile(r"^\s*(?P<count>\d+) (?P<what>.+?) errors? found\.?\s*$")
# The flow repeats the last lines of a step's failed subprocess under this logger line; among
# them is the tool's own word on what is wrong (`[Error]: Layout size does not match ...`).
_LAST_LINES = re.compile(r"\bERROR\s+Last (?P<n>\d+) line\(s\):")
MAX_TOOL_LINES = 50  # of those repeated lines, at most this many are looked at
# A step whose process the kernel (or a memory watchdog) killed: the flow's exception ends so.
KILLED = "Interrupted (SIGKILL)"
# ANSI colour sequences, printed when the image runs with `TERM` set: never part of a fact.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The flow's logger lines of these levels: `[21:24:33] WARNING  3 Magic DRC errors found.`,
# padded to the terminal's width with the source reference (`checker.py:122`) at its end. The
# time is left out by older images; the level is followed by two spaces or more (a tool's own
# `WARNING: ...` is no logger line).
_LOGGED = re.compile(r"(?:\[\d\d:\d\d:\d\d\] )?(?P<level>WARNING|ERROR) {2,}(?=\S)")
_SOURCE = re.compile(r"[\w.-]{1,200}\.py:\d{1,9}")
# The checkers' logger lines, one per check whatever it found: `INFO     Check for Magic DRC
# errors clear.`, `WARNING  3 Magic DRC errors found.`, `ERROR    3 KLayout DRC errors found. -
# deferred`. A run that passes without these two having reported was not fully checked.
_CHECKED = re.compile(
    r"(?:\[\d\d:\d\d:\d\d\] )?(?:INFO|WARNING|ERROR) {2,}"
    r"(?:Check for (?P<clear>\S.{0,80}?) errors clear\."
    r"|\d{1,9} (?P<found>\S.{0,80}?) errors? found\.)"
)
REQUIRED_CHECKS = ("Magic DRC", "KLayout DRC")
MAX_LOGGED = 20  # warning and error lines kept of each level (all are counted)
MAX_LOGGED_TEXT = 500  # characters kept of each
# A line `OutputFacts.feed` acts on holds one of these (unless it follows the failure or
# deferred-errors line, or is one of the repeated lines), so a block of lines holding none is
# passed over whole. A logger line's level is followed by a space even when coloured.
_MARKERS = (
    "Running '",
    SUCCESS_LINE,
    FAILURE_LINE,
    DEFERRED_LINE,
    "line(s):",
    "WARNING ",
    "ERROR ",
    "errors clear.",
    " found.",
)


@attrs.frozen
class Step:
    """A step the log announced: its number, id (`KLayout.CheckSize`) and folder."""

    number: int
    name: str
    folder: str  # relative to the working dir: runs/<tag>/03-klayout-checksize


def parse_step(text: str) -> Step | None:
    """The step a `Running '...' at '...'` line announces, if it is one."""
    if len(text) > MAX_FACT_LINE:
        return None
    start = text.find("Running '")
    m = _STEP_HEAD.match(text, start) if start >= 0 else None
    end = text.find("'", m.end()) if m is not None else -1
    if m is None or end < 0:
        return None
    folder = text[m.end() : end]
    number = _step_number(folder.rsplit("/", 1)[-1])
    return None if number is None else Step(number, m["name"], folder)


def _step_number(name: str) -> int | None:
    """`NN` of a step folder named `NN-slug`: the first digits right before a `-` that has
    something after it. Scanned once: no pattern backtracks over a long run of digits."""
    for dash in range(1, len(name) - 1):
        if name[dash] != "-" or not name[dash - 1].isdigit():
            continue
        first = dash - 1
        while first > 0 and name[first - 1].isdigit():
            first -= 1
        return int(name[first:dash])
    return None


@attrs.define
class OutputFacts:
    """What the log said, gathered line by line."""

    steps: list[Step] = attrs.Factory(list)
    success: bool = False
    failure: bool = False
    deferred: dict[str, int] = attrs.Factory(dict)
    reason: str = ""  # the line after the failure line: the flow's exception
    tool_error: str = ""  # the failed tool's own line, from the lines the flow repeats
    warnings: list[str] = attrs.Factory(list)  # the flow's first WARNING lines, trimmed
    warning_count: int = 0
    errors: list[str] = attrs.Factory(list)  # the flow's first ERROR lines, trimmed
    error_count: int = 0
    checked: list[str] = attrs.Factory(list)  # the checks that reported (`Magic DRC`), in order
    _in_deferred: bool = False
    _after_failure: bool = False
    _repeated_left: int = 0  # repeated lines of a failed subprocess still to come
    _repeated: list[str] = attrs.Factory(list)

    def feed(self, text: str) -> Step | None:
        """Take one line; return the step it starts, if any."""
        if "\x1b" in text:
            text = _ANSI.sub("", text)
        if self._repeated_left:
            self._take_repeated(text)
            return None
        step = parse_step(text)
        if step is not None:
            if not any(s.folder == step.folder for s in self.steps):
                self.steps.append(step)
            return step
        if "WARNING " in text or "ERROR " in text:
            self._take_logged(text)
        if (" found." in text or "errors clear." in text) and len(text) <= MAX_FACT_LINE:
            self._take_checked(text)
        stripped = text.strip()
        if self._after_failure and stripped:
            # The reason may itself be the deferred-errors heading: read on.
            self.reason, self._after_failure = stripped[:500], False
        if stripped == SUCCESS_LINE:
            self.success = True
        elif stripped.startswith(FAILURE_LINE):
            self.failure = True
            self._after_failure = True
        elif stripped.startswith(DEFERRED_LINE):
            self._in_deferred = True
        elif self._in_deferred and len(stripped) <= MAX_FACT_LINE:
            m = _DEFERRED_COUNT.match(stripped)
            if m:
                self.deferred[m["what"]] = int(m["count"])
        elif len(stripped) <= MAX_FACT_LINE and (m := _LAST_LINES.search(stripped)):
            self._repeated_left, self._repeated = min(int(m["n"]), MAX_TOOL_LINES), []
        return None

    def _take_logged(self, text: str) -> None:
        """A WARNING or ERROR line of the flow's logger: counted, and kept among the first
        ones without its padding and source reference."""
        m = _LOGGED.match(text)
        if m is None:
            return
        rest = text[m.end() : m.end() + 2 * MAX_LOGGED_TEXT].rstrip()
        head, space, last = rest.rpartition(" ")
        if space and _SOURCE.fullmatch(last):
            rest = head.rstrip()
        if m["level"] == "WARNING":
            self.warning_count += 1
            kept = self.warnings
        else:
            self.error_count += 1
            kept = self.errors
        if len(kept) < MAX_LOGGED:
            kept.append(rest[:MAX_LOGGED_TEXT])

    def _take_checked(self, text: str) -> None:
        """A checker's report of its check, clear or not: the check is recorded once."""
        m = _CHECKED.match(text)
        what = m and (m["clear"] or m["found"])
        if what and what not in self.checked:
            self.checked.append(what)

    def _take_repeated(self, text: str) -> None:
        """One of the lines the flow repeats from a failed subprocess; after the last, the
        tool's own error: the last of them that says error, else the last one said."""
        self._repeated_left -= 1
        stripped = text.strip()
        if stripped and len(stripped) <= MAX_FACT_LINE:
            self._repeated.append(stripped)
        if self._repeated_left == 0 and self._repeated:
            errors = [line for line in self._repeated if "error" in line.lower()]
            self.tool_error = (errors or self._repeated)[-1][:500]

    def feed_block(self, joined: str, texts: Callable[[], Iterable[str]]) -> list[Step]:
        """Take consecutive lines; return the steps they start. `joined` holds every line (with
        anything around each, such as its time) and `texts` gives them one by one: it is called
        only when one may matter, so the tools' own output passes a block at a time."""
        if not (self._in_deferred or self._after_failure or self._repeated_left) and not any(
            marker in joined for marker in _MARKERS
        ):
            return []
        return [step for step in map(self.feed, texts()) if step is not None]

    def feed_all(self, lines: Iterable[str]) -> OutputFacts:
        """Take many lines."""
        for text in lines:
            self.feed(text)
        return self


@attrs.frozen
class Ending:
    """How the container ended, as Docker and the supervisor saw it."""

    exit_code: int
    oom_killed: bool = False
    timed_out: bool = False
    timeout_minutes: float = 0
    docker_error: str = ""


@attrs.frozen
class Verdict:
    """`completed` or `failed`, and for failures why: `design` or `system` and a message."""

    status: RunStatus
    classification: str | None
    error: str
    detail: str = ""  # the flow's own exception, when `error` gives the tool's words instead


def decide_verdict(ending: Ending, facts: OutputFacts) -> Verdict:
    """Passed only on exit 0 with the success line and the Magic and KLayout DRC checkers'
    reports; anything else is a design or system failure.

    System failures are those a retry might cure: OOM, timeout, Docker errors, a step's
    process killed (`Interrupted (SIGKILL)`: the kernel or a memory watchdog, whatever Docker
    says of OOM), an exit the precheck does not make on a design error. A design failure says
    why in the failed tool's own words, the flow's exception kept as the detail.
    """
    if ending.timed_out:
        return Verdict(
            RunStatus.FAILED, "system", f"timeout: killed after {ending.timeout_minutes:g} minutes"
        )
    if ending.docker_error:
        return Verdict(RunStatus.FAILED, "system", ending.docker_error)
    if ending.oom_killed:
        return Verdict(
            RunStatus.FAILED, "system", "out of memory: the container hit its memory limit"
        )
    missing = [check for check in REQUIRED_CHECKS if check not in facts.checked]
    if ending.exit_code == 0 and facts.success and missing:
        checks = f"{' and '.join(missing)} check{'s' if len(missing) > 1 else ''}"
        return Verdict(RunStatus.FAILED, "system", f"exit code 0, but the {checks} did not report")
    if ending.exit_code == 0 and facts.success:
        return Verdict(RunStatus.COMPLETED, None, "")
    if ending.exit_code == 0:
        return Verdict(RunStatus.FAILED, "system", "exit code 0 without the success line")
    if ending.exit_code == 137:
        return Verdict(RunStatus.FAILED, "system", "killed (exit code 137)")
    if facts.failure and facts.reason.endswith(KILLED):
        return Verdict(
            RunStatus.FAILED,
            "system",
            f"killed: {facts.reason} (out of memory, or stopped from outside)",
        )
    if ending.exit_code == 1 and (facts.failure or facts.deferred):
        if facts.deferred:
            found = ", ".join(f"{n} {what}" for what, n in facts.deferred.items())
            return Verdict(RunStatus.FAILED, "design", f"deferred errors: {found}")
        if facts.tool_error:
            why = f"the precheck failed: {facts.tool_error}"
            return Verdict(RunStatus.FAILED, "design", why, facts.reason)
        return Verdict(
            RunStatus.FAILED, "design", f"the precheck failed: {facts.reason or 'no reason given'}"
        )
    return Verdict(RunStatus.FAILED, "system", f"exit code {ending.exit_code}")


def failed_step(steps: Iterable[Step], completed_folders: AbstractSet[str]) -> str | None:
    """The first announced step whose folder has no `state_out.json`."""
    for s in sorted(steps, key=lambda s: s.number):
        if s.folder not in completed_folders:
            return s.name
    return None
