"""Which image a run ran: its id and, for a pulled image, its repo digest. Pure."""

from __future__ import annotations

from collections.abc import Sequence

import attrs


@attrs.frozen
class ImageRef:
    """An image as an engine has it: `id` (`sha256:...`) and `digest` (`name@sha256:...`, empty
    for an image built on the engine, which no registry knows)."""

    id: str
    digest: str = ""

    @property
    def pinned(self) -> str:
        """The reference that names exactly this image: the digest when known, else the id."""
        return self.digest or self.id


def repository(image: str) -> str:
    """An image name without its tag or digest: `ghcr.io/a/b:latest` -> `ghcr.io/a/b`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name  # a colon before the last slash is a port


def repo_digest(image: str, digests: Sequence[str]) -> str:
    """Of an image's repo digests, the one of the configured name's repository (an image
    pulled under several names has one each), else the first; empty when it has none."""
    repo = repository(image)
    for d in digests:
        if d.split("@", 1)[0] == repo:
            return d
    return digests[0] if digests else ""
