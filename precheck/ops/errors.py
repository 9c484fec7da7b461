"""The CLI's one error root: a failure the operator sees as one line, `precheck-server: ...`."""

from __future__ import annotations


class OpsError(Exception):
    """The operation failed; the message is for the operator. `exit_code`: 1, or 2 for usage."""

    exit_code = 1


class UsageError(OpsError):
    """The command line is wrong (unknown command, missing or bad option)."""

    exit_code = 2
