"""Small memory file systems for the disk-full tests (mounting needs root): a folder of a test
mounted as a tmpfs of a few MiB, unmounted afterwards."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_fs(folder: Path, size: str) -> Iterator[Path]:
    """`folder` (made if needed) on a memory file system of `size` (e.g. `1m`) while in use."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        why = f"cannot mount a small file system: {mounted.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(why)  # no test skips on CI
        pytest.skip(why)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
