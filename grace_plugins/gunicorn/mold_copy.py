"""A copy of a mold, made before its ready check: what the workers are forked from if the
check leaves behind what makes forking unsafe.

The ready check's request runs in the mold: it warms it (what a first request imports is then
imported once, and shared). But the request may also start a thread: an APM agent (sentry-sdk,
New Relic, Elastic APM) starts its own when it first sends what it traced. If the import
alone left the mold safe to fork, the mold forks this copy before the check, single-threaded;
it waits on a pipe. The check fails, or passes and leaves nothing unsafe: the mold closes the
pipe without a word, and the copy leaves. The check passes but leaves a thread, a socket or a
file: the mold writes why, and leaves; the copy, once the mold is gone (it is then the
master's child: the master is a child subreaper), answers the master in its place. The workers
share the import (not the check's warm-up) instead of each importing the app.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from grace_plugins.gunicorn.mold_handle import reap

#: Longest the copy waits for the mold to be gone once told to take its place, and the mold
#: for a dismissed copy to leave (each leaves at once).
HANDOVER_TIMEOUT = 5.0


class CopyBeforeCheck:
    """The mold's side: the copy's pid, and the pipe it waits on."""

    def __init__(self, pid: int, write_end: int) -> None:
        self.pid = pid
        self._write_end = write_end

    def dismiss(self) -> None:
        """Not needed (the check failed, or left nothing unsafe): the copy leaves at the
        pipe's end, and is reaped here."""
        with contextlib.suppress(OSError):
            os.close(self._write_end)
        with contextlib.suppress(OSError, AttributeError):  # a pidfd: Linux 5.3 and later
            pidfd = os.pidfd_open(self.pid)
            try:  # woken as it exits: a reap polled every few ms would delay the workers
                select.select([pidfd], [], [], HANDOVER_TIMEOUT)
            finally:
                os.close(pidfd)
        reap(self.pid, kill=False)

    def hand_over(self, why: str) -> None:
        """The check left *why*: the copy takes this mold's place once it is gone (the caller
        leaves next)."""
        with contextlib.suppress(OSError):
            os.write(self._write_end, why.encode())  # a line: within the pipe's buffer
            os.close(self._write_end)


def fork_copy(leave: Callable[[], NoReturn]) -> CopyBeforeCheck | str:
    """Fork the copy. In the mold: its handle. In the copy: why the mold handed over, once
    the mold is gone; *leave* (it does not return) if the mold closed the pipe without a word
    (or was killed)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush(), sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read_end)
        return CopyBeforeCheck(pid, write_end)
    os.close(write_end)
    why = _read_to_the_end(read_end)
    if not why:
        leave()
    return why


def _read_to_the_end(read_end: int) -> str:
    """What the mold wrote, read until the pipe's end (the mold gone: it wrote, then left).
    Unbounded until the first byte (the mold bounds its check); then :data:`HANDOVER_TIMEOUT`."""
    got = b""
    deadline: float | None = None
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                break  # the mold lingers: take over anyway (it has answered nothing)
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        got += chunk
        deadline = deadline or time.monotonic() + HANDOVER_TIMEOUT
    os.close(read_end)
    return got.decode(errors="replace")
