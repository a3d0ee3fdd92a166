"""Finding the state file of a server started in another environment.

A supervisor (or gunicorn master) writes its state under *its* ``$XDG_RUNTIME_DIR`` or
temporary directory (:func:`grace_plugins.state.state_dir`). ``grace-plugins reload`` and
``status`` often run elsewhere: a login shell has ``XDG_RUNTIME_DIR=/run/user/UID`` where a
systemd service has none, a unit may set ``TMPDIR``, and systemd's ``PrivateTmp=`` gives the
service a ``/tmp`` of its own. So when our own directory has no state for the pid, we look
where that process would have written it: its environment (``/proc/PID/environ``), seen from
here and through its root (``/proc/PID/root``, which crosses a private ``/tmp``). A file found
that way is trusted as one in our own directory would be: a regular file owned by the server's
user, in a directory of that user closed to others. Linux only; elsewhere nothing more is found.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping

from grace_plugins.errors import GraceError
from grace_plugins.state import state_path

#: Where Python's ``tempfile.gettempdir()`` looks after ``TMPDIR``, ``TEMP`` and ``TMP`` on POSIX.
TEMP_DEFAULTS = ("/tmp", "/var/tmp", "/usr/tmp")


def bases_of(environ: Mapping[str, str]) -> list[str]:
    """The directories a process with *environ* may have put its state directory in, most
    likely first (:func:`grace_plugins.state.state_base` skips a runtime directory it cannot
    use, and Python's temporary directory a ``TMPDIR`` it cannot use)."""
    runtime = [environ["XDG_RUNTIME_DIR"]] if environ.get("XDG_RUNTIME_DIR") else []
    named = [environ[name] for name in ("TMPDIR", "TEMP", "TMP") if environ.get(name)]
    return _unique([*runtime, *named[:1], *TEMP_DEFAULTS])  # an unusable runtime dir: TMPDIR


def candidates(pid: int, uid: int, environ: Mapping[str, str]) -> list[str]:
    """Where process *pid* (of user *uid*, with *environ*) keeps its state file: each base seen
    from here, then through the process's own root (a private ``/tmp``)."""
    paths = []
    for base in bases_of(environ):
        if not os.path.isabs(base):
            continue  # relative to a working directory we do not know
        inside = os.path.join(base, f"grace_plugins-{uid}", f"{pid}.json")
        paths += [inside, f"/proc/{pid}/root{inside}"]
    return _unique(paths)


def locate_state(pid: int) -> str | None:
    """The path of *pid*'s state file, or ``None``: ours first, then where *pid* itself would
    have written it (see the module doc)."""
    with contextlib.suppress(GraceError):
        own = state_path(pid)
        if os.path.exists(own):
            return own
    uid, environ = _owner_of(pid), _environ_of(pid)
    if uid is None or environ is None or os.getuid() not in (0, uid):
        return None
    return next((path for path in candidates(pid, uid, environ) if _trusted(path, uid)), None)


def _trusted(path: str, uid: int) -> bool:
    """A regular file of *uid*, in a directory of *uid* that nobody else may enter."""
    try:
        info, parent = os.lstat(path), os.lstat(os.path.dirname(path))
    except OSError:
        return False
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_uid == uid
        and stat.S_ISDIR(parent.st_mode)
        and parent.st_uid == uid
        and not parent.st_mode & 0o077
    )


def _environ_of(pid: int) -> dict[str, str] | None:
    """Process *pid*'s environment as it was at its ``exec``, or ``None`` (not ours, gone, or no
    ``/proc``)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if b"=" in entry)
    return {os.fsdecode(name): os.fsdecode(value) for name, _, value in pairs}


def _owner_of(pid: int) -> int | None:
    """The real uid of process *pid* (the one its state directory is named after), or ``None``."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
