"""Who writes a storage folder: one server, or the CLI when no server runs.

The server holds an exclusive lock on `server.lock` for its whole life and leaves its address
and an admin token in `server.json` (readable by its owner only). The CLI takes the same lock
without waiting: if it gets it, no server runs and the CLI may append itself while it holds
it; if not, it sends its change to the server's API with the token, so the server stays the
only writer. Two servers can never share a storage folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path

import attrs

from precheck.ops.errors import OpsError

LOCK = "server.lock"
INFO = "server.json"


class StorageBusy(OpsError):
    """Another process holds the storage folder."""


@attrs.frozen
class ServerInfo:
    """How to reach the server that holds a storage folder."""

    url: str
    token: str
    pid: int


class StorageLock:
    """An exclusive lock on a storage folder, released when closed (or when the process dies)."""

    def __init__(self, root: Path, wait: float = 0.0) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self._fd)
                    raise StorageBusy(f"{root} is in use by another precheck process") from None
                time.sleep(0.05)

    def announce(self, url: str) -> ServerInfo:
        """Write the server's address and a fresh admin token for the CLI."""
        info = ServerInfo(url, secrets.token_urlsafe(32), os.getpid())
        tmp = self.root / f"{INFO}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        # A new file, never through a link someone left at that name: the token is secret.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(attrs.asdict(info), f)
        os.replace(tmp, self.root / INFO)
        return info

    def close(self) -> None:
        """Release the lock (the info file is left; it is only believed while the lock is held)."""
        os.close(self._fd)

    def __enter__(self) -> StorageLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def running_server(root: Path) -> ServerInfo | None:
    """The server holding `root`, or None when none does."""
    if not (root / LOCK).exists():
        return None
    try:
        with StorageLock(root):
            return None
    except StorageBusy:
        pass
    try:
        raw = json.loads((root / INFO).read_text())
        return ServerInfo(str(raw["url"]), str(raw["token"]), int(raw["pid"]))
    except (OSError, ValueError, KeyError) as e:
        raise StorageBusy(f"{root} is locked but its server info cannot be read: {e}") from None
