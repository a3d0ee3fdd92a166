"""What the template looks at to judge an import: the threads and open fds of this process
(from ``/proc/self``), and which module's body was running (from the frames)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping
from types import FrameType, TracebackType


def threads() -> int:
    """Threads of this process, native ones included."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def open_fds() -> dict[int, str]:
    """This process's open fds and what each points to (``socket:[inode]``, a path...); the
    directory listing's own fd, closed by then, is not among them."""
    found = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def opened_since(before: Mapping[int, str]) -> dict[int, str]:
    """The fds open now that were not open (to the same thing) in *before*."""
    return {fd: what for fd, what in open_fds().items() if before.get(fd) != what}


def importing(default: str, frame: FrameType | None) -> str:
    """The module whose body is running innermost from *frame* outwards, else *default*."""
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            name = frame.f_globals.get("__name__")
            return name if isinstance(name, str) and name != "__main__" else default
        frame = frame.f_back
    return default


def failed_in(error: BaseException, default: str) -> str:
    """The innermost module whose body was running when *error* was raised."""
    tb: TracebackType | None = error.__traceback__
    found = default
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "<module>":
            found = str(tb.tb_frame.f_globals.get("__name__") or found)
        tb = tb.tb_next
    return found
