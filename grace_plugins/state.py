"""The supervisor's state file: what ``grace-plugins reload`` and ``status`` read.

``kill -HUP`` returns before anything is known. The supervisor therefore records, after every
event, the serving generation and the outcome of the last upgrade in a small JSON file that the
commands poll. The file lives in a per-user directory (``$XDG_RUNTIME_DIR`` or the temporary
directory, then ``grace_plugins-<uid>/``) created ``0700`` and checked to be ours, and is
written ``0600`` by rename: only its owner can read it, nobody can plant one.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from typing import Any

from grace_plugins.atomic import untrusted, write_atomic
from grace_plugins.errors import GraceError


def state_dir() -> str:
    """Return (creating it) the private directory for state files.

    :raises GraceError: when the directory exists but is not ours or is open to others.
    """
    base = state_base(os.environ.get("XDG_RUNTIME_DIR"))
    why = untrusted(base)
    if why is not None:
        raise GraceError(
            f"{base} (XDG_RUNTIME_DIR, or the temporary directory) cannot hold root's state"
            f" files: {why}. Unset XDG_RUNTIME_DIR, or set it to a directory only root can"
            " write to (such as /run)."
        )
    path = os.path.join(base, f"grace_plugins-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise GraceError(
            f"Cannot create {path} for state files ({exc.strerror}): set TMPDIR to a"
            " directory you can write to."
        ) from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise GraceError(f"{path} is not a directory owned by you: remove it and retry.")
    if info.st_mode & 0o077:
        raise GraceError(f"{path} is accessible by other users: chmod 700 it and retry.")
    return path


def state_base(runtime: str | None) -> str:
    """``$XDG_RUNTIME_DIR`` (*runtime*) when it is a directory we may write to, else the
    temporary directory: the variable can outlive its directory (removed at logout) or name
    another user's (kept by ``su``), and a stale one must not keep a server from starting."""
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return runtime
    return tempfile.gettempdir()


def state_path(pid: int) -> str:
    """The state file of the supervisor (or gunicorn master) with this pid."""
    return os.path.join(state_dir(), f"{pid}.json")


class StateFile:
    """Written by a supervisor: one JSON object, replaced atomically on each update."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.path = state_path(self.pid)
        self.data: dict[str, Any] = {"pid": self.pid, "started": time.time(), "upgrades": 0}

    @classmethod
    def resume(cls) -> StateFile:
        """This process's state as a previous image of it left it (after a USR2 re-exec the
        pid is the same, so ``status`` keeps its start time and its count of upgrades)."""
        state = cls()
        state.data.update(read_state(state.pid) or {})
        state.data["pid"] = state.pid
        return state

    def update(self, **fields: Any) -> None:
        """Merge *fields* and rewrite the file; never raises (state is informative)."""
        self.data.update(fields)
        _write(self.path, self.data)

    def record_upgrade(self, outcome: str, detail: str, **fields: Any) -> None:
        """Count a finished upgrade (``ok`` or ``rolled_back``) with what happened."""
        last = {"outcome": outcome, "detail": detail, "finished": time.time(), **fields}
        self.update(upgrades=self.data["upgrades"] + 1, in_progress=False, last_upgrade=last)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _write(path: str, data: dict[str, Any]) -> None:
    """Replace *path* atomically; never raises (state is informative)."""
    with contextlib.suppress(OSError):
        write_atomic(path, json.dumps(data))


def merge_state(pid: int, **fields: Any) -> None:
    """Read, merge *fields* into and rewrite the state of *pid*, for a server whose state has
    several writers (a gunicorn master and the worker that decides an upgrade's verdict)."""
    try:
        path = state_path(pid)
    except GraceError:
        return
    data = read_state(pid) or {"pid": pid, "started": time.time(), "upgrades": 0}
    data.update(fields)
    _write(path, data)


def merge_upgrade(pid: int, outcome: str, detail: str, **fields: Any) -> None:
    """:meth:`StateFile.record_upgrade` for a state with several writers."""
    upgrades = (read_state(pid) or {}).get("upgrades", 0) + 1
    last = {"outcome": outcome, "detail": detail, "finished": time.time()}
    merge_state(pid, upgrades=upgrades, in_progress=False, last_upgrade=last, **fields)


def read_state(pid: int) -> dict[str, Any] | None:
    """Return the state recorded by supervisor *pid*, or ``None`` if there is none."""
    return read_state_at(state_path(pid))


def read_state_at(path: str) -> dict[str, Any] | None:
    """Return the state in the file at *path*, or ``None`` if there is none."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
