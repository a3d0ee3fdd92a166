"""A copy of a mold, made before its ready check: what the workers are forked from if the
check leaves behind what makes forking unsafe.

The ready check's request runs in the mold: it warms it (what a first request imports is then
imported once, and shared). But the request may also start a thread: an APM agent (sentry-sdk,
New Relic, Elastic APM) starts its own when it first sends what it traced. If the import
alone left the mold safe to fork, the mold forks this copy before the check, single-threaded;
it waits. The check fails, or passes and leaves nothing unsafe: the mold kills the idle copy.
The check passes but leaves a thread, a socket or a file: the mold writes why on a pipe and
leaves; the copy, once the mold is gone (it is then the master's child: the master is a child
subreaper), answers the master in its place. The workers share the import (not the check's
warm-up) instead of each importing the app.

The copy never outlives its mold unless told to take its place: it leaves when the mold exits
without a word (killed, failed, retired), and when the master closes the mold's socket. The
copy is optional: if it cannot be made, or is gone when the mold would hand over, the
generation is what it would have been without it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from grace_plugins.gunicorn.mold_handle import reap

#: Longest the copy waits for the mold to be gone once it wrote why (it leaves at once).
HANDOVER_TIMEOUT = 5.0


def mold_in_place(
    gen: int, pid: int, answer: dict[str, Any], log: Any, child_exit: Callable[[int, int], None]
) -> int:
    """The master's side: the pid of generation *gen*'s mold once it answered ready: *pid*
    (the process the master forked), or the copy that answered in its place (then *pid*, gone,
    is reaped here, and *child_exit* called for it, as for any mold that exits)."""
    copy = answer.get("pid")
    if not isinstance(copy, int) or copy == pid:
        return pid
    reap(pid, kill=False)
    child_exit(pid, gen)
    log.info(
        "grace_plugins: generation %s: %s; its workers are forked from mold %s, a copy of"
        " mold %s made before the check, so they share the import, not the check's warm-up",
        gen,
        answer.get("copy") or "the ready check left what makes forking unsafe",
        copy,
        pid,
    )
    return copy


class CopyBeforeCheck:
    """The mold's side: the copy's pid, and the pipe it waits on."""

    def __init__(self, pid: int, write_end: int) -> None:
        self.pid = pid
        self._write_end = write_end

    def dismiss(self) -> None:
        """Not needed (the check failed, or left nothing unsafe): killed (it is idle, and
        holds nothing of its own) and reaped."""
        with contextlib.suppress(OSError):
            os.close(self._write_end)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        reap(self.pid, kill=True)

    def hand_over(self, why: str) -> bool:
        """The check left *why*: tell the copy to take this mold's place (the caller leaves
        next). False if the word did not reach it: the copy is gone (its end of the pipe with
        it), and then reaped."""
        try:
            os.write(self._write_end, why.encode())  # a line: within the pipe's buffer
            os.close(self._write_end)
        except OSError:
            self.dismiss()
            return False
        return True


def fork_copy(wire: socket.socket, leave: Callable[[], NoReturn]) -> CopyBeforeCheck | str | None:
    """Fork the copy. In the mold: its handle, or None if it could not be made (the check runs
    without it). In the copy: why the mold handed over, once the mold is gone; *leave* (it does
    not return) if the mold left without a word, or the master closed *wire* (the mold's
    socket)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush(), sys.stderr.flush()
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    mold = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid:
        os.close(read_end)
        return CopyBeforeCheck(pid, write_end)
    os.close(write_end)
    why = _wait_for_word(mold, read_end, _pidfd(mold), wire)
    if not why:
        leave()
    return why


def _pidfd(mold: int) -> int | None:
    """A pidfd of the mold (readable once it exits), or None (Linux before 5.3, or the mold
    already gone: the copy was re-parented)."""
    try:
        pidfd = os.pidfd_open(mold)
    except (OSError, AttributeError):
        return None
    if os.getppid() != mold:
        os.close(pidfd)
        return None
    return pidfd


def _wait_for_word(mold: int, read_end: int, pidfd: int | None, wire: socket.socket) -> str:
    """What the mold wrote ("" if nothing): read until the pipe's end, the mold's exit or the
    master closing *wire*; then, if it wrote, until the mold is gone (bounded). Unbounded before
    that: the mold's check is bounded, and the mold's end ends this wait."""
    watched = [read_end, wire.fileno(), *([pidfd] if pidfd is not None else [])]
    got = b""
    while True:
        ready = {fd for fd, _ in _poll(watched, None)}
        chunk = os.read(read_end, 4096) if read_end in ready else b""
        if not chunk:
            break  # the pipe's end, the mold's exit, or the master's end of the socket
        got += chunk
    deadline = time.monotonic() + HANDOVER_TIMEOUT
    if got and pidfd is not None:
        _poll([pidfd], HANDOVER_TIMEOUT)
    while got and pidfd is None and os.getppid() == mold and time.monotonic() < deadline:
        time.sleep(0.001)  # without a pidfd: re-parented once the mold is gone
    for fd in (read_end, pidfd):
        if fd is not None:
            os.close(fd)
    if _poll([wire.fileno()], 0):
        return ""  # the master closed the mold's socket (it sends nothing before the answer)
    return got.decode(errors="replace")


def _poll(fds: list[int], timeout: float | None) -> list[tuple[int, int]]:
    """The fds of *fds* readable (or closed) within *timeout* seconds (None: no limit); poll,
    not select: any fd number (an app may open a thousand files at import)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return poller.poll(None if timeout is None else timeout * 1000)
