"""Exit codes, and which run documents are final and what their verdict means for a job."""

from __future__ import annotations

from typing import Any

PASSED = 0
DESIGN_FAILURE = 1
USAGE = 2
SYSTEM_FAILURE = 3  # also a cancelled run: worth running again, the layout was not judged
SERVER_ERROR = 4  # the server answered with an error, or could not be reached

ACTIVE = frozenset({"queued", "running", "finishing"})  # `finishing`: outputs not stored yet
FINAL = frozenset({"completed", "failed", "cancelled"})


def status_of(doc: dict[str, Any]) -> str:
    """The run's status from its document."""
    return str((doc.get("State") or {}).get("Status", ""))


def is_final(doc: dict[str, Any]) -> bool:
    """Whether the run will change no more (its files are all stored)."""
    return status_of(doc) in FINAL


def exit_code(doc: dict[str, Any]) -> int:
    """What a final run means for a job: 0 passed, 1 design failure, 3 otherwise."""
    status = status_of(doc)
    if status == "completed":
        return PASSED
    result = doc.get("Result") or {}
    if status == "failed" and result.get("Classification") == "design":
        return DESIGN_FAILURE
    return SYSTEM_FAILURE


def verdict(doc: dict[str, Any]) -> str:
    """One line saying how the run ended (or where it is)."""
    status = status_of(doc)
    if status == "completed":
        return "completed: passed"
    if status == "cancelled":
        return "cancelled"
    if status != "failed":
        return status
    result = doc.get("Result") or {}
    state = doc.get("State") or {}
    kind = result.get("Classification") or "system"
    text = f"failed: {kind} failure"
    if result.get("FailedStep"):
        text += f" at {result['FailedStep']}"
    deferred = result.get("DeferredErrors")
    if state.get("Error"):
        text += f": {state['Error']}"
    elif isinstance(deferred, dict) and deferred:
        text += ": deferred errors: " + ", ".join(f"{n} {what}" for what, n in deferred.items())
    return f"{text} (exit code {state.get('ExitCode')})"
