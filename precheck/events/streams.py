"""The names of the log's streams, made in one place: `upload-<id>`, `run-<id>`, `key-<name>`
and `server` (facts about no one entity)."""

from __future__ import annotations

SERVER_STREAM = "server"


def upload_stream(upload_id: str) -> str:
    """The stream of one upload's events."""
    return f"upload-{upload_id}"


def run_stream(run_id: str) -> str:
    """The stream of one run's events."""
    return f"run-{run_id}"


def key_stream(name: str) -> str:
    """The stream of one API key's events."""
    return f"key-{name}"
