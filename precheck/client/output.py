"""Writing for a person at a terminal or for a CI log: the same words, different dressing.

stdout carries what a command produces (log lines, a run id, a document, a table), stderr what
the client says about it (queue position, steps, verdict, downloads, errors). On a terminal the
client adds colour and progress bars; otherwise every write is a plain line, with no carriage
return and no control character, so a CI log shows it as it was meant. Text that comes from the
server (log lines, messages) is cleaned of control characters in both cases: a layout's output
cannot move the cursor of whoever reads it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Protocol, TextIO

from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

# ANSI escape sequences (CSI, OSC, two-character ESC sequences), then any other control byte.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_ENDS = re.compile(r"\r\n|\r|\n")

_COLOURS = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}


def clean(text: str) -> str:
    """`text` on one line, without escape sequences or control characters (tabs are kept)."""
    return _CONTROL.sub("", _LINE_ENDS.sub(" ", _ESCAPES.sub("", text)))


class Progress(Protocol):
    """What a transfer reports its bytes to."""

    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class Output:
    """Where and how a command writes."""

    def __init__(
        self,
        *,
        json_mode: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.out = stdout or sys.stdout
        self.err = stderr or sys.stderr
        self.json_mode = json_mode
        if terminal is None:
            terminal = _isatty(self.out) and _isatty(self.err)
        self.terminal = terminal
        self.colour = terminal and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"

    # stdout -----------------------------------------------------------------------------------

    def line(self, text: str) -> None:
        """One line of output (a log line, a table row), cleaned, on stdout."""
        self.out.write(clean(text) + "\n")
        self.out.flush()

    def document(self, doc: Any) -> None:
        """One JSON document on one line of stdout (one per command, or JSON lines)."""
        self.out.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=True) + "\n")
        self.out.flush()

    # stderr -----------------------------------------------------------------------------------

    def note(self, text: str, style: str | None = None) -> None:
        """What the client says about the run: a plain line on stderr, coloured on a terminal."""
        text = clean(text)
        if self.colour and style in _COLOURS:
            text = f"\x1b[{_COLOURS[style]}m{text}\x1b[0m"
        self.err.write(f"{text}\n")
        self.err.flush()

    def error(self, message: str) -> None:
        """`precheck: <message>` on stderr."""
        self.note(f"precheck: {message}", "red")

    def progress(self, total: int | None, label: str) -> Progress:
        """A progress bar on a terminal; nothing otherwise (the caller notes the end)."""
        if not self.terminal or self.json_mode:
            return _NoBar()
        bar: Progress = tqdm(
            total=total,
            desc=clean(label),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self.err,
            leave=False,
            **_shape(self.err),
        )
        return bar


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _shape(stream: TextIO) -> dict[str, Any]:
    """Follow the terminal's size, unless it says it has none (a bare pty): 80 x 20 then."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        size = os.terminal_size((0, 0))
    if size.columns > 0 and size.lines > 0:
        return {"dynamic_ncols": True}
    return {"ncols": 80, "nrows": 20}


def size(n: int | None) -> str:
    """A byte count for people: 1.2 MiB."""
    if n is None:
        return "? B"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
