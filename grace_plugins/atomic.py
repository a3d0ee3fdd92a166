"""Writing a small file so that a reader sees the old content or the new, never half of it.

Every file the package shares between processes (the pidfile, the state file, the gunicorn
adapter's records, the warm-start module report) is written here: the text goes to a private
temporary file beside the target (``O_EXCL | O_NOFOLLOW``: never through a planted link), then
is renamed over the target, or, when *exclusive*, linked to it (``link`` fails if the name
exists, so exactly one writer wins).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading


def write_atomic(
    path: str, data: str | bytes, *, mode: int = 0o600, exclusive: bool = False
) -> None:
    """Publish *data* at *path* at once. Blocks for a few file operations.

    :param mode: the new file's permissions (the umask applies).
    :param exclusive: fail with ``FileExistsError`` if *path* exists (first writer wins).
    :raises OSError: when the directory cannot be written (the target is then unchanged).
    """
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a writer that died with our pid and thread id
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def untrusted(directory: str) -> str | None:
    """Why a file root writes in *directory* could be replaced by another user, or ``None``.

    Only for a process running as root (a server that binds a low port, then drops privileges):
    there a pidfile or state file in a directory another user owns, or may write to, would let
    that user point ``grace-plugins reload`` (or a ``kill $(cat pidfile)``) at any process. A
    sticky directory (``/tmp``) lets nobody replace another's file. Blocks for one ``stat``.
    """
    if os.geteuid() != 0:
        return None
    try:
        info = os.stat(directory)
    except OSError:
        return None  # writing there fails with its own message
    if info.st_uid != 0:
        return f"it is owned by uid {info.st_uid}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        return "other users may write to it"
    return None
