"""An atomically written pidfile that never follows a symbolic link.

The pid is written to a fresh temporary file beside the target (``O_EXCL | O_NOFOLLOW``) and
renamed over it, so a reader never sees a half-written pid and a link planted at the path is
refused rather than written through.
"""

from __future__ import annotations

import contextlib
import os

from grace_plugins.atomic import untrusted, write_atomic
from grace_plugins.errors import GraceError


def check_pidfile(path: str) -> None:
    """Refuse, before anything starts, a pidfile that :func:`write_pidfile` would refuse.

    :raises GraceError: when *path* is a symbolic link or (as root) another user could
        replace it.
    """
    path = os.path.abspath(path)
    if os.path.islink(path):
        raise GraceError(
            f"Pidfile {path} is a symbolic link; refusing to write through it. Remove the link"
            " or choose another --pidfile path."
        )
    why = untrusted(os.path.dirname(path))
    if why is not None:
        raise GraceError(
            f"Pidfile {path}: running as root, its directory is unsafe ({why}: another user"
            " could replace the pidfile). Choose a directory only root can write to, such as"
            " /run/<name>."
        )


def write_pidfile(path: str, pid: int | None = None) -> None:
    """Write *pid* (default: this process) to *path* atomically.

    :raises GraceError: as :func:`check_pidfile`, or when its directory is not writable.
    """
    pid = os.getpid() if pid is None else pid
    path = os.path.abspath(path)
    check_pidfile(path)
    try:
        write_atomic(path, f"{pid}\n", mode=0o644)
    except OSError as exc:
        raise GraceError(
            f"Cannot write pidfile {path}: {exc.strerror}. Choose a writable --pidfile path."
        ) from None


def read_pidfile(path: str) -> int | None:
    """Return the pid stored in *path*, or ``None`` if it is missing or unreadable."""
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def remove_pidfile(path: str, pid: int | None = None) -> None:
    """Remove *path* if it still holds *pid* (default: this process)."""
    pid = os.getpid() if pid is None else pid
    if read_pidfile(path) == pid and not os.path.islink(path):
        with contextlib.suppress(OSError):
            os.unlink(path)
