"""Bytes made from the live state in a forked copy of this process, while the event loop
serves on: how a periodic snapshot is taken without stopping the server for seconds.

The copy is this process at the instant of the fork, so what it reads is the state at one
consistent moment, whatever the loop changes next; it shares the memory copy-on-write (what
it touches, reference counts included, is copied while it runs). It runs only `make` and
writes the result to a pipe the parent reads in a thread (every other descriptor it closes):
no event loop, no logging, no files, nothing another thread could have held a lock on at the
fork; it leaves by `os._exit`, so nothing of the parent's is flushed or cleaned up twice.
Where there is no fork, or it fails, the bytes are made here, in the loop, as they would be
without this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import warnings
from collections.abc import Callable
from typing import NoReturn

_MADE = b"\x00"  # the message is what `make` returned
_FAILED = b"\x01"  # the message is why `make` raised
_LENGTH = 8  # bytes of the message's length, after its kind


class ForkedCopyFailed(Exception):
    """The copy's `make` raised, or the copy ended without giving its result."""


async def made_in_forked_copy(make: Callable[[], bytes]) -> bytes:
    """`make()`, run on the state as it is now in a forked copy of this process; the loop
    runs on meanwhile. Cancelled, the copy is killed. Raises `ForkedCopyFailed`."""
    if not hasattr(os, "fork"):
        return make()
    read_end, write_end = os.pipe()
    try:
        with warnings.catch_warnings():
            # Python warns of forking a process with threads: the copy never runs their code
            # nor takes their locks (see above).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return make()
    if pid == 0:
        _copy(make, write_end)
    os.close(write_end)
    try:
        message = await asyncio.to_thread(_read_all, read_end)
    except BaseException:
        # Cancelled (the server stops): end the copy. Not waited for yet, so its pid is still
        # its own (an ended child keeps it until it is waited for).
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await asyncio.shield(asyncio.to_thread(os.waitpid, pid, 0))
        raise
    # The copy closed the pipe as it left: the wait is short, and runs to its end even if
    # this is cancelled meanwhile.
    status = await asyncio.shield(asyncio.to_thread(os.waitpid, pid, 0))
    return _result(message, os.waitstatus_to_exitcode(status[1]))


def _result(message: bytes, exit_code: int) -> bytes:
    kind, length = message[:1], int.from_bytes(message[1 : 1 + _LENGTH], "big")
    body = message[1 + _LENGTH :]
    if exit_code != 0 or len(body) != length or kind not in (_MADE, _FAILED):
        raise ForkedCopyFailed(f"the forked copy ended with code {exit_code}, its result cut")
    if kind == _FAILED:
        raise ForkedCopyFailed(body.decode("utf-8", "replace"))
    return body


def _copy(make: Callable[[], bytes], write_end: int) -> NoReturn:
    """The forked copy's whole life: make the bytes, write them, leave."""
    code = 1
    try:
        # A signal meant for the copy must not reach the parent's loop through the wake-up
        # pipe they share, and stopping it stops it.
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, signal.SIG_DFL)
        # Only the pipe is kept: a connection the parent closes meanwhile is closed at once,
        # not held open by the copy. (The parent's descriptors stay open: these are copies.)
        os.closerange(3, write_end)
        os.closerange(write_end + 1, _max_descriptors())
        try:
            kind, body = _MADE, make()
        except BaseException as e:  # told to the parent, which logs it
            kind, body = _FAILED, f"{type(e).__name__}: {e}".encode("utf-8", "replace")
        _write_all(write_end, kind + len(body).to_bytes(_LENGTH, "big"))
        _write_all(write_end, body)
        code = 0
    finally:
        os._exit(code)


def _max_descriptors() -> int:
    try:
        return max(os.sysconf("SC_OPEN_MAX"), 1024)
    except (ValueError, OSError):
        return 1 << 16


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int) -> bytes:
    """Everything written to the pipe until the copy closes it (blocking); closes `fd`."""
    pieces: list[bytes] = []
    try:
        while piece := os.read(fd, 1 << 20):
            pieces.append(piece)
    finally:
        os.close(fd)
    return b"".join(pieces)
