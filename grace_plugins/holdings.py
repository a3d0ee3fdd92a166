"""What this process holds that a fork would copy: its threads and its open fds (from
``/proc/self``), so that the template can tell what an import left behind."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping


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
