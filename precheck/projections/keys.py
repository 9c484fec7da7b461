"""Read model of the API keys issued through the API (keys in the config file are not here)."""

from __future__ import annotations

from datetime import datetime

import attrs

from precheck.events.store import RecordedEvent
from precheck.events.types import KeyIssued, KeyRevoked


@attrs.frozen
class KeyRecord:
    """One live issued key: its name, role, the sha256 of the key (hex) and when it was made."""

    name: str
    role: str
    sha256: str
    created: datetime


class Keys:
    """Live issued keys by name and by digest, and each name's stream version."""

    EVENTS = frozenset({KeyIssued, KeyRevoked})  # the types `apply` looks at

    def __init__(self) -> None:
        self.by_name: dict[str, KeyRecord] = {}
        self.by_digest: dict[str, KeyRecord] = {}
        self.versions: dict[str, int] = {}  # kept after a revoke: a name once issued is taken

    def apply(self, r: RecordedEvent) -> None:
        """Evolve the state by one event."""
        e = r.event
        if isinstance(e, KeyIssued):
            record = KeyRecord(e.name, e.role, e.key_sha256, e.at)
            self.by_name[e.name] = record
            self.by_digest[e.key_sha256] = record
            self.versions[e.name] = r.version
        elif isinstance(e, KeyRevoked):
            gone = self.by_name.pop(e.name, None)
            if gone is not None:
                self.by_digest.pop(gone.sha256, None)
            self.versions[e.name] = r.version
